import { and, eq, inArray } from 'drizzle-orm'
import { Hono } from 'hono'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import type { Ack, RoomResult } from '../conversation/ConversationRoom'
import { groupLimit } from '../conversation/ConversationRoom'
import { rowToEvent } from '../conversation/event-rows'
import { placeConversation } from '../db/history'
import { defaultKeepDays } from '../conversation/retention'
import { historyRows, listTallies } from '../db/history-reads'
import { getDb, type Db } from '../db/client'
import { conversations, members, users } from '../db/schema'
import { getConversationRoom, getUserHub } from '../durable-objects'
import type { AppEnv, Env } from '../env'
import { fail, requireAuth, validate } from '../http'
import { newId } from '../ids'
import { ErrorCode } from '../shared/errors'
import { MUTED_FOREVER } from '../shared/limits'
import {
  type CallEvent,
  type ConversationEvent,
  ConversationSettingsBody,
  AddMembersBody,
  CreateConversationBody,
  CreateGroupBody,
  HistoryQuery,
  Id,
  RenameBody,
  RetentionBody,
  type KeepDays,
  RoleBody,
  TransferBody,
  type ConversationSummary,
  type HistoryPage,
  type MessageBody,
  type PublicUser,
  type Role,
  previewOf,
} from '../shared/protocol'
import { publicUser } from '../auth/sessions'
import { callPreview } from '../shared/limits'
import { areFriends, blockedEitherWay } from '../social/policy'
import { directKey } from './blocks'

interface ListRow {
  id: string
  kind: 'direct' | 'group'
  title: string | null
  last_seq: number
  last_activity_at: number
  read_seq: number
  joined_seq: number
  history_shard: string
  retention_days: KeepDays | null
  voice_live_since: number | null
  muted_until: number | null
  pinned_at: number | null
  archived_at: number | null
}

export function previewText(body: MessageBody | null, recalled: boolean): string {
  return previewOf(body, recalled)
}

/** The viewer's conversations with members, unread counts and a preview, newest activity first. */
async function listFor(env: Env, viewerId: string, onlyId?: string): Promise<ConversationSummary[]> {
  const [list, blockRows] = await env.DB.batch<ListRow & { blocked_id?: string }>([
    env.DB.prepare(
      `SELECT c.id, c.kind, c.title, c.last_seq, c.last_activity_at, c.voice_live_since, c.history_shard, c.retention_days, mem.read_seq, mem.joined_seq, mem.muted_until, mem.pinned_at, mem.archived_at
       FROM members mem JOIN conversations c ON c.id = mem.conversation_id
       WHERE mem.user_id = ?1 AND (?2 IS NULL OR c.id = ?2)
       ORDER BY c.last_activity_at DESC LIMIT 200`,
    ).bind(viewerId, onlyId ?? null),
    env.DB.prepare('SELECT blocked_id FROM blocks WHERE blocker_id = ?').bind(viewerId),
  ])
  const results = list!.results
  if (results.length === 0) return []
  // D1 binds at most 100 parameters per statement, and a list holds up to 200 conversations.
  const ids = results.map((r) => r.id)
  const slices = Array.from({ length: Math.ceil(ids.length / 90) }, (_, i) => ids.slice(i * 90, i * 90 + 90))
  // Unread counts and previews come from history, on each conversation's shard; the rosters from here.
  const [tallies, ...rosters] = await Promise.all([
    listTallies(
      env,
      viewerId,
      results.map((r) => ({ id: r.id, shard: r.history_shard, readSeq: r.read_seq, joinedSeq: r.joined_seq })),
      blockRows!.results.map((b) => b.blocked_id!),
    ),
    ...slices.map((slice) =>
      getDb(env)
        .select({ conversationId: members.conversationId, role: members.role, id: users.id, handle: users.handle, displayName: users.displayName, avatarKey: users.avatarKey })
        .from(members)
        .innerJoin(users, eq(users.id, members.userId))
        .where(inArray(members.conversationId, slice)),
    ),
  ])
  const people = rosters.flat()
  const summaries = results.map((c) => {
    // A shard that did not answer leaves the directory's coarse figures.
    const tally = tallies.get(c.id) ?? { readSeq: c.read_seq, unread: 0, preview: null, lastSeq: 0, lastActivityAt: null }
    const roster = people.filter((p) => p.conversationId === c.id).map((p) => ({ ...publicUser(p), role: p.role }))
    const others = roster.filter((p) => p.id !== viewerId)
    const p = tally.preview ? (JSON.parse(tally.preview) as { seq: number; type: string; senderId: string; body: MessageBody | null; serverTs: number; recalled: number }) : null
    return {
      id: c.id,
      kind: c.kind,
      title: c.title ?? (others.map((o) => o.displayName).join(', ') || 'Just you'),
      members: roster,
      lastSeq: Math.max(c.last_seq, tally.lastSeq),
      lastActivityAt: Math.max(c.last_activity_at, tally.lastActivityAt ?? 0),
      unread: tally.unread,
      readSeq: Math.max(c.read_seq, tally.readSeq),
      mutedUntil: c.muted_until !== null && c.muted_until > Date.now() ? c.muted_until : null,
      pinned: c.pinned_at !== null,
      archived: c.archived_at !== null,
      voiceLiveSince: c.voice_live_since,
      keepDays: c.retention_days,
      retentionDays: c.retention_days ?? defaultKeepDays(env),
      preview: p ? { seq: p.seq, senderId: p.senderId, text: p.type === 'call' ? callPreview(p.body as unknown as Pick<CallEvent, 'video' | 'outcome' | 'durationMs'>) : previewText(p.body, !!p.recalled), serverTs: p.serverTs } : null,
    } satisfies ConversationSummary
  })
  // The directory's order is coarse (rooms mirror their activity there at most every few minutes); the shards' is exact.
  return summaries.sort((a, b) => b.lastActivityAt - a.lastActivityAt)
}

