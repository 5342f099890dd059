import { DurableObject } from 'cloudflare:workers'
import type { Env } from '../env'
import { fnv1a, shardCountOf } from '../ids'

const DEFAULT_SHARDS = 16

/** The index shard that holds a user (FNV-1a of the id over PRESENCE_SHARDS, 16 by default). */
export function presenceShardOf(env: Env, userId: string): number {
  return fnv1a(userId) % shardCountOf(env.PRESENCE_SHARDS, DEFAULT_SHARDS)
}

export function getPresenceIndex(env: Env, shard: number) {
  return env.PRESENCE.get(env.PRESENCE.idFromName(`presence-${shard}`))
}

/**
 * Who is online, for the users hashed to this shard. A hub sets its user online when the first
 * device connects and offline when the last one goes, so a connect greets only the friends who are
 * online instead of waking every friend's hub (docs/decisions.md "Presence"). Kept in SQLite, so an
 * eviction forgets nothing. An entry left by a runtime that stopped with sockets open is taken out
 * by that user's hub when a greeting finds it without devices.
 */
export class PresenceIndex extends DurableObject<Env> {
  private readonly sql: SqlStorage

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    this.sql.exec('CREATE TABLE IF NOT EXISTS online (user_id TEXT PRIMARY KEY)')
  }

  async set(userId: string, online: boolean): Promise<void> {
    if (online) this.sql.exec('INSERT OR IGNORE INTO online (user_id) VALUES (?)', userId)
    else this.sql.exec('DELETE FROM online WHERE user_id = ?', userId)
  }

  /** Which of these users are online. */
  async online(userIds: string[]): Promise<string[]> {
    if (userIds.length === 0) return []
    return this.sql
      .exec<{ user_id: string }>('SELECT user_id FROM online WHERE user_id IN (SELECT value FROM json_each(?))', JSON.stringify(userIds))
      .toArray()
      .map((r) => r.user_id)
  }
}
