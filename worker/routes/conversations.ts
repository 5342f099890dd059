import { and, desc, eq, inArray } from 'drizzle-orm'
import { Hono } from 'hono'
import { publicUser } from '../auth/sessions'
import { getDb, type Db } from '../db/client'
import { EVENT_COLUMNS, rowToEvent, type EventRow } from '../conversation/event-rows'
import { conversations, members, users, type Conversation } from '../db/schema'
import type { AppEnv } from '../env'
import { fail, requireAuth, validate } from '../http'
import { newId } from '../ids'
import { ErrorCode } from '../shared/errors'
import { CreateConversationBody, HistoryQuery, Id, type ConversationSummary, type HistoryPage } from '../shared/protocol'

async function summarize(db: Db, viewerId: string, convs: Conversation[]): Promise<ConversationSummary[]> {
  if (convs.length === 0) return []
  const rows = await db
    .select({ conversationId: members.conversationId, id: users.id, handle: users.handle, displayName: users.displayName })
    .from(members)
    .innerJoin(users, eq(users.id, members.userId))
    .where(inArray(members.conversationId, convs.map((c) => c.id)))
  return convs.map((c) => {
    const people = rows.filter((r) => r.conversationId === c.id).map(publicUser)
    const others = people.filter((p) => p.id !== viewerId)
    return {
      id: c.id,
      kind: 'direct',
      title: c.title ?? (others.map((p) => p.displayName).join(', ') || 'Just you'),
      members: people,
      lastSeq: c.lastSeq,
      lastActivityAt: c.lastActivityAt,
    }
  })
}

async function requireMember(db: Db, conversationId: string, userId: string) {
  const row = await db.select({ role: members.role }).from(members)
    .where(and(eq(members.conversationId, conversationId), eq(members.userId, userId))).get()
  // Non-members get the same answer as for a missing conversation, so ids cannot be probed.
  if (!row) fail(404, ErrorCode.NOT_FOUND, 'conversation not found')
  return row
}

export const conversationRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  .get('/', async (c) => {
    const { userId } = c.get('auth')
    const db = getDb(c.env)
    const convs = await db
      .select({ conversation: conversations })
      .from(members)
      .innerJoin(conversations, eq(conversations.id, members.conversationId))
      .where(eq(members.userId, userId))
      .orderBy(desc(conversations.lastActivityAt))
      .limit(200)
    return c.json({ conversations: await summarize(db, userId, convs.map((r) => r.conversation)) })
  })
  .post('/', validate('json', CreateConversationBody), async (c) => {
    const { userId } = c.get('auth')
    const { peerHandle } = c.req.valid('json')
    const db = getDb(c.env)
    const peer = await db.select().from(users).where(eq(users.handle, peerHandle)).get()
    if (!peer) fail(404, ErrorCode.NOT_FOUND, `no user @${peerHandle}`)
    if (peer.id === userId) fail(400, ErrorCode.BAD_REQUEST, 'you cannot start a chat with yourself')
    const directKey = [userId, peer.id].sort().join(':')
    const existing = await db.select().from(conversations).where(eq(conversations.directKey, directKey)).get()
    if (existing) return c.json({ conversation: (await summarize(db, userId, [existing]))[0]! }, 200)

    const now = Date.now()
    const conv: Conversation = { id: newId(), kind: 'direct', title: null, directKey, createdBy: userId, createdAt: now, lastSeq: 0, lastActivityAt: now }
    try {
      await db.batch([
        db.insert(conversations).values(conv),
        db.insert(members).values([
          { conversationId: conv.id, userId, role: 'member', joinedAt: now },
          { conversationId: conv.id, userId: peer.id, role: 'member', joinedAt: now },
        ]),
      ])
    } catch (err) {
      // Both people opened the chat at once: the unique direct_key kept one; return it.
      const winner = await db.select().from(conversations).where(eq(conversations.directKey, directKey)).get()
      if (!winner) throw err
      return c.json({ conversation: (await summarize(db, userId, [winner]))[0]! }, 200)
    }
    return c.json({ conversation: (await summarize(db, userId, [conv]))[0]! }, 201)
  })
  .get('/:id/messages', validate('query', HistoryQuery), async (c) => {
    const { userId } = c.get('auth')
    const id = Id.safeParse(c.req.param('id'))
    if (!id.success) fail(400, ErrorCode.BAD_REQUEST, 'invalid conversation id')
    const { before, limit } = c.req.valid('query')
    const db = getDb(c.env)
    await requireMember(db, id.data, userId)
    // Raw SQL here shares its row shape with the room's log, so one mapper serves both.
    const { results } = await c.env.DB.prepare(
      `SELECT ${EVENT_COLUMNS} FROM messages WHERE conversation_id = ?1 AND (?2 IS NULL OR seq < ?2) ORDER BY seq DESC LIMIT ?3`,
    )
      .bind(id.data, before ?? null, limit)
      .all<EventRow>()
    results.reverse()
    const page: HistoryPage = {
      events: results.map((r) => rowToEvent(id.data, r)),
      nextBefore: results.length === limit && results[0]!.seq > 1 ? results[0]!.seq : null,
    }
    return c.json(page)
  })
