// The first admin (and every later one) is made here, never over HTTP:
//   npm run admin -- grant @handle            (local D1 of `npm run dev`)
//   npm run admin -- revoke @handle
//   npm run admin -- grant @handle --remote   (production D1, after `wrangler login`)
//   npm run admin -- grant @handle --persist-to DIR   (another local state directory, e.g. a test's)
// Each change is written to the audit log with "cli" as the actor, in the same batch.
import { spawnSync } from 'node:child_process'
import { Handle } from '../worker/shared/protocol'

const args = process.argv.slice(2)
const [command, who] = args
const remote = args.includes('--remote')
const persistAt = args.indexOf('--persist-to')
const persistTo = persistAt >= 0 ? args[persistAt + 1] : undefined

function usage(message: string): never {
  console.error(`${message}\nusage: npm run admin -- grant|revoke @handle [--remote | --persist-to DIR]`)
  process.exit(2)
}

if (command !== 'grant' && command !== 'revoke') usage(`unknown command ${command ?? '(none)'}`)
const parsed = Handle.safeParse((who ?? '').replace(/^@/, ''))
if (!parsed.success) usage(`not a handle: ${who ?? '(none)'}`)
// The handle passed the schema (letters, digits, underscores), so it is safe inside the SQL text.
const handle = parsed.data
const admin = command === 'grant' ? 1 : 0
const sql = [
  `INSERT INTO audit_log (actor, action, target_user_id, detail, at) SELECT 'cli', '${command}-admin', id, '@${handle}', unixepoch('subsec') * 1000 FROM users WHERE handle = '${handle}' AND is_admin != ${admin}`,
  `UPDATE users SET is_admin = ${admin} WHERE handle = '${handle}'`,
  `SELECT handle, is_admin FROM users WHERE handle = '${handle}'`,
].join('; ')

const where = remote ? ['--remote'] : ['--local', ...(persistTo ? ['--persist-to', persistTo] : [])]
function execute() {
  return spawnSync('npx', ['wrangler', 'd1', 'execute', 'DB', ...where, '--json', '--command', sql], { encoding: 'utf8', env: { ...process.env, CI: 'true' } })
}
// A local database that `npm run dev` (or a test's server) has open answers SQLITE_BUSY while the
// server writes: the statements ran in one batch that rolled back, so the whole batch is tried again.
let run = execute()
for (let attempt = 1; attempt < 6 && run.status !== 0 && /SQLITE_BUSY/.test(run.stdout + run.stderr); attempt++) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300 * attempt)
  run = execute()
}
if (run.status !== 0) {
  console.error(run.stderr || run.stdout)
  process.exit(run.status ?? 1)
}
const results = JSON.parse(run.stdout) as { results: { handle: string; is_admin: number }[] }[]
const row = results.at(-1)?.results[0]
if (!row) {
  console.error(`no user @${handle}${remote ? ' in the production database' : ' in the local database'}`)
  process.exit(1)
}
console.log(`@${row.handle} is ${row.is_admin ? 'now an administrator' : 'no longer an administrator'}`)
