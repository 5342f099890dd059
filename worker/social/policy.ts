import { and, eq, or } from 'drizzle-orm'
import { publicUser } from '../auth/sessions'
import type { Db } from '../db/client'
import { blocks, conversations, friendRequests, friendships, members, users, type User } from '../db/schema'
import type { Presence, Profile, Relationship } from '../shared/protocol'

export function profileOf(u: User): Profile {
  return { ...publicUser(u), statusLine: u.statusLine, hasAvatar: u.avatarKey !== null }
}

export async function areFriends(db: Db, a: string, b: string): Promise<boolean> {
  const row = await db.select({ x: friendships.userId }).from(friendships).where(and(eq(friendships.userId, a), eq(friendships.friendId, b))).get()
  return !!row
}

/** True when either side blocked the other: blocked users reach nobody and see nothing. */
export async function blockedEitherWay(db: Db, a: string, b: string): Promise<boolean> {
  const row = await db
    .select({ x: blocks.blockerId })
    .from(blocks)
    .where(or(and(eq(blocks.blockerId, a), eq(blocks.blockedId, b)), and(eq(blocks.blockerId, b), eq(blocks.blockedId, a))))
    .get()
  return !!row
}

/**
 * Who may take part live in a conversation (its voice room, a call): its members; in a 1:1, not
 * while either blocked the other. Gives the members, or why not.
 */
export async function liveAccess(db: Db, conversationId: string, userId: string): Promise<{ ok: true; kind: 'direct' | 'group'; members: string[] } | { ok: false; why: 'not-member' | 'blocked' }> {
  const rows = await db
    .select({ userId: members.userId, kind: conversations.kind })
    .from(members)
    .innerJoin(conversations, eq(conversations.id, members.conversationId))
    .where(eq(members.conversationId, conversationId))
  const ids = rows.map((r) => r.userId)
  if (!ids.includes(userId)) return { ok: false, why: 'not-member' }
  const kind = rows[0]!.kind
  const other = ids.find((id) => id !== userId)
  if (kind === 'direct' && other && (await blockedEitherWay(db, userId, other))) return { ok: false, why: 'blocked' }
  return { ok: true, kind, members: ids }
}

export async function hasBlocked(db: Db, blocker: string, blocked: string): Promise<boolean> {
  const row = await db.select({ x: blocks.blockerId }).from(blocks).where(and(eq(blocks.blockerId, blocker), eq(blocks.blockedId, blocked))).get()
  return !!row
}

export async function relationship(db: Db, viewer: string, other: string): Promise<Relationship> {
  if (viewer === other) return 'self'
  if (await hasBlocked(db, viewer, other)) return 'blocked'
  if (await areFriends(db, viewer, other)) return 'friend'
  const pending = await db
    .select({ fromId: friendRequests.fromId })
    .from(friendRequests)
    .where(
      and(
        eq(friendRequests.status, 'pending'),
        or(and(eq(friendRequests.fromId, viewer), eq(friendRequests.toId, other)), and(eq(friendRequests.fromId, other), eq(friendRequests.toId, viewer))),
      ),
    )
    .get()
  if (!pending) return 'none'
  return pending.fromId === viewer ? 'request-sent' : 'request-received'
}

/** Presence as `viewer` may see it: hidden (null) by the owner's setting or by a block. */
export async function visiblePresence(db: Db, viewer: string, owner: User, presence: Presence): Promise<Presence | null> {
  // Last seen moved to the user's hub; D1's column only holds what older versions wrote.
  const shown = { online: presence.online, lastSeenAt: presence.lastSeenAt ?? owner.lastSeenAt }
  if (viewer === owner.id) return shown
  if (owner.presenceVisibility === 'nobody') return null
  if (await blockedEitherWay(db, viewer, owner.id)) return null
  if (owner.presenceVisibility === 'friends' && !(await areFriends(db, viewer, owner.id))) return null
  return shown
}

export async function userById(db: Db, id: string): Promise<User | undefined> {
  return db.select().from(users).where(eq(users.id, id)).get()
}
