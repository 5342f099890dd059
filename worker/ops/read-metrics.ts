import type { Env } from '../env'
import { Counter, Gauge, MAX_GAUGES, SEND_ACK, SEND_ACK_BUCKETS, parseSeriesKey, type MetricsSeries } from '../shared/metrics'
import type { ShardReading } from './MetricsShard'
import { getMetricsShard, shardCount } from './shards'

export async function readShards(env: Env, sinceMinute: number): Promise<ShardReading[]> {
  // RPC's types widen tuples to arrays; the shard returns exactly ShardReading.
  return Promise.all(Array.from({ length: shardCount(env) }, async (_, i) => (await getMetricsShard(env, i).read(sinceMinute)) as unknown as ShardReading))
}

const HELP: Record<string, [help: string, label?: string]> = {
  [Counter.messagesAccepted]: ['Messages the conversation rooms accepted.'],
  [Counter.messagesRefused]: ['Writes refused, by error code.', 'code'],
  [Counter.deliveries]: ['Event frames sent to devices (first sends).'],
  [Counter.resends]: ['Event frames sent again to devices that had not confirmed them.'],
  [Counter.pushes]: ['Web pushes by outcome.', 'outcome'],
  [Counter.uploads]: ['Finished uploads by outcome.', 'outcome'],
  [Counter.uploadBytes]: ['Bytes of finished uploads.'],
  [Counter.transcriptions]: ['Voice notes transcribed, by outcome.', 'outcome'],
  [Counter.rateLimited]: ['Frames and requests refused for rate, by where.', 'where'],
  [Counter.http5xx]: ['HTTP answers with a 5xx status, by route.', 'route'],
  [Gauge.socketsOpen]: ['Device sockets open.'],
  [Gauge.devicesOnline]: ['Devices with at least one socket open.'],
  [Gauge.voiceRoomsLive]: ['Live voice rooms.'],
  [Gauge.callsLive]: ['Calls ringing or in progress.'],
  [Gauge.d1FlushLag]: ['Age of the oldest acknowledged event not yet in D1 (largest over all rooms), seconds.'],
}

const escapeLabel = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
const num = (v: number) => (Number.isInteger(v) ? String(v) : v.toFixed(3))

/** The Prometheus text exposition format (version 0.0.4) of every shard's totals and gauges. */
export function renderPrometheus(readings: ShardReading[]): string {
  const totals = new Map<string, number>()
  for (const r of readings) for (const [k, v] of r.totals) totals.set(k, (totals.get(k) ?? 0) + v)
  const gauges = mergeGauges(readings.map((r) => r.gauges))
  const out: string[] = []
  for (const name of Object.values(Counter)) {
    const [help, label] = HELP[name]!
    out.push(`# HELP echovalley_${name} ${help}`, `# TYPE echovalley_${name} counter`)
    const rows = [...totals].filter(([k]) => parseSeriesKey(k).name === name)
    if (!label) out.push(`echovalley_${name} ${num(totals.get(name) ?? 0)}`)
    else for (const [k, v] of rows) out.push(`echovalley_${name}{${label}="${escapeLabel(parseSeriesKey(k).label ?? '')}"} ${num(v)}`)
  }
  const hist = `echovalley_${SEND_ACK}`
  out.push(`# HELP ${hist} Send to ack time in the hub (frame in, the room's commit, ack out), milliseconds.`, `# TYPE ${hist} histogram`)
  let cumulative = 0
  for (const le of [...SEND_ACK_BUCKETS.map(String), '+Inf']) {
    cumulative += totals.get(`${SEND_ACK}_bucket{${le}}`) ?? 0
    out.push(`${hist}_bucket{le="${le}"} ${cumulative}`)
  }
  out.push(`${hist}_sum ${num(totals.get(`${SEND_ACK}_sum`) ?? 0)}`, `${hist}_count ${totals.get(`${SEND_ACK}_count`) ?? 0}`)
  for (const name of Object.values(Gauge)) {
    out.push(`# HELP echovalley_${name} ${HELP[name]![0]}`, `# TYPE echovalley_${name} gauge`, `echovalley_${name} ${num(gauges.get(name) ?? 0)}`)
  }
  return `${out.join('\n')}\n`
}

/** Shards' values of one gauge, as one: the sum, or the largest for lag. */
function combine(name: string, values: number[]): number {
  return MAX_GAUGES.has(name) ? Math.max(0, ...values) : values.reduce((a, b) => a + b, 0)
}

