// Transient frames to the people of a conversation (a transcript, a voice room's summary), through
// their hubs, a few at a time so a large group never floods the runtime.
import { getUserHub } from '../durable-objects'
import type { Env } from '../env'
import { pool } from '../pool'
import type { ServerMessage } from '../shared/protocol'

export async function memberIds(env: Env, conversationId: string): Promise<string[]> {
  const { results } = await env.DB.prepare('SELECT user_id FROM members WHERE conversation_id = ?').bind(conversationId).all<{ user_id: string }>()
  return results.map((r) => r.user_id)
}

/** Best effort: a hub that cannot be reached misses this frame (the next one, or a sync, catches up). */
export async function notifyUsers(env: Env, userIds: string[], frame: ServerMessage): Promise<void> {
  await pool(userIds, 8, (id) => getUserHub(env, id).notify(frame).catch((e: unknown) => console.warn(`${frame.type} notice failed`, id, String(e))))
}