async function summaryOf(env: Env, viewerId: string, id: string): Promise<ConversationSummary> {
  return (await listFor(env, viewerId, id))[0]!
}

/** Non-members get the same answer as for a missing conversation, so ids cannot be probed. */
async function requireMember(db: Db, conversationId: string, userId: string) {
  const row = await db
    .select({ role: members.role, joinedSeq: members.joinedSeq, historyShard: conversations.historyShard })
    .from(members)
    .innerJoin(conversations, eq(conversations.id, members.conversationId))
    .where(and(eq(members.conversationId, conversationId), eq(members.userId, userId)))
    .get()
  if (!row) fail(404, ErrorCode.NOT_FOUND, 'conversation not found')
  return row
}

function conversationId(raw: string): string {
  const id = Id.safeParse(raw)
  if (!id.success) fail(400, ErrorCode.BAD_REQUEST, 'invalid conversation id')
  return id.data
}

const statusFor: Partial<Record<ErrorCode, ContentfulStatusCode>> = {
  NOT_MEMBER: 404,
  NOT_FOUND: 404,
  NOT_ALLOWED: 403,
  FORBIDDEN: 403,
  CONFLICT: 409,
  TOO_LATE: 409,
  RATE_LIMITED: 429,
}

/** Turns a room's answer into HTTP: errors through the one error shape, success as the ack. */
function unwrap(result: RoomResult<Ack>): Ack {
  if (result.ok) return result.value
  const code = result.code === ErrorCode.NOT_MEMBER ? ErrorCode.NOT_FOUND : result.code
  fail(statusFor[result.code] ?? 400, code, result.code === ErrorCode.NOT_MEMBER ? 'conversation not found' : result.message)
}

function tellListChanged(env: Env, userIds: string[]) {
  return Promise.all(userIds.map((id) => getUserHub(env, id).notify({ type: 'conversations-changed' })))
}

/** Only friends, and nobody across a block, may be put in a conversation by `actorId`. */
async function requireAddable(db: Db, actorId: string, userIds: string[]) {
  for (const id of userIds) {
    if (id === actorId) continue
    if (!(await areFriends(db, actorId, id)) || (await blockedEitherWay(db, actorId, id))) {
      fail(403, ErrorCode.FORBIDDEN, 'you can only add your friends')
    }
  }
}

