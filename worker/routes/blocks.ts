import { and, eq } from 'drizzle-orm'
import { Hono } from 'hono'
import { getDb, type Db } from '../db/client'
import { blocks, conversations, users } from '../db/schema'
import { getConversationRoom, getUserHub } from '../durable-objects'
import type { AppEnv, Env } from '../env'
import { fail, requireAuth, validate } from '../http'
import { ErrorCode } from '../shared/errors'
import { BlockBody } from '../shared/protocol'
import { syncDirectRoom } from '../social/direct-room'
import { profileOf } from '../social/policy'
import { closeRequestsBetween, unfriend } from './friends'

export { directKey } from '../social/direct-room'

export const blockRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  .get('/', async (c) => {
    const rows = await getDb(c.env)
      .select({ user: users })
      .from(blocks)
      .innerJoin(users, eq(users.id, blocks.blockedId))
      .where(eq(blocks.blockerId, c.get('auth').userId))
    return c.json({ blocked: rows.map((r) => profileOf(r.user)) })
  })
  .post('/', validate('json', BlockBody), async (c) => {
    const { userId } = c.get('auth')
    const { userId: target } = c.req.valid('json')
    if (target === userId) fail(400, ErrorCode.BAD_REQUEST, 'you cannot block yourself')
    const db = getDb(c.env)
    if (!(await db.select({ id: users.id }).from(users).where(eq(users.id, target)).get())) fail(404, ErrorCode.NOT_FOUND, 'no such user')
    await db.insert(blocks).values({ blockerId: userId, blockedId: target, createdAt: Date.now() }).onConflictDoNothing()
    // A block ends the friendship and any pending request, in both directions.
    await unfriend(db, userId, target)
    await closeRequestsBetween(db, userId, target, 'cancelled')
    await syncDirectRoom(c.env, db, userId, target)
    await Promise.all([userId, target].map((id) => getUserHub(c.env, id).notify({ type: 'friends-changed' })))
    return c.json({ blocked: true }, 201)
  })
  .delete('/:userId', async (c) => {
    const { userId } = c.get('auth')
    const target = c.req.param('userId')
    const db = getDb(c.env)
    const res = await db.delete(blocks).where(and(eq(blocks.blockerId, userId), eq(blocks.blockedId, target))).run()
    if (res.meta.changes === 0) fail(404, ErrorCode.NOT_FOUND, 'that user is not blocked')
    await syncDirectRoom(c.env, db, userId, target)
    return c.body(null, 204)
  })
