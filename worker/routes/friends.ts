import { aliasedTable, and, eq, or } from 'drizzle-orm'
import { Hono } from 'hono'
import { publicUser } from '../auth/sessions'
import { getDb, type Db } from '../db/client'
import { friendRequests, friendships, users } from '../db/schema'
import { getUserHub } from '../durable-objects'
import type { AppEnv, Env } from '../env'
import { fail, requireAuth, validate } from '../http'
import { newId } from '../ids'
import { ErrorCode } from '../shared/errors'
import { FriendRequestBody, Id, type FriendRequest } from '../shared/protocol'
import { pool } from '../pool'
import { syncDirectRoom } from '../social/direct-room'
import { areFriends, blockedEitherWay, profileOf } from '../social/policy'

function notifyFriendsChanged(env: Env, ...userIds: string[]) {
  return Promise.all(userIds.map((id) => getUserHub(env, id).notify({ type: 'friends-changed' })))
}

export async function befriend(db: Db, a: string, b: string) {
  const now = Date.now()
  await db.batch([
    db.insert(friendships).values({ userId: a, friendId: b, createdAt: now }).onConflictDoNothing(),
    db.insert(friendships).values({ userId: b, friendId: a, createdAt: now }).onConflictDoNothing(),
  ])
}

export async function unfriend(db: Db, a: string, b: string) {
  await db.batch([
    db.delete(friendships).where(and(eq(friendships.userId, a), eq(friendships.friendId, b))),
    db.delete(friendships).where(and(eq(friendships.userId, b), eq(friendships.friendId, a))),
  ])
}

/** Settles every pending request between two people (both directions) with `status`. */
export async function closeRequestsBetween(db: Db, a: string, b: string, status: 'accepted' | 'cancelled') {
  await db
    .update(friendRequests)
    .set({ status, pendingKey: null, respondedAt: Date.now() })
    .where(
      and(
        eq(friendRequests.status, 'pending'),
        or(and(eq(friendRequests.fromId, a), eq(friendRequests.toId, b)), and(eq(friendRequests.fromId, b), eq(friendRequests.toId, a))),
      ),
    )
}

/** The pending request `id` as seen by one of its two parties; anyone else gets a 404. */
async function pendingRequest(db: Db, id: string, party: 'fromId' | 'toId', userId: string) {
  const parsed = Id.safeParse(id)
  if (!parsed.success) fail(404, ErrorCode.NOT_FOUND, 'no such request')
  const row = await db.select().from(friendRequests).where(and(eq(friendRequests.id, parsed.data), eq(friendRequests.status, 'pending'))).get()
  if (!row || row[party] !== userId) fail(404, ErrorCode.NOT_FOUND, 'no such pending request')
  return row
}

async function settleRequest(env: Env, db: Db, req: { id: string; fromId: string; toId: string }, status: 'declined' | 'cancelled') {
  await db.update(friendRequests).set({ status, pendingKey: null, respondedAt: Date.now() }).where(eq(friendRequests.id, req.id))
  await notifyFriendsChanged(env, req.fromId, req.toId)
}

const fromUser = aliasedTable(users, 'from_user')
const toUser = aliasedTable(users, 'to_user')

