// A CPU profile of a bare system under load, from workerd's inspector over CDP:
//   BENCH_TP_S=40 BENCH_INSPECTOR=9333 npx tsx bench/run.ts --systems=echovalley-bare --only=throughput &
//   npx tsx bench/cpu-profile.ts 9333 25 /tmp/room.cpuprofile [worker: core:user, or d1:db:0 for local D1's own isolate] [poke URL]
// workerd answers an inspector command only when the isolate next runs: a profile started while the
// server is idle (the fan-out's 12 s wait) waits for it, and one whose stop lands in a quiet moment
// never ends. BENCH_POKE_URL (or the fifth argument, e.g. http://127.0.0.1:PORT/api/health/live)
// is fetched every 200 ms until each command is answered (bench/inspector.ts, as for GC).
// Prints self time per function (native work inside a function, such as SQLite, counts as its own)
// and writes the profile for Chrome DevTools.
import { writeFileSync } from 'node:fs'
import { inspect } from './inspector'

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
}
interface Profile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

const [port = '9333', seconds = '20', out = '/tmp/echovalley.cpuprofile', worker = 'core:user', poke = process.env.BENCH_POKE_URL] = process.argv.slice(2)
const { call, close } = await inspect(Number(port), worker, poke ? () => fetch(poke) : undefined)
await call('Profiler.enable')
await call('Profiler.setSamplingInterval', { interval: 200 })
await call('Profiler.start')
await new Promise((resolve) => setTimeout(resolve, Number(seconds) * 1000))
const { profile } = await call<{ profile: Profile }>('Profiler.stop')
writeFileSync(out, JSON.stringify(profile))
close()

const nodes = new Map(profile.nodes.map((n) => [n.id, n]))
const self = new Map<string, number>()
let total = 0
profile.samples.forEach((id, i) => {
  const f = nodes.get(id)!.callFrame
  const key = `${f.functionName || '(anonymous)'} ${f.url.split('/').pop()}:${f.lineNumber}`
  // The first delta runs from the start of profiling to the first sample (seconds, when the isolate
  // was busy elsewhere): it says nothing about the function sampled.
  const dt = i === 0 ? 0 : (profile.timeDeltas[i] ?? 0)
  // A delta far past the 200 µs interval is time the thread was not sampled at all (workerd waiting
  // in its event loop between events), not the sampled function's: 1.8 s of it once landed on the
  // metrics hand-over, which a look at the deltas showed to be a few 50-700 ms gaps.
  const slot = dt > 10_000 ? '(not sampled: gaps over 10 ms)' : key
  self.set(slot, (self.get(slot) ?? 0) + dt)
  total += dt
})
console.log(`${(total / 1000).toFixed(0)} ms sampled; self time:`)
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 30)) console.log(`${(v / 1000).toFixed(1).padStart(8)} ms ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`)
