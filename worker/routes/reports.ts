import { Hono } from 'hono'
import { getDb } from '../db/client'
import { reports, users } from '../db/schema'
import { getConversationRoom } from '../durable-objects'
import type { AppEnv } from '../env'
import { fail, requireAuth, validate } from '../http'
import { newId } from '../ids'
import { ErrorCode } from '../shared/errors'
import { ReportBody } from '../shared/moderation'
import { eq } from 'drizzle-orm'

export const reportRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  /**
   * A report of a message the reporter can see (a copy is kept for the moderators, even if it is
   * recalled later) or of a user. Reporting the same message twice is one report.
   */
  .post('/', validate('json', ReportBody), async (c) => {
    const { userId } = c.get('auth')
    const body = c.req.valid('json')
    const db = getDb(c.env)
    let target: string
    let copy: string | null = null
    if (body.target === 'message') {
      const found = await getConversationRoom(c.env, body.conversationId).reportedMessage(body.conversationId, userId, body.seq)
      if (!found.ok) fail(found.code === ErrorCode.NOT_MEMBER ? 403 : 404, found.code, found.message)
      target = found.value.senderId
      copy = JSON.stringify({ serverTs: found.value.serverTs, body: found.value.body })
    } else {
      const exists = await db.select({ id: users.id }).from(users).where(eq(users.id, body.userId)).get()
      if (!exists) fail(404, ErrorCode.NOT_FOUND, 'no such user')
      target = body.userId
    }
    if (target === userId) fail(400, ErrorCode.BAD_REQUEST, 'you cannot report yourself')
    const id = newId()
    const inserted = await db
      .insert(reports)
      .values({
        id,
        reporterId: userId,
        targetUserId: target,
        conversationId: body.target === 'message' ? body.conversationId : null,
        seq: body.target === 'message' ? body.seq : null,
        reason: body.reason,
        note: body.note ?? '',
        messageCopy: copy,
        createdAt: Date.now(),
      })
      .onConflictDoNothing()
      .returning({ id: reports.id })
    return c.json({ reported: true }, inserted.length > 0 ? 201 : 200)
  })
