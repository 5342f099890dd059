import { getConversationRoom } from '../durable-objects'
import type { Env } from '../env'
import { KEEP_DAYS, type KeepDays } from '../shared/limits'

/**
 * Retention: a conversation keeps history for its own setting's days, or the deployment's
 * RETENTION_DAYS (0 or unset: forever). Each room deletes the front of its log and its D1 rows and
 * blobs (ConversationRoom.expire, the erase path recall uses); the scheduled sweep below finds the
 * rooms with something due through conversations.history_expires_at, which rooms keep current.
 */

export const DAY_MS = 86_400_000
/** Events one expire call deletes: a bounded batch for the room's transaction and D1's statement. */
export const EXPIRE_BATCH = 500
/** history_expires_at of a conversation with retention on and nothing kept: never due, but known. */
export const NOTHING_KEPT = 8.64e15
/** Conversations a sweep round asks, and how many rooms work at once. */
const SWEEP_ROUND = 50
const SWEEP_CONCURRENCY = 8

export function defaultKeepDays(env: Env): number {
  const n = Number(env.RETENTION_DAYS ?? 0)
  return Number.isInteger(n) && n >= 0 ? n : 0
}

/** A setting as the room's meta holds it ('' for the default). */
export function parseKeepDays(raw: string | undefined): KeepDays | null {
  const n = raw ? Number(raw) : NaN
  return (KEEP_DAYS as readonly number[]).includes(n) ? (n as KeepDays) : null
}

export interface SweepReport {
  conversations: number
  expired: number
  /** Rooms that could not expire (not found, or D1 failed); the next sweep tries them again. */
  failed: number
}

/**
 * Asks every room whose history is due to expire it, in rounds, until none is due or the time
 * budget is spent (a cron invocation is bounded; the next one continues).
 */
export async function sweepRetention(env: Env, now: number, budgetMs = 25_000): Promise<SweepReport> {
  const report: SweepReport = { conversations: 0, expired: 0, failed: 0 }
  const started = Date.now()
  // Rooms that made no progress this sweep are not asked again in it, so a stuck one cannot spin it.
  const skip = new Set<string>()
  // With a default in force, conversations that follow it and were never measured against it (from
  // before retention, or while the default was "forever") are asked too: each room then records its
  // expiry, so it is asked once.
  const unmeasured = defaultKeepDays(env) > 0 ? 'OR (history_expires_at IS NULL AND retention_days IS NULL)' : ''
  while (Date.now() - started < budgetMs) {
    const { results } = await env.DB.prepare(
      `SELECT id FROM conversations WHERE (history_expires_at <= ?1 ${unmeasured}) AND id NOT IN (SELECT value FROM json_each(?2))
       ORDER BY history_expires_at LIMIT ?3`,
    )
      .bind(now, JSON.stringify([...skip]), SWEEP_ROUND)
      .all<{ id: string }>()
    if (results.length === 0) break
    const queue = results.map((r) => r.id)
    await Promise.all(
      Array.from({ length: Math.min(SWEEP_CONCURRENCY, queue.length) }, async () => {
        for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
          const r = await getConversationRoom(env, id).expire(id, now).catch((e: unknown) => ({ ok: false as const, error: String(e) }))
          if (!r.ok) {
            report.failed++
            skip.add(id)
            continue
          }
          report.conversations++
          report.expired += r.value.expired
          if (!r.value.more) skip.add(id)
        }
      }),
    )
  }
  return report
}
