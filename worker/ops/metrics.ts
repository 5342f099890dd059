import type { Env } from '../env'
import { SEND_ACK, SEND_ACK_BUCKETS, seriesKey, type Counter, type Gauge, type MetricsBatch } from '../shared/metrics'
import { getMetricsShard, shardOf } from './shards'

/** An object hands its counts to its shard at most this often while it stays busy... */
const DEFAULT_MIN_GAP_MS = 60_000
/** ...and this long after its first count since the last hand-over, so a quiet object can hibernate soon. */
const FIRST_FLUSH_MS = 2_000

/**
 * Counts kept in an object's memory per minute, handed to a metrics shard in one call at most once
 * a minute: no storage write per message anywhere, and no single object that every message waits
 * for (docs/decisions.md "Metrics"). In production each hand-over is also written to Workers
 * Analytics Engine.
 */
export class Metrics {
  #minutes = new Map<number, Map<string, number>>()
  #gauges = new Map<string, number>()
  #gaugesChanged = false
  #timer: ReturnType<typeof setTimeout> | null = null
  #lastFlushAt = 0
  #flushing: Promise<void> | null = null
  /** METRICS_ENABLED=false turns counting off (the benchmark measures what it costs). */
  readonly #off: boolean

  /** `refresh` sets gauges that are read at hand-over time (a room's D1 lag). */
  constructor(
    private readonly env: Env,
    private readonly source: string,
    private readonly refresh?: () => void,
  ) {
    this.#off = env.METRICS_ENABLED === 'false'
  }

  count(name: Counter, label?: string, n = 1) {
    if (n === 0 || this.#off) return
    const minute = Math.floor(Date.now() / 60_000)
    let m = this.#minutes.get(minute)
    if (!m) this.#minutes.set(minute, (m = new Map()))
    const key = seriesKey(name, label)
    m.set(key, (m.get(key) ?? 0) + n)
    this.#arm()
  }

  /** One send→ack time: its bucket, the count and the sum (Prometheus histogram parts). */
  observeSendAck(ms: number) {
    const le = SEND_ACK_BUCKETS.find((b) => ms <= b)
    this.count(`${SEND_ACK}_bucket` as Counter, le === undefined ? '+Inf' : String(le))
    this.count(`${SEND_ACK}_count` as Counter)
    this.count(`${SEND_ACK}_sum` as Counter, undefined, ms)
  }

  gauge(name: Gauge, value: number) {
    if (this.#off || this.#gauges.get(name) === value) return
    this.#gauges.set(name, value)
    this.#gaugesChanged = true
    this.#arm()
  }

  #arm() {
    if (this.#timer || this.#flushing) return
    const gap = Number(this.env.METRICS_MIN_GAP_MS) || DEFAULT_MIN_GAP_MS
    const delay = Math.max(Math.min(FIRST_FLUSH_MS, gap), this.#lastFlushAt + gap - Date.now())
    this.#timer = setTimeout(() => {
      this.#timer = null
      void this.flush()
    }, delay)
  }

  /** Hands everything counted so far to the shard; counts stay for the next try if the shard fails. */
  async flush(): Promise<void> {
    if (this.#flushing) return this.#flushing
    this.refresh?.()
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = null
    if (this.#minutes.size === 0 && !this.#gaugesChanged) return
    const batch: MetricsBatch = {
      source: this.source,
      minutes: Object.fromEntries([...this.#minutes].map(([minute, m]) => [String(minute), Object.fromEntries(m)])),
      gauges: Object.fromEntries(this.#gauges),
    }
    const taken = this.#minutes
    this.#minutes = new Map()
    this.#gaugesChanged = false
    this.#lastFlushAt = Date.now()
    this.#flushing = (async () => {
      try {
        writeAnalytics(this.env, batch)
        await getMetricsShard(this.env, shardOf(this.env, this.source)).record(batch)
      } catch (e) {
        console.warn(JSON.stringify({ level: 'warn', msg: 'metrics hand-over failed', source: this.source, error: String(e) }))
        for (const [minute, m] of taken) {
          const now = this.#minutes.get(minute) ?? new Map<string, number>()
          for (const [k, v] of m) now.set(k, (now.get(k) ?? 0) + v)
          this.#minutes.set(minute, now)
        }
        this.#gaugesChanged = true
      } finally {
        this.#flushing = null
        if (this.#minutes.size > 0 || this.#gaugesChanged) this.#arm()
      }
    })()
    return this.#flushing
  }
}

/** Production's long-term store: one Analytics Engine data point per series per hand-over. */
function writeAnalytics(env: Env, batch: MetricsBatch) {
  if (!env.METRICS) return
  for (const [minute, m] of Object.entries(batch.minutes)) {
    for (const [key, value] of Object.entries(m)) env.METRICS.writeDataPoint({ indexes: [key], blobs: [key, batch.source, 'counter'], doubles: [value, Number(minute)] })
  }
  for (const [key, value] of Object.entries(batch.gauges)) env.METRICS.writeDataPoint({ indexes: [key], blobs: [key, batch.source, 'gauge'], doubles: [value, Math.floor(Date.now() / 60_000)] })
}

/** The Worker's own counts (5xx, refused requests): rare, so each is handed over at once. */
export function countInWorker(env: Env, ctx: { waitUntil(p: Promise<unknown>): void }, name: Counter, label?: string) {
  const m = new Metrics(env, 'worker')
  m.count(name, label)
  ctx.waitUntil(m.flush())
}
