// Checks docs/grafana/echovalley.json against what GET /api/admin/metrics emits: `node docs/grafana/check.mjs`.
// Every echovalley_* name in a query must be a series of worker/shared/metrics.ts (the histogram as _bucket/_sum/_count),
// every label a query names must be one renderPrometheus gives that series, and every series must be charted.
import { readFileSync } from 'node:fs'

const read = (path) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8')
const dashboard = JSON.parse(read('docs/grafana/echovalley.json'))
const metricsTs = read('worker/shared/metrics.ts')
const renderTs = read('worker/ops/read-metrics.ts')

/** `export const Name = { key: 'value', ... }` → Map key → value. */
function constObject(name) {
  const body = metricsTs.match(new RegExp(`export const ${name} = \\{([\\s\\S]*?)\\n\\}`))?.[1]
  if (!body) throw new Error(`no ${name} in worker/shared/metrics.ts`)
  return new Map([...body.matchAll(/^\s*(\w+): '([a-z0-9_]+)',?$/gm)].map((m) => [m[1], m[2]]))
}
const counters = constObject('Counter')
const gauges = constObject('Gauge')
const hist = metricsTs.match(/export const SEND_ACK = '([a-z0-9_]+)'/)?.[1]
if (!hist) throw new Error('no SEND_ACK in worker/shared/metrics.ts')

// The label each counter carries, from renderPrometheus's HELP table: [Counter.key]: ['help', 'label'].
const labels = new Map()
for (const n of [...counters.values(), ...gauges.values()]) labels.set(`echovalley_${n}`, new Set())
for (const m of renderTs.matchAll(/\[Counter\.(\w+)\]: \['(?:[^'\\]|\\.)*'(?:, '(\w+)')?\]/g)) {
  if (m[2]) labels.get(`echovalley_${counters.get(m[1])}`)?.add(m[2])
}
labels.set(`echovalley_${hist}_bucket`, new Set(['le']))
labels.set(`echovalley_${hist}_sum`, new Set())
labels.set(`echovalley_${hist}_count`, new Set())

const problems = []
const charted = new Set()
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])])
for (const panel of panels) {
  if (panel.type === 'row') continue
  if (panel.datasource?.uid !== '${DS_PROMETHEUS}') problems.push(`${panel.title}: datasource is not \${DS_PROMETHEUS}`)
  for (const t of panel.targets ?? []) {
    const where = `${panel.title} [${t.refId}]`
    if (t.datasource?.uid !== '${DS_PROMETHEUS}') problems.push(`${where}: datasource is not \${DS_PROMETHEUS}`)
    const names = [...t.expr.matchAll(/echovalley_[a-z0-9_]+/g)].map((m) => m[0])
    if (names.length === 0) problems.push(`${where}: no echovalley_ series in ${t.expr}`)
    const allowed = new Set()
    for (const name of names) {
      if (!labels.has(name)) problems.push(`${where}: ${name} is not emitted by renderPrometheus`)
      else for (const l of labels.get(name)) allowed.add(l)
      charted.add(name)
    }
    // Label names in matchers ({x="..."}, {x!="..."}, {x=~"..."}) and in by (...) / without (...).
    const used = [
      ...[...t.expr.matchAll(/\{([^}]*)\}/g)].flatMap((m) => [...m[1].matchAll(/(\w+)\s*(?:!=|=~|!~|=)/g)].map((x) => x[1])),
      ...[...t.expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)].flatMap((m) => m[1].split(',').map((s) => s.trim()).filter(Boolean)),
    ]
    for (const l of used) if (!allowed.has(l)) problems.push(`${where}: label ${l} is not on ${names.join(', ')}`)
  }
}
for (const name of labels.keys()) {
  if (!charted.has(name) && !name.endsWith('_sum') && !name.endsWith('_count')) problems.push(`${name} is emitted but charted nowhere`)
}

if (problems.length) {
  for (const p of problems) console.error(`✗ ${p}`)
  process.exit(1)
}
console.log(`ok: ${panels.filter((p) => p.type !== 'row').length} panels, ${charted.size} series, every name and label emitted by renderPrometheus`)
