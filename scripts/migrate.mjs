// Applies the D1 migrations to every database wrangler.toml binds: the main one (migrations/) and
// each history shard (migrations-history/).
//
//   node scripts/migrate.mjs [--local] [--persist-to DIR] [-c CONFIG]   # local state, as wrangler dev reads it
//   node scripts/migrate.mjs --remote [-c CONFIG]                      # production, through wrangler
//
// Locally all databases are migrated in one Miniflare (the runtime wrangler dev uses, on the same
// files, with wrangler's d1_migrations bookkeeping): one start instead of a wrangler run per
// database, and two wrangler runs at once on one state folder fail with SQLITE_BUSY.
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import path from 'node:path'

const args = process.argv.slice(2)
const valueOf = (flag) => (args.includes(flag) ? args[args.indexOf(flag) + 1] : undefined)
const configPath = valueOf('-c') ?? 'wrangler.toml'
const config = readFileSync(configPath, 'utf8')
// Each [[d1_databases]] table; a plain reading of the file is enough for these lines.
const databases = config
  .split(/^\[\[d1_databases\]\]\s*$/m)
  .slice(1)
  .map((table) => table.split(/^\[/m)[0])
  .map((t) => ({
    binding: t.match(/^binding\s*=\s*"([A-Z0-9_]+)"/m)?.[1],
    id: t.match(/^database_id\s*=\s*"([^"]+)"/m)?.[1],
    dir: t.match(/^migrations_dir\s*=\s*"([^"]+)"/m)?.[1] ?? 'migrations',
  }))
  .filter((d) => d.binding && d.id)
if (databases.length === 0) {
  console.error(`no [[d1_databases]] in ${configPath}`)
  process.exit(1)
}

if (args.includes('--remote')) {
  for (const { binding } of databases) {
    const r = spawnSync('npx', ['wrangler', 'd1', 'migrations', 'apply', binding, ...args], { stdio: 'inherit', env: { ...process.env, CI: 'true' } })
    if (r.status !== 0) process.exit(r.status ?? 1)
  }
  process.exit(0)
}

const { readD1Migrations } = await import('@cloudflare/vitest-pool-workers')
const { Miniflare } = await import('miniflare')
const persist = path.join(valueOf('--persist-to') ?? '.wrangler/state', 'v3', 'd1')
// The worker runs each batch; the script reaches it with dispatchFetch (an ordinary request), not
// with mf.getD1Database: that proxy blocks on a synchronous fetch whose reply can be missed on a
// loaded machine (CI once failed with an assertion inside Miniflare's SynchronousFetcher).
const RUNNER = `export default {
  async fetch(request, env) {
    const { binding, statements } = await request.json()
    const db = env[binding]
    try {
      const results = await db.batch(statements.map(([sql, ...params]) => db.prepare(sql).bind(...params)))
      return Response.json({ results: results.map((r) => r.results ?? []) })
    } catch (e) {
      return Response.json({ error: e instanceof Error ? e.message : String(e) }, { status: 500 })
    }
  },
}`
const mf = new Miniflare({
  modules: true,
  script: RUNNER,
  d1Databases: Object.fromEntries(databases.map((d) => [d.binding, d.id])),
  d1Persist: persist,
})
/** Runs statements ([sql, ...params]) in one D1 batch (one transaction); returns each one's rows. */
async function batch(binding, statements) {
  const res = await mf.dispatchFetch('http://migrate/', { method: 'POST', body: JSON.stringify({ binding, statements }) })
  const body = await res.json()
  if (!res.ok) throw new Error(body.error)
  return body.results
}
let failed = false
try {
  for (const { binding, dir } of databases) {
    // The table and columns wrangler keeps, so `wrangler d1 migrations list` agrees.
    const [, names] = await batch(binding, [
      ['CREATE TABLE IF NOT EXISTS d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)'],
      ['SELECT name FROM d1_migrations'],
    ])
    const done = new Set(names.map((r) => r.name))
    let applied = 0
    for (const m of await readD1Migrations(dir)) {
      if (done.has(m.name)) continue
      try {
        await batch(binding, [...m.queries.map((q) => [q]), ['INSERT INTO d1_migrations (name) VALUES (?)', m.name]])
      } catch (e) {
        console.error(`${binding}: ${m.name} failed: ${e instanceof Error ? e.message : e}`)
        failed = true
        break
      }
      applied++
    }
    console.log(`${binding}: ${applied ? `${applied} migration(s) applied` : failed ? 'none applied' : 'up to date'} (${dir})`)
    if (failed) break
  }
} finally {
  await mf.dispose()
}
process.exit(failed ? 1 : 0)
