import type { Env } from '../env'
import { fnv1a } from '../ids'
export { getMetricsShard } from '../durable-objects'

/** Enough shards that none is busy at a million connections (docs/decisions.md "Metrics"). */
const DEFAULT_SHARDS = 16

export function shardCount(env: Env): number {
  const n = Number(env.METRICS_SHARDS)
  return Number.isInteger(n) && n > 0 && n <= 256 ? n : DEFAULT_SHARDS
}

/** A stable shard for a source (FNV-1a of its name). */
export function shardOf(env: Env, source: string): number {
  return fnv1a(source) % shardCount(env)
}
