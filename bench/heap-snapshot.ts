// What the isolate's live heap is made of: a heap snapshot over CDP (which collects garbage first),
// summed by constructor (count, self size), with the largest first.
//   BENCH_INSPECTOR=9333 BENCH_FANOUT=100 BENCH_FANOUT_SENDS=6000 npx tsx bench/run.ts --systems=echovalley-bare --only=fanout &
//   npx tsx bench/heap-snapshot.ts 9333 [worker: core:user] [poke URL] [out file]
import { writeFileSync } from 'node:fs'
import { inspect } from './inspector'

const [port = '9333', worker = 'core:user', poke = process.env.BENCH_POKE_URL, out] = process.argv.slice(2)
const { call, on, close } = await inspect(Number(port), worker, poke ? () => fetch(poke) : undefined)
let chunks = ''
on('HeapProfiler.addHeapSnapshotChunk', (p) => void (chunks += (p as { chunk: string }).chunk))
await call('HeapProfiler.enable')
await call('HeapProfiler.takeHeapSnapshot', { reportProgress: false })
close()
if (out) writeFileSync(out, chunks)
const snap = JSON.parse(chunks) as { snapshot: { meta: { node_fields: string[]; node_types: [string[]] } }; nodes: number[]; strings: string[] }
const f = snap.snapshot.meta.node_fields
const [typeAt, nameAt, sizeAt] = [f.indexOf('type'), f.indexOf('name'), f.indexOf('self_size')]
const types = snap.snapshot.meta.node_types[0]
const by = new Map<string, { n: number; bytes: number }>()
let total = 0
for (let i = 0; i < snap.nodes.length; i += f.length) {
  const type = types[snap.nodes[i + typeAt]!]!
  const name = type === 'object' || type === 'native' ? snap.strings[snap.nodes[i + nameAt]!]! : `(${type})`
  const size = snap.nodes[i + sizeAt]!
  total += size
  const e = by.get(name) ?? { n: 0, bytes: 0 }
  e.n++
  e.bytes += size
  by.set(name, e)
}
console.log(`live heap ${(total / 1024 / 1024).toFixed(2)} MiB in ${snap.nodes.length / f.length} objects`)
for (const [name, e] of [...by].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, 40)) console.log(`  ${(e.bytes / 1024).toFixed(0).padStart(7)} KiB ${String(e.n).padStart(8)}  ${name.slice(0, 80)}`)
