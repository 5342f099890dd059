import type { Env } from '../env'
export { getMetricsShard } from '../durable-objects'

/** Enough shards that none is busy at a million connections (docs/decisions.md "Metrics"). */
const DEFAULT_SHARDS = 16

export function shardCount(env: Env): number {
  const n = Number(env.METRICS_SHARDS)
  return Number.isInteger(n) && n > 0 && n <= 256 ? n : DEFAULT_SHARDS
}

/** A stable shard for a source (FNV-1a of its name). */
export function shardOf(env: Env, source: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < source.length; i++) h = Math.imul(h ^ source.charCodeAt(i), 0x01000193)
  return (h >>> 0) % shardCount(env)
}
