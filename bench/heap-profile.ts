// Where the isolate's old generation fills from, under load: a sampling heap profile over CDP that
// keeps objects a full (Mark-Compact) collection frees and drops those a scavenge frees, so what it
// counts is what lives long enough to reach the old generation, or is made there.
//   BENCH_INSPECTOR=9333 BENCH_FANOUT=100 BENCH_FANOUT_SENDS=1500 npx tsx bench/run.ts --systems=echovalley-bare --only=fanout &
//   npx tsx bench/heap-profile.ts 9333 15 /tmp/fanout.heapprofile [worker: core:user] [poke URL]
// Prints bytes per allocating function (self) and the heaviest stacks; writes the profile for DevTools.
// HEAP_MINOR=1 keeps what scavenges free too (all allocation). Objects still young when sampling
// stops count as kept: under steady load that is at most one young generation's worth.
import { writeFileSync } from 'node:fs'
import { inspect } from './inspector'

interface Node {
  callFrame: { functionName: string; url: string; lineNumber: number }
  selfSize: number
  children: Node[]
}

const [port = '9333', seconds = '15', out = '/tmp/echovalley.heapprofile', worker = 'core:user', poke = process.env.BENCH_POKE_URL] = process.argv.slice(2)
const minor = process.env.HEAP_MINOR === '1'
const { call, close } = await inspect(Number(port), worker, poke ? () => fetch(poke) : undefined)
await call('HeapProfiler.enable')
await call('HeapProfiler.startSampling', { samplingInterval: 1024, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: minor })
console.log(`sampling ${seconds} s (objects freed by scavenges ${minor ? 'kept' : 'dropped'})`)
await new Promise((r) => setTimeout(r, Number(seconds) * 1000))
const { profile } = await call<{ profile: { head: Node } }>('HeapProfiler.stopSampling')
writeFileSync(out, JSON.stringify(profile))
close()

const self = new Map<string, number>()
const stacks = new Map<string, number>()
let total = 0
const name = (n: Node) => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.split('/').pop()}:${n.callFrame.lineNumber + 1}`
const walk = (n: Node, path: string[]) => {
  const here = [...path, name(n)]
  if (n.selfSize > 0) {
    total += n.selfSize
    self.set(name(n), (self.get(name(n)) ?? 0) + n.selfSize)
    const key = here.slice(-6).join(' < ')
    stacks.set(key, (stacks.get(key) ?? 0) + n.selfSize)
  }
  for (const c of n.children) walk(c, here)
}
walk(profile.head, [])
const kb = (b: number) => `${(b / 1024).toFixed(0)} KiB (${((100 * b) / total).toFixed(1)} %)`
console.log(`total sampled ${(total / 1024 / 1024).toFixed(1)} MiB`)
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${kb(v).padEnd(22)} ${k}`)
console.log('heaviest stacks (innermost last):')
for (const [k, v] of [...stacks].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`  ${kb(v).padEnd(22)} ${k}`)