export const friendRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  .get('/', async (c) => {
    const { userId } = c.get('auth')
    const db = getDb(c.env)
    const rows = await db.select({ user: users }).from(friendships).innerJoin(users, eq(users.id, friendships.friendId)).where(eq(friendships.userId, userId))
    // Friends are neither blocked nor strangers, so only their own setting hides them; a few hubs at a time.
    const friends = await pool(rows, 8, async ({ user }) => {
      const presence = user.presenceVisibility === 'nobody' ? null : await getUserHub(c.env, user.id).presence()
      return { ...profileOf(user), presence: presence && { online: presence.online, lastSeenAt: presence.lastSeenAt ?? user.lastSeenAt } }
    })
    friends.sort((a, b) => a.displayName.localeCompare(b.displayName))
    return c.json({ friends })
  })
  .delete('/:userId', async (c) => {
    const { userId } = c.get('auth')
    const other = c.req.param('userId')
    const db = getDb(c.env)
    if (!(await areFriends(db, userId, other))) fail(404, ErrorCode.NOT_FOUND, 'not a friend')
    await unfriend(db, userId, other)
    await syncDirectRoom(c.env, db, userId, other)
    await notifyFriendsChanged(c.env, userId, other)
    return c.body(null, 204)
  })
  .get('/requests', async (c) => {
    const { userId } = c.get('auth')
    const rows = await getDb(c.env)
      .select({ request: friendRequests, from: fromUser, to: toUser })
      .from(friendRequests)
      .innerJoin(fromUser, eq(fromUser.id, friendRequests.fromId))
      .innerJoin(toUser, eq(toUser.id, friendRequests.toId))
      .where(and(eq(friendRequests.status, 'pending'), or(eq(friendRequests.fromId, userId), eq(friendRequests.toId, userId))))
    const shape = (r: (typeof rows)[number]): FriendRequest => ({
      id: r.request.id,
      from: publicUser(r.from),
      to: publicUser(r.to),
      note: r.request.note,
      createdAt: r.request.createdAt,
    })
    return c.json({
      incoming: rows.filter((r) => r.request.toId === userId).map(shape),
      outgoing: rows.filter((r) => r.request.fromId === userId).map(shape),
    })
  })
  .post('/requests', validate('json', FriendRequestBody), async (c) => {
    const { userId } = c.get('auth')
    const { handle, note } = c.req.valid('json')
    const db = getDb(c.env)
    const target = await db.select().from(users).where(eq(users.handle, handle)).get()
    if (!target) fail(404, ErrorCode.NOT_FOUND, `no user @${handle}`)
    if (target.id === userId) fail(400, ErrorCode.BAD_REQUEST, 'you cannot befriend yourself')
    if (await blockedEitherWay(db, userId, target.id)) fail(403, ErrorCode.FORBIDDEN, 'you cannot send a request to this user')
    if (await areFriends(db, userId, target.id)) fail(409, ErrorCode.CONFLICT, 'you are already friends')
    const theirs = await db
      .select()
      .from(friendRequests)
      .where(and(eq(friendRequests.fromId, target.id), eq(friendRequests.toId, userId), eq(friendRequests.status, 'pending')))
      .get()
    if (theirs) {
      // They already asked: asking back is accepting.
      await befriend(db, userId, target.id)
      await closeRequestsBetween(db, userId, target.id, 'accepted')
      await syncDirectRoom(c.env, db, userId, target.id)
      await notifyFriendsChanged(c.env, userId, target.id)
      return c.json({ status: 'accepted' as const }, 200)
    }
    const id = newId()
    try {
      await db.insert(friendRequests).values({ id, fromId: userId, toId: target.id, note, status: 'pending', pendingKey: `${userId}:${target.id}`, createdAt: Date.now() })
    } catch {
      fail(409, ErrorCode.CONFLICT, 'a request is already pending')
    }
    await notifyFriendsChanged(c.env, target.id)
    return c.json({ status: 'pending' as const, id }, 201)
  })
  .post('/requests/:id/accept', async (c) => {
    const { userId } = c.get('auth')
    const db = getDb(c.env)
    const req = await pendingRequest(db, c.req.param('id'), 'toId', userId)
    if (await blockedEitherWay(db, req.fromId, req.toId)) fail(403, ErrorCode.FORBIDDEN, 'you cannot befriend this user')
    await befriend(db, req.fromId, req.toId)
    await closeRequestsBetween(db, req.fromId, req.toId, 'accepted')
    await syncDirectRoom(c.env, db, req.fromId, req.toId)
    await notifyFriendsChanged(c.env, req.fromId, req.toId)
    return c.json({ status: 'accepted' as const })
  })
  .post('/requests/:id/decline', async (c) => {
    const { userId } = c.get('auth')
    const db = getDb(c.env)
    await settleRequest(c.env, db, await pendingRequest(db, c.req.param('id'), 'toId', userId), 'declined')
    return c.json({ status: 'declined' as const })
  })
  .delete('/requests/:id', async (c) => {
    const { userId } = c.get('auth')
    const db = getDb(c.env)
    await settleRequest(c.env, db, await pendingRequest(db, c.req.param('id'), 'fromId', userId), 'cancelled')
    return c.body(null, 204)
  })