export const conversationRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  .get('/', async (c) => c.json({ conversations: await listFor(c.env, c.get('auth').userId) }))
  .post('/', validate('json', CreateConversationBody), async (c) => {
    const { userId } = c.get('auth')
    const { peerHandle } = c.req.valid('json')
    const db = getDb(c.env)
    const peer = await db.select().from(users).where(eq(users.handle, peerHandle)).get()
    if (!peer) fail(404, ErrorCode.NOT_FOUND, `no user @${peerHandle}`)
    if (peer.id === userId) fail(400, ErrorCode.BAD_REQUEST, 'you cannot start a chat with yourself')
    const key = directKey(userId, peer.id)
    const existing = await db.select({ id: conversations.id }).from(conversations).where(eq(conversations.directKey, key)).get()
    if (existing) return c.json({ conversation: await summaryOf(c.env, userId, existing.id) }, 200)
    if (await blockedEitherWay(db, userId, peer.id)) fail(403, ErrorCode.FORBIDDEN, 'you cannot message this person')
    if (!(await areFriends(db, userId, peer.id))) fail(403, ErrorCode.FORBIDDEN, `send @${peerHandle} a friend request first`)

    const now = Date.now()
    const id = newId()
    try {
      await db.batch([
        db.insert(conversations).values({ id, kind: 'direct', title: null, directKey: key, createdBy: userId, createdAt: now, lastSeq: 0, lastActivityAt: now, historyShard: placeConversation(c.env, id) }),
        db.insert(members).values([
          { conversationId: id, userId, role: 'member', joinedAt: now },
          { conversationId: id, userId: peer.id, role: 'member', joinedAt: now },
        ]),
      ])
    } catch (err) {
      // Both people opened the chat at once: the unique direct_key kept one; return it.
      const winner = await db.select({ id: conversations.id }).from(conversations).where(eq(conversations.directKey, key)).get()
      if (!winner) throw err
      return c.json({ conversation: await summaryOf(c.env, userId, winner.id) }, 200)
    }
    await tellListChanged(c.env, [peer.id])
    return c.json({ conversation: await summaryOf(c.env, userId, id) }, 201)
  })
  .post('/groups', validate('json', CreateGroupBody), async (c) => {
    const { userId } = c.get('auth')
    const { title, memberIds } = c.req.valid('json')
    const db = getDb(c.env)
    const invited = [...new Set(memberIds)].filter((id) => id !== userId)
    if (invited.length + 1 > groupLimit(c.env)) fail(400, ErrorCode.BAD_REQUEST, `a group holds at most ${groupLimit(c.env)} people`)
    await requireAddable(db, userId, invited)
    const now = Date.now()
    const id = newId()
    const rows = [
      { conversationId: id, userId, role: 'owner' as Role, joinedAt: now },
      ...invited.map((m) => ({ conversationId: id, userId: m, role: 'member' as Role, joinedAt: now })),
    ]
    // D1 binds at most 100 parameters per statement, so members go in slices of 10 rows.
    const slices = Array.from({ length: Math.ceil(rows.length / 10) }, (_, i) => db.insert(members).values(rows.slice(i * 10, i * 10 + 10)))
    await db.batch([
      db.insert(conversations).values({ id, kind: 'group', title, directKey: null, createdBy: userId, createdAt: now, lastSeq: 0, lastActivityAt: now, historyShard: placeConversation(c.env, id) }),
      ...slices,
    ])
    if (invited.length) unwrap(await getConversationRoom(c.env, id).announceMembers(id, userId, crypto.randomUUID()))
    await tellListChanged(c.env, invited)
    return c.json({ conversation: await summaryOf(c.env, userId, id) }, 201)
  })
  .get('/:id', async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    await requireMember(getDb(c.env), id, userId)
    return c.json({ conversation: await summaryOf(c.env, userId, id) })
  })
  /** The viewer's own mute, pin and archive of a conversation; their other devices follow. */
  .patch('/:id/settings', validate('json', ConversationSettingsBody), async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const db = getDb(c.env)
    await requireMember(db, id, userId)
    const { mute, pinned, archived } = c.req.valid('json')
    const now = Date.now()
    const mutedUntil = { '1h': now + 3600_000, '8h': now + 8 * 3600_000, always: MUTED_FOREVER, off: null } as const
    await db
      .update(members)
      .set({
        ...(mute !== undefined ? { mutedUntil: mutedUntil[mute] } : {}),
        ...(pinned !== undefined ? { pinnedAt: pinned ? now : null } : {}),
        ...(archived !== undefined ? { archivedAt: archived ? now : null } : {}),
      })
      .where(and(eq(members.conversationId, id), eq(members.userId, userId)))
    await tellListChanged(c.env, [userId])
    return c.json({ conversation: await summaryOf(c.env, userId, id) })
  })
  /** How long the conversation keeps history; every member sees the change as an event. */
  .put('/:id/retention', validate('json', RetentionBody), async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const { keepDays } = c.req.valid('json')
    const ack = unwrap(await getConversationRoom(c.env, id).setRetention(id, userId, crypto.randomUUID(), keepDays))
    return c.json({ seq: ack.seq, conversation: await summaryOf(c.env, userId, id) })
  })
  .patch('/:id', validate('json', RenameBody), async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const ack = unwrap(await getConversationRoom(c.env, id).rename(id, userId, crypto.randomUUID(), c.req.valid('json').title))
    return c.json({ seq: ack.seq })
  })
  .post('/:id/members', validate('json', AddMembersBody), async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const { userIds } = c.req.valid('json')
    const db = getDb(c.env)
    await requireMember(db, id, userId)
    await requireAddable(db, userId, userIds)
    const ack = unwrap(await getConversationRoom(c.env, id).addMembers(id, userId, crypto.randomUUID(), userIds))
    await tellListChanged(c.env, userIds)
    return c.json({ seq: ack.seq }, 201)
  })
  .delete('/:id/members/:userId', async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const target = c.req.param('userId')
    const room = getConversationRoom(c.env, id)
    const ack = unwrap(target === userId ? await room.leave(id, userId, crypto.randomUUID()) : await room.removeMember(id, userId, crypto.randomUUID(), target))
    await tellListChanged(c.env, [target])
    return c.json({ seq: ack.seq })
  })
  .post('/:id/members/:userId/role', validate('json', RoleBody), async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const ack = unwrap(await getConversationRoom(c.env, id).setRole(id, userId, crypto.randomUUID(), c.req.param('userId'), c.req.valid('json').role))
    return c.json({ seq: ack.seq })
  })
  .post('/:id/transfer', validate('json', TransferBody), async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const ack = unwrap(await getConversationRoom(c.env, id).transferOwnership(id, userId, crypto.randomUUID(), c.req.valid('json').userId))
    return c.json({ seq: ack.seq })
  })
  .get('/:id/messages', validate('query', HistoryQuery), async (c) => {
    const { userId } = c.get('auth')
    const id = conversationId(c.req.param('id'))
    const { before, limit, from, to } = c.req.valid('query')
    const member = await requireMember(getDb(c.env), id, userId)
    // Raw SQL there shares its row shape with the room's log, so one mapper serves both.
    const results = await historyRows(c.env, { id, shard: member.historyShard }, { fromSeq: member.joinedSeq, before: before ?? null, from: from ?? null, to: to ?? null, limit })
    results.reverse()
    const events = results.map((r) => rowToEvent(id, r))
    const page: HistoryPage = {
      events,
      people: await formerMembers(c.env.DB, id, events),
      nextBefore: results.length === limit && results[0]!.seq > Math.max(1, member.joinedSeq) ? results[0]!.seq : null,
    }
    return c.json(page)
  })

/** The people a page of events names who have since left, so the page can still say who they were. */
async function formerMembers(db: D1Database, id: string, events: ConversationEvent[]): Promise<PublicUser[]> {
  const named = new Set(events.flatMap((e) => (e.type === 'member' ? [e.senderId, ...e.userIds] : [e.senderId])))
  if (named.size === 0) return []
  const ids = [...named]
  const { results } = await db
    .prepare(
      `SELECT id, handle, display_name AS displayName, avatar_key AS avatarKey FROM users
       WHERE id IN (SELECT value FROM json_each(?1))
         AND id NOT IN (SELECT user_id FROM members WHERE conversation_id = ?2)`,
    )
    .bind(JSON.stringify(ids), id)
    .all<{ id: string; handle: string; displayName: string; avatarKey: string | null }>()
  return results.map(publicUser)
}
