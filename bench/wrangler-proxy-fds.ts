// Does wrangler dev's proxy keep sockets its peers closed? The full-population soak under wrangler
// dev stalled twice (05:55 and 11:48 on 2026-12-03): the second time the workerd that runs
// wrangler's proxy Worker (the one listening on the dev port) held its 20,000 descriptors, 11,202 of
// them TCP sockets in CLOSE-WAIT, and answered every new connection's socket() with EMFILE.
//
//   npx tsx bench/wrangler-proxy-fds.ts [--rounds=1000]
//
// The smallest case: the platform floor (bench/floor, no product code) under the same wrangler dev,
// and a client that opens and closes connections in a few ways. After each way it waits for the
// connections to settle and prints what the proxy's process holds: descriptors, and sockets in
// CLOSE-WAIT (the peer closed, this side never did).
import { execFileSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import path from 'node:path'
import WebSocket from 'ws'
import { startServer } from '../test/e2e/server'

const ROUNDS = Number(process.argv.find((a) => a.startsWith('--rounds='))?.split('=')[1] ?? 1000)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const server = await startServer({ config: path.resolve(import.meta.dirname, 'floor/wrangler.toml'), quiet: true, lifetimeMs: 15 * 60_000 })
const port = new URL(server.url).port
const listener = execFileSync('ss', ['-ltnpH', `sport = :${port}`], { encoding: 'utf8' })
const pid = Number(/pid=(\d+)/.exec(listener)?.[1])
if (!pid) throw new Error(`no process listens on ${port}: ${listener}`)

function held() {
  const fds = readdirSync(`/proc/${pid}/fd`).length
  const closeWait = execFileSync('ss', ['-tanpH', 'state', 'close-wait'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(`pid=${pid},`)).length
  return { fds, closeWait }
}

/**
 * Opens a socket to one conversation of the floor, waits for its hello, and leaves it as `end` says:
 * a close frame and on to the next (as the soak's client does; `ws` drops the connection itself if no
 * close frame comes back in 30 s), or dropped at once.
 */
function socket(i: number, end: 'close' | 'terminate'): Promise<void> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.url.replace(/^http/, 'ws')}/ws?conv=c${i % 50}&user=u${i}`, { perMessageDeflate: false })
    ws.once('error', reject)
    ws.once('message', () => {
      if (end === 'terminate') (ws.terminate(), resolve())
      else (ws.close(), resolve())
    })
  })
}

const rows: [string, ReturnType<typeof held>][] = []
const settle = async (what: string) => {
  await sleep(5000)
  rows.push([what, held()])
  console.log(`${what}: ${JSON.stringify(rows.at(-1)![1])}`)
}
try {
  await settle('started')
  for (let i = 0; i < ROUNDS; i++) await (await fetch(`${server.url}/api/health/live`)).text()
  await settle(`${ROUNDS} HTTP requests, one at a time (keep-alive)`)
  for (let i = 0; i < ROUNDS; i++) await (await fetch(`${server.url}/api/health/live`, { headers: { connection: 'close' } })).text()
  await settle(`${ROUNDS} HTTP requests, a connection each`)
  for (let i = 0; i < ROUNDS; i++) await socket(i, 'close')
  await settle(`${ROUNDS} WebSockets, each closed by the client with a close frame`)
  await sleep(30_000)
  await settle('30 s later')
  for (let i = 0; i < ROUNDS; i++) await socket(i, 'terminate')
  await settle(`${ROUNDS} WebSockets, each dropped by the client (no close frame, as a lost network)`)
  await sleep(55_000)
  await settle('a minute later')
} finally {
  await server.stop()
}
console.log(`\n| after | descriptors held by wrangler's proxy | sockets in CLOSE-WAIT |\n| --- | ---: | ---: |`)
for (const [what, h] of rows) console.log(`| ${what} | ${h.fds} | ${h.closeWait} |`)
