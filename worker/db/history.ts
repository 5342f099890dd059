import type { Env } from '../env'
import { fnv1a } from '../ids'

/**
 * History is sharded by conversation over D1 databases: each conversation's events, and their
 * search index, live in the database its `history_shard` names, chosen once when it is created and
 * never moved. New conversations are spread over the bindings HISTORY_SHARDS lists, so adding a
 * shard is a binding plus a name in that list; removing a name only stops new placements.
 */

/** The main database: users, friends, sessions, the conversation directory, and legacy history. */
export const MAIN = 'DB'
const SHARD_NAME = /^(DB|HISTORY_[0-9]{1,3})$/

/** The shards new conversations go to, in order; the main database when none is configured. */
export function placementShards(env: Env): string[] {
  const names = (env.HISTORY_SHARDS ?? '').split(',').map((s) => s.trim()).filter(Boolean)
  for (const name of names) historyDb(env, name)
  return names.length > 0 ? names : [MAIN]
}

/** Where a new conversation's history goes: a stable hash of its id over the placement list. */
export function placeConversation(env: Env, conversationId: string): string {
  const shards = placementShards(env)
  return shards[fnv1a(conversationId) % shards.length]!
}

/** The database a shard name stands for; throws on a name with no binding (a configuration error). */
export function historyDb(env: Env, shard: string): D1Database {
  const db = SHARD_NAME.test(shard) ? (env as unknown as Record<string, D1Database | undefined>)[shard] : undefined
  if (!db || typeof db.prepare !== 'function') throw new Error(`history shard ${shard} has no D1 binding`)
  return db
}

/** Every shard named in this deployment, placement or not (for fan-out and sweeps). */
export function allShards(env: Env): string[] {
  const bound = Object.keys(env).filter((k) => SHARD_NAME.test(k) && k !== MAIN)
  return [MAIN, ...bound.sort()]
}

/** Groups items by the shard they live on, keeping their order within each shard. */
export function byShard<T>(items: T[], shardOf: (item: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>()
  for (const item of items) {
    const shard = shardOf(item)
    const list = out.get(shard)
    if (list) list.push(item)
    else out.set(shard, [item])
  }
  return out
}
