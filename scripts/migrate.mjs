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
const mf = new Miniflare({
  modules: true,
  script: 'export default { fetch: () => new Response(null) }',
  d1Databases: Object.fromEntries(databases.map((d) => [d.binding, d.id])),
  d1Persist: persist,
})
let failed = false
try {
  for (const { binding, dir } of databases) {
    const db = await mf.getD1Database(binding)
    // The table and columns wrangler keeps, so `wrangler d1 migrations list` agrees.
    await db.prepare('CREATE TABLE IF NOT EXISTS d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)').run()
    const done = new Set((await db.prepare('SELECT name FROM d1_migrations').all()).results.map((r) => r.name))
    let applied = 0
    for (const m of await readD1Migrations(dir)) {
      if (done.has(m.name)) continue
      try {
        await db.batch([...m.queries.map((q) => db.prepare(q)), db.prepare('INSERT INTO d1_migrations (name) VALUES (?)').bind(m.name)])
      } catch (e) {
        console.error(`${binding}: ${m.name} failed: ${e instanceof Error ? e.message : e}`)
        failed = true
        break
      }
      applied++
    }
    console.log(`${binding}: ${applied ? `${applied} migration(s) applied` : 'up to date'} (${dir})`)
  }
} finally {
  await mf.dispose()
}
process.exit(failed ? 1 : 0)