function mergeGauges(lists: [string, number][][]): Map<string, number> {
  const byName = new Map<string, number[]>()
  for (const list of lists) for (const [name, v] of list) byName.set(name, [...(byName.get(name) ?? []), v])
  return new Map([...byName].map(([name, vs]) => [name, combine(name, vs)]))
}

/** Quantile of one minute's histogram deltas, interpolated inside its bucket (as histogram_quantile does). */
function quantile(q: number, buckets: number[]): number | null {
  const total = buckets.reduce((a, b) => a + b, 0)
  if (total === 0) return null
  const rank = q * total
  let seen = 0
  for (let i = 0; i < buckets.length; i++) {
    const n = buckets[i]!
    if (seen + n >= rank && n > 0) {
      const lower = i === 0 ? 0 : SEND_ACK_BUCKETS[i - 1]!
      const upper = SEND_ACK_BUCKETS[i] ?? SEND_ACK_BUCKETS[SEND_ACK_BUCKETS.length - 1]!
      return lower + (upper - lower) * ((rank - seen) / n)
    }
    seen += n
  }
  return SEND_ACK_BUCKETS[SEND_ACK_BUCKETS.length - 1]!
}

/** The monitoring view's charts: one point per minute from `fromMinute` to `toMinute`. */
export function toSeries(readings: ShardReading[], fromMinute: number, toMinute: number): MetricsSeries {
  const minutes = Array.from({ length: toMinute - fromMinute + 1 }, (_, i) => fromMinute + i)
  const at = (m: number) => m - fromMinute
  const zeros = () => minutes.map(() => 0)
  const accepted = zeros()
  const sent = zeros()
  const failed = zeros()
  const dead = zeros()
  const buckets = minutes.map(() => new Array<number>(SEND_ACK_BUCKETS.length + 1).fill(0))
  const errors: Record<string, number[]> = {}
  for (const r of readings) {
    for (const [minute, key, value] of r.minutes) {
      const i = at(minute)
      if (i < 0 || i >= minutes.length) continue
      const { name, label } = parseSeriesKey(key)
      if (name === Counter.messagesAccepted) accepted[i]! += value
      else if (name === Counter.pushes && label === 'sent') sent[i]! += value
      else if (name === Counter.pushes && label === 'failed') failed[i]! += value
      else if (name === Counter.pushes && label === 'dead_letter') dead[i]! += value
      else if (name === Counter.messagesRefused && label) (errors[label] ??= zeros())[i]! += value
      else if (name === `${SEND_ACK}_bucket` && label) {
        const b = label === '+Inf' ? SEND_ACK_BUCKETS.length : SEND_ACK_BUCKETS.indexOf(Number(label) as (typeof SEND_ACK_BUCKETS)[number])
        if (b >= 0) buckets[i]![b]! += value
      }
    }
  }
  const gaugeLine = (name: string) => {
    const perShard = readings.map((r) => {
      let last: number | null = null
      const byMinute = new Map(r.gaugeMinutes.filter(([, n]) => n === name).map(([m, , v]) => [m, v]))
      const before = r.gaugeMinutes.filter(([m, n]) => n === name && m < fromMinute)
      if (before.length) last = before[before.length - 1]![2]
      return minutes.map((m) => (last = byMinute.get(m) ?? last))
    })
    return minutes.map((_, i) => {
      const vs = perShard.map((s) => s[i]).filter((v): v is number => v !== null && v !== undefined)
      return vs.length === 0 ? null : combine(name, vs)
    })
  }
  const now = mergeGauges(readings.map((r) => r.gauges))
  return {
    minutes,
    messagesPerSecond: accepted.map((n) => n / 60),
    ackP50: buckets.map((b) => quantile(0.5, b)),
    ackP99: buckets.map((b) => quantile(0.99, b)),
    socketsOpen: gaugeLine(Gauge.socketsOpen),
    pushesSent: sent,
    pushesFailed: failed,
    deadLetters: dead,
    errors,
    d1FlushLag: gaugeLine(Gauge.d1FlushLag),
    now: {
      socketsOpen: now.get(Gauge.socketsOpen) ?? 0,
      devicesOnline: now.get(Gauge.devicesOnline) ?? 0,
      voiceRoomsLive: now.get(Gauge.voiceRoomsLive) ?? 0,
      callsLive: now.get(Gauge.callsLive) ?? 0,
      d1FlushLag: now.get(Gauge.d1FlushLag) ?? 0,
    },
  }
}
