import * as z from 'zod'

/** Every series the service records; the Prometheus names are `echovalley_<name>`. */
export const Counter = {
  messagesAccepted: 'messages_accepted_total',
  /** Writes refused, labelled by error code. */
  messagesRefused: 'messages_refused_total',
  /** Event frames sent to devices (first sends, not resends). */
  deliveries: 'deliveries_total',
  resends: 'resends_total',
  /** Pushes by outcome: sent, failed (retried), dead_letter. */
  pushes: 'pushes_total',
  /** Finished uploads by outcome (ok, failed) and their bytes. */
  uploads: 'uploads_total',
  uploadBytes: 'upload_bytes_total',
  /** Voice notes transcribed, by outcome. */
  transcriptions: 'transcriptions_total',
  /** Requests and frames refused for rate, by where (socket, room, http). */
  rateLimited: 'rate_limited_total',
  /** HTTP 5xx answers, by route. */
  http5xx: 'http_5xx_total',
} as const
export type Counter = (typeof Counter)[keyof typeof Counter]

/** Gauges: each object reports its own value; the total is the sum (or the max, for lag). */
export const Gauge = {
  socketsOpen: 'sockets_open',
  devicesOnline: 'devices_online',
  voiceRoomsLive: 'voice_rooms_live',
  callsLive: 'calls_live',
  /** Age of the oldest event not yet in D1, in seconds (the largest over all rooms). */
  d1FlushLag: 'd1_flush_lag_seconds',
} as const
export type Gauge = (typeof Gauge)[keyof typeof Gauge]
export const MAX_GAUGES: ReadonlySet<string> = new Set([Gauge.d1FlushLag])

/** Send→ack time as the hub sees it (frame in → ack out, the room's commit included). */
export const SEND_ACK = 'send_ack_ms'
/** Fixed upper bounds (ms) of the send→ack histogram; the last bucket is +Inf. */
export const SEND_ACK_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000] as const

/** One minute's worth of one object's counts, as it hands them to its metrics shard. */
export const MetricsBatch = z.object({
  source: z.string().min(1).max(200),
  /** Counter deltas per minute (epoch minute → series key → delta); keys are `name` or `name{label}`. */
  minutes: z.record(z.string(), z.record(z.string(), z.number())),
  /** The object's current gauge values. */
  gauges: z.record(z.string(), z.number()),
})
export type MetricsBatch = z.infer<typeof MetricsBatch>

/** Series key of a counter with an optional label value. */
export function seriesKey(name: string, label?: string): string {
  return label === undefined ? name : `${name}{${label}}`
}

export function parseSeriesKey(key: string): { name: string; label?: string } {
  const m = key.match(/^([a-z0-9_]+)\{(.*)\}$/)
  return m ? { name: m[1]!, label: m[2]! } : { name: key }
}

/** What the monitoring view charts, one value per minute (null where nothing was recorded). */
export interface MetricsSeries {
  /** Epoch minutes, oldest first. */
  minutes: number[]
  messagesPerSecond: number[]
  ackP50: (number | null)[]
  ackP99: (number | null)[]
  socketsOpen: (number | null)[]
  pushesSent: number[]
  pushesFailed: number[]
  deadLetters: number[]
  /** Refusals per minute by error code. */
  errors: Record<string, number[]>
  d1FlushLag: (number | null)[]
  /** Current values. */
  now: { socketsOpen: number; devicesOnline: number; voiceRoomsLive: number; callsLive: number; d1FlushLag: number }
}
