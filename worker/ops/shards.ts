import type { Env } from '../env'
import { fnv1a, shardCountOf } from '../ids'
export { getMetricsShard } from '../durable-objects'

/** Enough shards that none is busy at a million connections (docs/decisions.md "Metrics"). */
const DEFAULT_SHARDS = 16

export function shardCount(env: Env): number {
  return shardCountOf(env.METRICS_SHARDS, DEFAULT_SHARDS)
}

/** A stable shard for a source (FNV-1a of its name). */
export function shardOf(env: Env, source: string): number {
  return fnv1a(source) % shardCount(env)
}
