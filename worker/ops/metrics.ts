import type { Env } from '../env'
import { SEND_ACK, SEND_ACK_BUCKETS, seriesKey, type Counter, type Gauge, type MetricsBatch } from '../shared/metrics'
import { log } from './log'
import { getMetricsShard, shardOf } from './shards'

/** An object that keeps counting hands its counts over once this often... */
const DEFAULT_MIN_GAP_MS = 60_000
/**
 * ...and one that stops hands the rest over this long after its last count (by default). A pending
 * timer keeps an object awake, and billed for duration, so objects pass a short wait or none.
 */
const QUIET_MS = 10_000

export interface MetricsOptions {
  /** Sets gauges that are read at hand-over time (a room's D1 lag). */
  refresh?: () => void
  /**
   * How long after its last count a quiet object hands the rest over; `'owner'`: no timer, the
   * object calls `flush()` from a wake-up it has anyway (a room's alarm). With a test's gap shorter
   * than QUIET_MS a timer is used regardless, so tests need not wait for alarms.
   */
  quietMs?: number | 'owner'
}

/**
 * Counts kept in an object's memory per minute, handed to a metrics shard in one call once a minute
 * while the object stays busy and when it goes quiet (`MetricsOptions.quietMs`): no storage write
 * per message anywhere, and no single object that every message waits for (docs/decisions.md
 * "Metrics"). In production each hand-over is also written to Workers Analytics Engine.
 */
export class Metrics {
  #minutes = new Map<number, Map<string, number>>()
  #gauges = new Map<string, number>()
  #gaugesChanged = false
  #timer: ReturnType<typeof setTimeout> | null = null
  /** When the oldest count not yet handed over was made (0: none waiting). */
  #pendingSince = 0
  #lastCountAt = 0
  #flushing: Promise<void> | null = null
  /** METRICS_ENABLED=false turns counting off (the benchmark measures what it costs). */
  readonly #off: boolean

  constructor(
    private readonly env: Env,
    private readonly source: string,
    private readonly options: MetricsOptions = {},
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

  #gap(): number {
    return Number(this.env.METRICS_MIN_GAP_MS) || DEFAULT_MIN_GAP_MS
  }

  /** The wait for quiet, or null when the owner hands over from its own wake-ups. */
  #quiet(): number | null {
    const gap = this.#gap()
    if (this.options.quietMs === 'owner') return gap < QUIET_MS ? gap : null
    return Math.min(this.options.quietMs ?? QUIET_MS, gap)
  }

  #armQuiet(delay = this.#quiet()) {
    if (delay === null || this.#timer) return
    // Jittered: a message to a big group makes every member's hub count at once, and their
    // hand-overs should not all land on the shards in the same instant.
    this.#timer = setTimeout(() => this.#whenQuiet(), delay * (1 + Math.random() / 2))
  }

  /** Busy: hand over once the oldest waiting count is a gap old. Otherwise wait for quiet. */
  #arm() {
    const now = Date.now()
    this.#lastCountAt = now
    if (this.#pendingSince === 0) this.#pendingSince = now
    if (this.#flushing) return
    if (now - this.#pendingSince >= this.#gap()) return void this.flush()
    this.#armQuiet()
  }

  #whenQuiet() {
    this.#timer = null
    const quiet = this.#quiet() ?? 0
    const idle = Date.now() - this.#lastCountAt
    if (idle < quiet) this.#armQuiet(quiet - idle)
    else void this.flush()
  }

  /**
   * For an owner's wake-up: hands over when nothing was counted for `quietMs` (a busy object hands
   * over from the counting path, once a gap); says whether counts still wait, so the owner wakes again.
   */
  async flushIfQuiet(quietMs: number): Promise<boolean> {
    if (this.pending && Date.now() - this.#lastCountAt >= quietMs) await this.flush()
    return this.pending
  }

  /** For an owner that has no wake-up coming: a timer after all, 10 s. */
  handOverLater() {
    if (!this.#timer && this.pending) this.#timer = setTimeout(() => this.#whenQuiet(), QUIET_MS)
  }

  /** Whether counts wait for a hand-over (an owner without a timer keeps a wake-up for them). */
  get pending(): boolean {
    return this.#minutes.size > 0 || this.#gaugesChanged
  }

  /** Hands everything counted so far to the shard; counts stay for the next try if the shard fails. */
  async flush(): Promise<void> {
    if (this.#flushing) return this.#flushing
    this.options.refresh?.()
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
    this.#pendingSince = 0
    this.#flushing = (async () => {
      try {
        await getMetricsShard(this.env, shardOf(this.env, this.source)).record(batch)
        // After the shard took it: a failed hand-over is retried, and must not reach Analytics Engine twice.
        try {
          writeAnalytics(this.env, batch)
        } catch (e) {
          log(this.env, 'warn', 'analytics engine write failed', { error: String(e) })
        }
      } catch (e) {
        log(this.env, 'warn', 'metrics hand-over failed', { source: this.source, error: String(e) })
        for (const [minute, m] of taken) {
          const now = this.#minutes.get(minute) ?? new Map<string, number>()
          for (const [k, v] of m) now.set(k, (now.get(k) ?? 0) + v)
          this.#minutes.set(minute, now)
        }
        this.#gaugesChanged = true
      } finally {
        this.#flushing = null
        // Counts made meanwhile (or put back after a failure) wait for the next quiet or gap.
        if (this.pending) this.#armQuiet()
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

/** The Worker isolate's own counts (5xx, 429s, transcriptions). */
let isolateMetrics: Metrics | null = null
let isolateHandedAt = 0
const ISOLATE_GAP_MS = 10_000

/**
 * Counts in the isolate's memory and hands over at most every 10 s (with the request that finds them
 * due), so a flood of refused requests is not a flood of shard writes. Whatever an isolate counted
 * after its last hand-over goes with its next one, or with it when it is recycled.
 */
export function countInWorker(env: Env, ctx: { waitUntil(p: Promise<unknown>): void }, name: Counter, label?: string) {
  isolateMetrics ??= new Metrics(env, `worker:${crypto.randomUUID()}`, { quietMs: 'owner' })
  isolateMetrics.count(name, label)
  const gap = Math.min(ISOLATE_GAP_MS, Number(env.METRICS_MIN_GAP_MS) || ISOLATE_GAP_MS)
  if (Date.now() - isolateHandedAt < gap) return
  isolateHandedAt = Date.now()
  ctx.waitUntil(isolateMetrics.flush())
}
