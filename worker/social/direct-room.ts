import { eq } from 'drizzle-orm'
import type { Db } from '../db/client'
import { conversations } from '../db/schema'
import { getConversationRoom } from '../durable-objects'
import type { Env } from '../env'
import { areFriends, blockedEitherWay } from './policy'

export function directKey(a: string, b: string) {
  return [a, b].sort().join(':')
}

/**
 * A direct chat takes writes while the two are friends and neither blocked the other; the room is
 * told on every change of either (block, unblock, accept, unfriend), so an unblock alone does not
 * reopen it.
 */
export async function syncDirectRoom(env: Env, db: Db, a: string, b: string) {
  const conv = await db.select({ id: conversations.id }).from(conversations).where(eq(conversations.directKey, directKey(a, b))).get()
  if (!conv) return
  const closed = (await blockedEitherWay(db, a, b)) || !(await areFriends(db, a, b))
  await getConversationRoom(env, conv.id).setBlocked(conv.id, closed)
}
