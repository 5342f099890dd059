import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, it } from 'vitest'

const ROOT = path.resolve(import.meta.dirname, '../..')

// Local workerd allows what production Workers refuse, so the deployable bundle is checked here.
describe('the deployable Worker bundle', () => {
  it('never compiles WebAssembly at run time', async ({ expect }) => {
    const out = mkdtempSync(path.join(tmpdir(), 'echovalley-bundle-'))
    try {
      const r = spawnSync('npx', ['wrangler', 'deploy', '--dry-run', '--outdir', out], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, CI: 'true' } })
      expect(r.status, r.stderr).toBe(0)
      const code = readdirSync(out).filter((f) => f.endsWith('.js')).map((f) => readFileSync(path.join(out, f), 'utf8')).join('\n')
      expect(code.length).toBeGreaterThan(1000)
      expect(code).toContain('ConversationRoom')
      expect(code).not.toMatch(/WebAssembly\.(compile|instantiate|compileStreaming|instantiateStreaming)\s*\(|new\s+WebAssembly\.Module\s*\(/)
    } finally {
      rmSync(out, { recursive: true, force: true })
    }
  })
})

// The PWA's policy forbids eval; a library that probes for it (zod does) reports a violation.
describe('the PWA bundle', () => {
  it('has no eval or new Function (zod stays on the Worker side)', async ({ expect }) => {
    const dir = path.join(ROOT, 'dist/assets')
    const code = readdirSync(dir).filter((f) => f.endsWith('.js')).map((f) => readFileSync(path.join(dir, f), 'utf8')).join('\n')
    expect(code.length).toBeGreaterThan(1000)
    expect(code).not.toMatch(/\bnew Function\s*\(|\beval\s*\(/)
  })
})
