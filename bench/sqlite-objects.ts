// How many SQLite-backed Durable Objects one local workerd keeps alive before its SQLite says no.
// The smallest reproduction of the SQLITE_NOMEM that ended the full-population soak on bare
// workerd: each object creates a table, writes a row, runs a few statements and stays alive
// (a pending waitUntil; idle objects are evicted after ~10 s). It stops at the first failure
// and reports how many objects were alive, the error, workerd's descriptors and memory.
// Run once with workerd's defaults and once with the autogate `increase-sqlite-hard-heap-limit`
// on (workerd reads WORKERD_ALL_AUTOGATES at start; it raises the process-wide SQLite heap cap
// from 512 MiB to 8 GiB).
//   npx tsx bench/sqlite-objects.ts [--objects=10000]
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Miniflare } from 'miniflare'

const OBJECTS = Number(process.argv.find((a) => a.startsWith('--objects='))?.slice(10) ?? 10_000)
const CONCURRENCY = 50

const script = `
export class Db {
  constructor(ctx) { this.ctx = ctx }
  async fetch() {
    try {
      const sql = this.ctx.storage.sql
      sql.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)')
      sql.exec('INSERT INTO t (body) VALUES (?)', 'x'.repeat(200))
      for (let i = 0; i < 20; i++) sql.exec('SELECT count(*) AS n, ' + i + ' AS k FROM t WHERE id > ?', i).toArray()
      // Stay alive for the whole run, as a busy room or hub does.
      this.ctx.waitUntil(new Promise((r) => setTimeout(r, 300000)))
      return new Response('ok')
    } catch (e) { return new Response(String(e), { status: 500 }) }
  }
}
export default { fetch: (req, env) => env.DB.get(env.DB.idFromName(new URL(req.url).searchParams.get('id'))).fetch(req) }`

type Outcome = { alive: number; error: string; fds: number; rssMiB: number }

async function run(gate: boolean): Promise<Outcome> {
  let sqliteCode = ''
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sqlite-objects-'))
  if (gate) process.env.WORKERD_ALL_AUTOGATES = '1'
  else delete process.env.WORKERD_ALL_AUTOGATES
  const mf = new Miniflare({ modules: true, script, durableObjects: { DB: { className: 'Db', useSQLite: true } }, durableObjectsPersist: dir, host: '127.0.0.1', handleRuntimeStdio: (out: NodeJS.ReadableStream, err: NodeJS.ReadableStream) => {
    out.resume()
    // The response says only "internal error"; workerd's log names the SQLite code.
    err.on('data', (d: Buffer) => { sqliteCode ||= /SQLITE_(?!OK\b)[A-Z]+/.exec(d.toString())?.[0] ?? '' })
  } })
  const url = await mf.ready
  delete process.env.WORKERD_ALL_AUTOGATES
  const pid = Number(execFileSync('pgrep', ['-n', 'workerd'], { encoding: 'utf8' }).trim())
  let next = 0
  let alive = 0
  let error = ''
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (!error && next < OBJECTS) {
      const i = next++
      try {
        const res = await fetch(`${url}?id=o${i}`)
        const body = await res.text()
        if (res.ok) alive++
        else error ||= body.split('\n')[0]!.slice(0, 120)
      } catch (e) {
        error ||= `connection: ${String(e).slice(0, 100)}`
      }
    }
  }))
  let fds = 0
  let rssMiB = 0
  try {
    fds = readdirSync(`/proc/${pid}/fd`).length
    rssMiB = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024
  } catch { /* workerd gone: the error says why */ }
  await mf.dispose().catch(() => undefined)
  rmSync(dir, { recursive: true, force: true })
  return { alive, error: error ? sqliteCode || error : 'none', fds, rssMiB }
}

const fdLimit = execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim()
console.log(`${OBJECTS} SQLite-backed objects kept alive in one workerd (${os.cpus().length} cores, descriptor limit ${fdLimit})`)
console.log('| workerd | objects alive at the first failure | first error, from the workerd log | descriptors | RSS MiB |')
console.log('| --- | ---: | --- | ---: | ---: |')
for (const gate of [false, true]) {
  const o = await run(gate)
  console.log(`| ${gate ? 'autogate increase-sqlite-hard-heap-limit' : 'defaults'} | ${o.error === 'none' ? `${o.alive} (no failure)` : o.alive} | ${o.error} | ${o.fds} | ${o.rssMiB.toFixed(0)} |`)
}
