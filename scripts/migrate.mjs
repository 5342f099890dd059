// Applies the D1 migrations to every database wrangler.toml binds: the main one (migrations/) and
// each history shard (migrations-history/), in parallel. Arguments go to `wrangler d1 migrations
// apply` as they are: `--local` (default), `--remote`, `--persist-to DIR`, `-c CONFIG`.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'

const args = process.argv.slice(2)
if (!args.includes('--remote') && !args.includes('--local')) args.push('--local')
const configAt = args.indexOf('-c')
const config = readFileSync(configAt >= 0 ? args[configAt + 1] : 'wrangler.toml', 'utf8')
// Each [[d1_databases]] table's binding; a plain reading of the file is enough for these lines.
const bindings = config
  .split(/^\[\[d1_databases\]\]\s*$/m)
  .slice(1)
  .map((table) => table.split(/^\[/m)[0].match(/^binding\s*=\s*"([A-Z0-9_]+)"/m)?.[1])
  .filter(Boolean)
if (bindings.length === 0) {
  console.error('no [[d1_databases]] in the wrangler config')
  process.exit(1)
}

function apply(binding) {
  return new Promise((resolve) => {
    const child = spawn('npx', ['wrangler', 'd1', 'migrations', 'apply', binding, ...args], { env: { ...process.env, CI: 'true' }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    child.on('exit', (code) => resolve({ binding, code, out }))
  })
}

const results = await Promise.all(bindings.map(apply))
for (const r of results) {
  const applied = r.out.match(/│\s*(\d{4}_[\w-]+\.sql)/g)?.length ?? 0
  console.log(`${r.binding}: ${r.code === 0 ? (applied ? `${applied} migration(s) applied` : 'up to date') : 'FAILED'}`)
  if (r.code !== 0) console.error(r.out)
}
process.exit(results.some((r) => r.code !== 0) ? 1 : 0)
