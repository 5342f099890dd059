// kill -9 of the local runtime at random moments while clients send, restarted on the same state
// directory, for N cycles; then: 0 acknowledged messages lost, 0 duplicates, 0 gaps, D1 = the logs.
// Run: npm run fault:crash -- --cycles 20 --clients 4
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { startServer } from '../../test/e2e/server'
import { directChat, drain, FaultClient, keepWriting, registerUser, verify, type Verdict } from './client'

export interface CrashLoopResult extends Verdict {
  cycles: number
  restartMs: { p50: number; max: number }
  reconnects: number
  problems: string[]
  seconds: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function crashLoop(opts: { cycles: number; clients: number; log?: (s: string) => void }): Promise<CrashLoopResult> {
  const log = opts.log ?? (() => undefined)
  const started = Date.now()
  // Clients send as fast as acks allow; lift the per-member limit so the run measures durability.
  const server = await startServer({ vars: { WRITE_RATE: '100000/100000', FRAME_RATE: '100000/100000' } })
  const clients: FaultClient[] = []
  let stopWriting: () => Promise<void> = async () => {}
  const restarts: number[] = []
  try {
    const tag = Date.now().toString(36)
    const users = []
    for (let i = 0; i < opts.clients; i++) users.push(await registerUser(server.url, `crash_${tag}_${i}`))
    const convs: string[] = []
    for (let i = 0; i + 1 < users.length; i += 2) convs.push(await directChat(server.url, users[i]!, users[i + 1]!))
    users.forEach((u, i) => clients.push(new FaultClient(server.url, u, [convs[Math.floor(i / 2)]!])))
    for (const c of clients) c.start()
    stopWriting = keepWriting(clients, 15)

    for (let cycle = 1; cycle <= opts.cycles; cycle++) {
      await sleep(700 + Math.random() * 2300)
      await server.crash()
      const t = Date.now()
      await server.restart()
      restarts.push(Date.now() - t)
      const acked = clients.reduce((n, c) => n + c.acked.size, 0)
      log(`cycle ${cycle}/${opts.cycles}: killed -9 and restarted in ${restarts[restarts.length - 1]} ms; ${acked} acknowledged so far`)
    }
    await stopWriting()
    await drain(clients, 1500)
    const verdict = await verify(server.url, clients, { checkD1: true })
    const sorted = [...restarts].sort((a, b) => a - b)
    return {
      ...verdict,
      cycles: opts.cycles,
      restartMs: { p50: sorted[Math.floor(sorted.length / 2)] ?? 0, max: sorted[sorted.length - 1] ?? 0 },
      reconnects: clients.reduce((n, c) => n + c.reconnects, 0),
      seconds: Math.round((Date.now() - started) / 1000),
    }
  } finally {
    await stopWriting()
    for (const c of clients) c.stop()
    await server.stop()
  }
}

export function report(title: string, r: Record<string, unknown> & { problems: string[] }): boolean {
  const { problems, ...figures } = r
  console.log(`\n${title}`)
  console.table(Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : v])))
  for (const p of problems.slice(0, 20)) console.log(`  ✗ ${p}`)
  const ok = problems.length === 0
  console.log(ok ? 'PASS: nothing acknowledged was lost, duplicated or left a gap' : `FAIL: ${problems.length} problems`)
  return ok
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({ options: { cycles: { type: 'string', default: '20' }, clients: { type: 'string', default: '4' } } })
  const result = await crashLoop({ cycles: Number(values.cycles), clients: Number(values.clients), log: console.log })
  process.exit(report('crash loop (kill -9, restart on the same state directory)', result as unknown as Record<string, unknown> & { problems: string[] }) ? 0 : 1)
}
