import { DurableObject } from 'cloudflare:workers'
import { getUserHub } from '../durable-objects'
import { mediaKey } from '../media/UploadSession'
import type { Env } from '../env'
import { ErrorCode } from '../shared/errors'
import {
  EDIT_WINDOW_MS,
  MessageBody,
  RECALL_WINDOW_MS,
  SYNC_PAGE_LIMIT,
  TextBody,
  mediaIdsOf,
  type ConversationEvent,
  type MediaBody,
  type MemberEvent,
  type Receipt,
  type Role,
} from '../shared/protocol'
import { EVENT_COLUMNS, eventToRow, rowToEvent, type EventRow } from './event-rows'
import { fail, ok, type RoomResult } from '../do-result'
import { RateLimiter } from './rate-limit'
import { migrateRoom, ROOM_SCHEMA_VERSION } from './room-schema'

export type { RoomResult } from '../do-result'
export interface Ack {
  conversationId: string
  clientMsgId: string
  seq: number
  serverTs: number
  duplicate: boolean
}
export interface SyncPage {
  events: ConversationEvent[]
  hasMore: boolean
  lastSeq: number
  receipts: Receipt[]
}
interface Member {
  role: Role
  deliveredSeq: number
  readSeq: number
  /** First seq this member may see. */
  joinedSeq: number
}
/** Groups hold at most this many people (live voice rooms use the same ceiling). */
export const MAX_GROUP_MEMBERS = 50
/** The group ceiling; GROUP_LIMIT raises it only for the fan-out benchmark. */
export const groupLimit = (env: Env) => Math.max(MAX_GROUP_MEMBERS, Number(env.GROUP_LIMIT) || 0)

/** Retry interval for draining the D1 outbox when a flush fails or is pending. */
const FLUSH_RETRY_MS = 2_000
const FLUSH_BATCH = 100
const TYPING_MIN_INTERVAL_MS = 1_000
/** Per-member write limit, as "burst/perSecond"; env WRITE_RATE overrides it. */
const DEFAULT_WRITE_RATE = '30/10'

function parseRate(spec: string | undefined): [number, number] {
  const [burst, perSecond] = (spec ?? DEFAULT_WRITE_RATE).split('/').map(Number)
  return burst! > 0 && perSecond! > 0 ? [burst!, perSecond!] : [30, 10]
}


/**
 * One per conversation. Its SQLite log is authoritative: it assigns seq, acks only after the
 * write, keeps receipt cursors, fans out to members' UserHubs and drains an outbox into D1.
 */
export class ConversationRoom extends DurableObject<Env> {
  private sql: SqlStorage
  private conversationId: string | null = null
  private kind: 'direct' | 'group' = 'direct'
  /** A direct chat between two people where one blocked the other takes no writes. */
  private blocked = false
  private members = new Map<string, Member>()
  private lastSeq = 0
  private flushing: Promise<void> | null = null
  private lastTyping = new Map<string, number>()
  /** Each member's newest message seq: who a receipt can matter to. */
  private lastSent = new Map<string, number>()
  /** When the safety-net alarm is due, as far as this instance knows (null: none set by it). */
  private alarmAt: number | null = null
  /** Replaceable so load tests and benchmarks can lift the per-member limit. */
  limiter: RateLimiter
  /** Injectable clock so time boundaries are testable. */
  now: () => number = () => Date.now()

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    this.limiter = new RateLimiter(...parseRate(env.WRITE_RATE))
    void ctx.blockConcurrencyWhile(async () => {
      migrateRoom(this.sql)
      this.loadState()
    })
  }

  private loadState() {
    const meta = new Map(this.sql.exec<{ key: string; value: string }>('SELECT key, value FROM meta').toArray().map((r) => [r.key, r.value]))
    this.conversationId = meta.get('conversation_id') ?? null
    this.kind = meta.get('kind') === 'group' ? 'group' : 'direct'
    this.blocked = meta.get('blocked') === '1'
    this.members = new Map(
      this.sql
        .exec<{ user_id: string; role: Role; delivered_seq: number; read_seq: number; joined_seq: number }>('SELECT * FROM members')
        .toArray()
        .map((m) => [m.user_id, { role: m.role, deliveredSeq: m.delivered_seq, readSeq: m.read_seq, joinedSeq: m.joined_seq }]),
    )
    this.lastSeq = this.sql.exec<{ s: number | null }>('SELECT max(seq) AS s FROM events').one().s ?? 0
    this.lastSent = new Map(
      this.sql
        .exec<{ sender_id: string; s: number }>(`SELECT sender_id, max(seq) AS s FROM events WHERE type = 'message' GROUP BY sender_id`)
        .toArray()
        .map((r) => [r.sender_id, r.s]),
    )
  }

  /** The first call for a conversation copies its membership from D1, where the Worker created it. */
  private async ensureLoaded(conversationId: string): Promise<RoomResult<null>> {
    if (this.conversationId === conversationId) return ok(null)
    if (this.conversationId !== null) return fail(ErrorCode.NOT_FOUND, 'conversation not found')
    const [conv, people, blockRows] = await this.env.DB.batch<{ kind?: string; user_id?: string; role?: Role; joined_seq?: number; n?: number }>([
      this.env.DB.prepare('SELECT kind FROM conversations WHERE id = ?').bind(conversationId),
      this.env.DB.prepare('SELECT user_id, role, joined_seq FROM members WHERE conversation_id = ?').bind(conversationId),
      this.env.DB.prepare(
        `SELECT count(*) AS n FROM blocks WHERE blocker_id IN (SELECT user_id FROM members WHERE conversation_id = ?1)
           AND blocked_id IN (SELECT user_id FROM members WHERE conversation_id = ?1)`,
      ).bind(conversationId),
    ])
    const kind = conv!.results[0]?.kind
    if (!kind || people!.results.length === 0) return fail(ErrorCode.NOT_FOUND, 'conversation not found')
    // Another call may have loaded it while we awaited D1.
    if (this.conversationId === conversationId) return ok(null)
    const blocked = kind === 'direct' && (blockRows!.results[0]?.n ?? 0) > 0
    this.ctx.storage.transactionSync(() => {
      this.sql.exec(
        `INSERT OR REPLACE INTO meta (key, value) VALUES ('conversation_id', ?), ('kind', ?), ('version', ?), ('blocked', ?)`,
        conversationId, kind, String(ROOM_SCHEMA_VERSION), blocked ? '1' : '0',
      )
      for (const m of people!.results) {
        this.sql.exec('INSERT OR IGNORE INTO members (user_id, role, joined_seq) VALUES (?, ?, ?)', m.user_id!, m.role!, m.joined_seq ?? 0)
      }
    })
    this.loadState()
    return ok(null)
  }

  private async authorize(conversationId: string, userId: string): Promise<RoomResult<Member>> {
    const loaded = await this.ensureLoaded(conversationId)
    if (!loaded.ok) return loaded
    const member = this.members.get(userId)
    return member ? ok(member) : fail(ErrorCode.NOT_MEMBER, 'not a member of this conversation')
  }

  /**
   * Every write: check the actor may, answer a retry with its first ack, then `act`. `act` is
   * synchronous, so nothing interleaves between reading lastSeq and the commit: seq stays gapless.
   */
  private async write(
    conversationId: string,
    actorId: string,
    clientMsgId: string,
    need: 'member' | 'admin' | 'owner',
    act: (member: Member) => RoomResult<Ack>,
  ): Promise<RoomResult<Ack>> {
    const auth = await this.authorizeWrite(conversationId, actorId, clientMsgId)
    if (auth.ok === 'dup') return ok(auth.ack)
    if (!auth.ok) return auth
    if (need !== 'member') {
      if (this.kind !== 'group') return fail(ErrorCode.NOT_ALLOWED, 'only groups have members to manage')
      const allowed = need === 'owner' ? auth.value.role === 'owner' : auth.value.role === 'owner' || auth.value.role === 'admin'
      if (!allowed) return fail(ErrorCode.NOT_ALLOWED, need === 'owner' ? 'only the owner can do that' : 'only admins can do that')
    }
    return act(auth.value)
  }

  /** Members who may write, within their rate; a retry of an acked write is never limited. */
  private async authorizeWrite(conversationId: string, userId: string, clientMsgId: string): Promise<RoomResult<Member> | { ok: 'dup'; ack: Ack }> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const dup = this.findBySender(userId, clientMsgId)
    if (dup) return { ok: 'dup', ack: dup }
    if (this.blocked) return fail(ErrorCode.FORBIDDEN, 'you cannot message this person')
    if (!this.limiter.take(userId, this.now())) return fail(ErrorCode.RATE_LIMITED, 'slow down: too many messages')
    return auth
  }

  private findBySender(senderId: string, clientMsgId: string): Ack | null {
    const row = this.sql
      .exec<{ seq: number; created_at: number }>('SELECT seq, created_at FROM events WHERE sender_id = ? AND client_msg_id = ?', senderId, clientMsgId)
      .toArray()[0]
    return row ? { conversationId: this.conversationId!, clientMsgId, seq: row.seq, serverTs: row.created_at, duplicate: true } : null
  }

  private eventRow(seq: number): EventRow | undefined {
    return this.sql.exec<EventRow>(`SELECT ${EVENT_COLUMNS} FROM events WHERE seq = ?`, seq).toArray()[0]
  }

  /**
   * Appends one event and whatever it changes in earlier rows, in one transaction, then fans out.
   * `touched` are earlier seqs whose D1 copy must be rewritten too.
   */
  private commit(event: ConversationEvent, mutate: () => number[] = () => [], alsoTell: string[] = []): Ack {
    const row = eventToRow(event)
    this.ctx.storage.transactionSync(() => {
      this.sql.exec(
        `INSERT INTO events (${EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        row.seq, row.type, row.sender_id, row.client_msg_id, row.kind, row.body, row.target_seq, row.edited_at, row.recalled_by, row.recalled_by_admin, row.created_at,
      )
      // gen marks which commit queued the row, so a flush in flight never drops a newer change.
      for (const seq of [...mutate(), event.seq]) {
        this.sql.exec('INSERT INTO d1_outbox (seq, gen) VALUES (?, ?) ON CONFLICT (seq) DO UPDATE SET gen = excluded.gen', seq, event.seq)
      }
      // Sending implies having read everything before it.
      this.sql.exec('UPDATE members SET read_seq = ?, delivered_seq = max(delivered_seq, ?) WHERE user_id = ?', event.seq, event.seq, event.senderId)
      this.sql.exec('INSERT OR REPLACE INTO cursor_outbox (user_id, read_seq) VALUES (?, ?)', event.senderId, event.seq)
    })
    this.lastSeq = event.seq
    if (event.type === 'message') this.lastSent.set(event.senderId, event.seq)
    if (event.type === 'member') this.loadState()
    const sender = this.members.get(event.senderId)
    if (sender) {
      sender.readSeq = event.seq
      sender.deliveredSeq = Math.max(sender.deliveredSeq, event.seq)
    }
    this.armFlushAlarm()
    this.fanOut(event, alsoTell)
    this.scheduleFlush()
    return { conversationId: event.conversationId, clientMsgId: event.clientMsgId, seq: event.seq, serverTs: event.serverTs, duplicate: false }
  }

  async appendMessage(conversationId: string, senderId: string, clientMsgId: string, body: unknown): Promise<RoomResult<Ack>> {
    const parsed = MessageBody.safeParse(body)
    if (!parsed.success) return fail(ErrorCode.BAD_REQUEST, parsed.error.issues[0]?.message ?? 'invalid body')
    let message: MessageBody = parsed.data
    const replyTo = message.kind === 'text' ? message.replyTo?.seq : undefined
    if (message.kind !== 'text') {
      // Membership first, so nobody claims an upload into a conversation they are not in.
      const auth = await this.authorize(conversationId, senderId)
      if (!auth.ok) return auth
      if (!this.findBySender(senderId, clientMsgId)) {
        const filled = await this.claimMedia(conversationId, senderId, message)
        if (!filled.ok) return filled
        message = filled.value
      }
    }
    return this.write(conversationId, senderId, clientMsgId, 'member', (member) => {
      if (replyTo !== undefined && (replyTo < member.joinedSeq || this.eventRow(replyTo)?.type !== 'message')) return fail(ErrorCode.BAD_REQUEST, 'replyTo: no such message')
      return ok(this.commit({ type: 'message', conversationId, seq: this.lastSeq + 1, senderId, clientMsgId, serverTs: this.now(), body: message }))
    })
  }

  /**
   * Ties the sender's finished uploads to this conversation (so its members may download them)
   * and fills the body with what the server read from the bytes. Claiming is idempotent for the
   * same conversation, so a retried send works; an upload cannot move to another conversation.
   */
  private async claimMedia(conversationId: string, senderId: string, body: MediaBody): Promise<RoomResult<MediaBody>> {
    const ids = mediaIdsOf(body)
    const claim = this.env.DB.prepare(
      `UPDATE media SET conversation_id = ?1 WHERE id = ?2 AND owner_id = ?3 AND status = 'ready' AND (conversation_id IS NULL OR conversation_id = ?1)`,
    )
    const results = await this.env.DB.batch<{ id: string; kind: string; mime: string; size: number; duration_ms: number | null; width: number | null; height: number | null; conversation_id: string | null; owner_id: string; status: string }>([
      ...ids.map((id) => claim.bind(conversationId, id, senderId)),
      this.env.DB.prepare(`SELECT * FROM media WHERE id IN (${ids.map(() => '?').join(', ')})`).bind(...ids),
    ])
    const rows = new Map(results[results.length - 1]!.results.map((r) => [r.id, r]))
    const want = body.kind === 'file' ? 'file' : body.kind === 'voice' ? 'voice' : 'image'
    for (const id of ids) {
      const r = rows.get(id)
      if (!r || r.owner_id !== senderId || r.status !== 'ready' || r.conversation_id !== conversationId) return fail(ErrorCode.NOT_FOUND, 'no such upload: finish uploading before sending')
      if (r.kind !== want) return fail(ErrorCode.BAD_REQUEST, `a ${body.kind} message needs a ${want} upload`)
    }
    const main = rows.get(body.mediaId)!
    const server = { mime: main.mime, size: main.size }
    switch (body.kind) {
      case 'voice':
        return ok({ ...body, ...server, durationMs: main.duration_ms ?? 0 })
      case 'image':
        return ok({ ...body, ...server, width: main.width ?? undefined, height: main.height ?? undefined })
      case 'file':
        return ok({ ...body, ...server })
    }
  }

  /** A reaction is an event of its own; clients fold it into the message it points at. */
  async react(conversationId: string, userId: string, clientMsgId: string, targetSeq: number, emoji: string, on: boolean): Promise<RoomResult<Ack>> {
    return this.write(conversationId, userId, clientMsgId, 'member', () => {
      const target = this.eventRow(targetSeq)
      if (!target || target.type !== 'message' || target.recalled_by !== null) return fail(ErrorCode.NOT_FOUND, 'no such message')
      return ok(this.commit({ type: 'reaction', conversationId, seq: this.lastSeq + 1, senderId: userId, clientMsgId, serverTs: this.now(), targetSeq, emoji, on }))
    })
  }

  async edit(conversationId: string, userId: string, clientMsgId: string, targetSeq: number, body: unknown): Promise<RoomResult<Ack>> {
    const parsed = TextBody.safeParse(body)
    if (!parsed.success) return fail(ErrorCode.BAD_REQUEST, parsed.error.issues[0]?.message ?? 'invalid body')
    return this.write(conversationId, userId, clientMsgId, 'member', () => {
      const target = this.eventRow(targetSeq)
      if (!target || target.type !== 'message') return fail(ErrorCode.NOT_FOUND, 'no such message')
      if (target.sender_id !== userId) return fail(ErrorCode.NOT_ALLOWED, 'only the sender can edit a message')
      if (target.recalled_by !== null) return fail(ErrorCode.NOT_ALLOWED, 'the message was recalled')
      if (target.kind !== 'text') return fail(ErrorCode.NOT_ALLOWED, 'only text messages can be edited')
      const now = this.now()
      if (now - target.created_at > EDIT_WINDOW_MS) return fail(ErrorCode.TOO_LATE, 'the message is too old to edit')
      const text = JSON.stringify(parsed.data)
      return ok(
        this.commit({ type: 'edit', conversationId, seq: this.lastSeq + 1, senderId: userId, clientMsgId, serverTs: now, targetSeq, body: parsed.data }, () => {
          this.sql.exec('UPDATE events SET body = ?, edited_at = ? WHERE seq = ?', text, now, targetSeq)
          return [targetSeq]
        }),
      )
    })
  }

  /** Erases a message's content from the log (and so from D1 and every device): the sender within the window, or a group admin. */
  async recall(conversationId: string, userId: string, clientMsgId: string, targetSeq: number): Promise<RoomResult<Ack>> {
    return this.write(conversationId, userId, clientMsgId, 'member', (member) => {
      const target = this.eventRow(targetSeq)
      if (!target || target.type !== 'message') return fail(ErrorCode.NOT_FOUND, 'no such message')
      if (target.recalled_by !== null) return fail(ErrorCode.NOT_ALLOWED, 'the message was already recalled')
      const now = this.now()
      const isSender = target.sender_id === userId
      const isModerator = this.kind === 'group' && (member.role === 'owner' || member.role === 'admin')
      if (!isSender && !isModerator) return fail(ErrorCode.NOT_ALLOWED, 'only the sender or a group admin can recall a message')
      if (isSender && !isModerator && now - target.created_at > RECALL_WINDOW_MS) {
        return fail(ErrorCode.TOO_LATE, `messages can be recalled for ${RECALL_WINDOW_MS / 1000} seconds`)
      }
      const byAdmin = !isSender
      return ok(
        this.commit({ type: 'recall', conversationId, seq: this.lastSeq + 1, senderId: userId, clientMsgId, serverTs: now, targetSeq, byAdmin }, () => {
          // The blobs go too: queued here, in the same transaction, and deleted by the flush.
          for (const id of mediaIdsOf(target.body ? (JSON.parse(target.body) as MessageBody) : null)) this.sql.exec('INSERT OR IGNORE INTO media_purge (media_id) VALUES (?)', id)
          this.sql.exec('UPDATE events SET body = NULL, kind = NULL, recalled_by = ?, recalled_by_admin = ? WHERE seq = ?', userId, Number(byAdmin), targetSeq)
          const edits = this.sql.exec<{ seq: number }>(`SELECT seq FROM events WHERE type = 'edit' AND target_seq = ?`, targetSeq).toArray().map((r) => r.seq)
          this.sql.exec(`UPDATE events SET body = NULL WHERE type = 'edit' AND target_seq = ?`, targetSeq)
          return [targetSeq, ...edits]
        }),
      )
    })
  }

  // ---- membership (groups) ----

  async setBlocked(conversationId: string, blocked: boolean): Promise<void> {
    if (!(await this.ensureLoaded(conversationId)).ok) return
    this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('blocked', ?)`, blocked ? '1' : '0')
    this.blocked = blocked
  }


  private memberEvent(conversationId: string, actorId: string, clientMsgId: string, action: MemberEvent['action'], userIds: string[], role?: Role): MemberEvent {
    return { type: 'member', conversationId, seq: this.lastSeq + 1, senderId: actorId, clientMsgId, serverTs: this.now(), action, userIds, ...(role ? { role } : {}) }
  }

  /** Records a new group's first members (already in D1 and loaded) as the log's first event. */
  async announceMembers(conversationId: string, actorId: string, clientMsgId: string): Promise<RoomResult<Ack>> {
    return this.write(conversationId, actorId, clientMsgId, 'owner', () => {
      if (this.lastSeq > 0) return fail(ErrorCode.CONFLICT, 'the group already has history')
      const others = [...this.members.keys()].filter((id) => id !== actorId)
      return ok(this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'added', others)))
    })
  }

  /** Adds people (the Worker has checked they exist and may be added by this actor). */
  async addMembers(conversationId: string, actorId: string, clientMsgId: string, userIds: string[]): Promise<RoomResult<Ack>> {
    return this.write(conversationId, actorId, clientMsgId, 'admin', () => {
      const fresh = [...new Set(userIds)].filter((id) => !this.members.has(id))
      if (fresh.length === 0) return fail(ErrorCode.CONFLICT, 'they are already members')
      if (this.members.size + fresh.length > groupLimit(this.env)) return fail(ErrorCode.NOT_ALLOWED, `a group holds at most ${groupLimit(this.env)} people`)
      const event = this.memberEvent(conversationId, actorId, clientMsgId, 'added', fresh)
      return ok(
        this.commit(event, () => {
          for (const id of fresh) this.sql.exec(`INSERT INTO members (user_id, role, joined_seq) VALUES (?, 'member', ?)`, id, event.seq)
          return []
        }),
      )
    })
  }

  /** An admin removes a member; only the owner removes admins; nobody removes the owner. */
  async removeMember(conversationId: string, actorId: string, clientMsgId: string, targetId: string): Promise<RoomResult<Ack>> {
    return this.write(conversationId, actorId, clientMsgId, 'admin', (member) => {
      const target = this.members.get(targetId)
      if (!target) return fail(ErrorCode.NOT_FOUND, 'not a member')
      if (targetId === actorId) return fail(ErrorCode.BAD_REQUEST, 'use leave to leave a group')
      if (target.role === 'owner' || (target.role === 'admin' && member.role !== 'owner')) {
        return fail(ErrorCode.NOT_ALLOWED, 'only the owner can remove an admin, and nobody can remove the owner')
      }
      return ok(this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'removed', [targetId]), () => this.dropMember(targetId), [targetId]))
    })
  }

  /** Leaving as owner hands the group to the longest-standing admin, else member. */
  async leave(conversationId: string, userId: string, clientMsgId: string): Promise<RoomResult<Ack>> {
    return this.write(conversationId, userId, clientMsgId, 'member', (member) => {
      if (this.kind !== 'group') return fail(ErrorCode.NOT_ALLOWED, 'you can leave groups, not direct chats')
      const ack = this.commit(this.memberEvent(conversationId, userId, clientMsgId, 'left', [userId]), () => this.dropMember(userId), [userId])
      if (member.role === 'owner' && this.members.size > 0) {
        const heir = [...this.members].sort(([, a], [, b]) => (a.role === 'admin' ? 0 : 1) - (b.role === 'admin' ? 0 : 1) || a.joinedSeq - b.joinedSeq)[0]![0]
        this.commit(this.memberEvent(conversationId, userId, `${clientMsgId}:heir`, 'role', [heir], 'owner'), () => this.setRoleRow(heir, 'owner'))
      }
      return ok(ack)
    })
  }

  async setRole(conversationId: string, actorId: string, clientMsgId: string, targetId: string, role: 'admin' | 'member'): Promise<RoomResult<Ack>> {
    return this.write(conversationId, actorId, clientMsgId, 'owner', () => {
      const target = this.members.get(targetId)
      if (!target || targetId === actorId) return fail(ErrorCode.NOT_FOUND, 'not another member')
      return ok(this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'role', [targetId], role), () => this.setRoleRow(targetId, role)))
    })
  }

  /** The owner makes another member owner and becomes an admin. */
  async transferOwnership(conversationId: string, actorId: string, clientMsgId: string, targetId: string): Promise<RoomResult<Ack>> {
    return this.write(conversationId, actorId, clientMsgId, 'owner', () => {
      if (!this.members.has(targetId) || targetId === actorId) return fail(ErrorCode.NOT_FOUND, 'not another member')
      const ack = this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'role', [targetId], 'owner'), () => this.setRoleRow(targetId, 'owner'))
      this.commit(this.memberEvent(conversationId, actorId, `${clientMsgId}:demote`, 'role', [actorId], 'admin'), () => this.setRoleRow(actorId, 'admin'))
      return ok(ack)
    })
  }

  async rename(conversationId: string, actorId: string, clientMsgId: string, title: string): Promise<RoomResult<Ack>> {
    return this.write(conversationId, actorId, clientMsgId, 'admin', () =>
      ok(this.commit({ type: 'renamed', conversationId, seq: this.lastSeq + 1, senderId: actorId, clientMsgId, serverTs: this.now(), title })),
    )
  }

  private dropMember(userId: string): number[] {
    this.sql.exec('DELETE FROM members WHERE user_id = ?', userId)
    this.sql.exec('DELETE FROM cursor_outbox WHERE user_id = ?', userId)
    return []
  }

  private setRoleRow(userId: string, role: Role): number[] {
    this.sql.exec('UPDATE members SET role = ? WHERE user_id = ?', role, userId)
    return []
  }

  /** Moves a member's delivered or read cursor forward (never back); one write per call. */
  async updateCursor(conversationId: string, userId: string, kind: 'delivered' | 'read', seq: number): Promise<RoomResult<Receipt>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const m = auth.value
    const target = Math.min(seq, this.lastSeq)
    const readSeq = kind === 'read' ? Math.max(m.readSeq, target) : m.readSeq
    const deliveredSeq = Math.max(m.deliveredSeq, readSeq, kind === 'delivered' ? target : 0)
    const receipt: Receipt = { userId, deliveredSeq, readSeq }
    if (readSeq === m.readSeq && deliveredSeq === m.deliveredSeq) return ok(receipt)
    const previousRead = m.readSeq
    this.sql.exec('UPDATE members SET delivered_seq = ?, read_seq = ? WHERE user_id = ?', deliveredSeq, readSeq, userId)
    if (readSeq !== m.readSeq) {
      this.sql.exec('INSERT OR REPLACE INTO cursor_outbox (user_id, read_seq) VALUES (?, ?)', userId, readSeq)
      this.scheduleFlush()
    }
    m.deliveredSeq = deliveredSeq
    m.readSeq = readSeq
    // Only people whose ticks can change hear of it (those who wrote after the old cursor), plus
    // the reader's own other devices: in a big group most members never need this receipt.
    for (const memberId of this.members.keys()) {
      if (memberId !== userId && (this.lastSent.get(memberId) ?? 0) <= previousRead) continue
      getUserHub(this.env, memberId)
        .notify({ type: 'receipt', conversationId, receipt })
        .catch((e: unknown) => console.warn('receipt fan-out failed', memberId, String(e)))
    }
    return ok(receipt)
  }

  /** Relays a typing signal to the other members; nothing is stored, repeats within a second are dropped. */
  async typing(conversationId: string, userId: string): Promise<RoomResult<null>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const now = this.now()
    if (this.blocked || now - (this.lastTyping.get(userId) ?? 0) < TYPING_MIN_INTERVAL_MS) return ok(null)
    this.lastTyping.set(userId, now)
    for (const memberId of this.members.keys()) {
      if (memberId === userId) continue
      getUserHub(this.env, memberId)
        .notify({ type: 'typing', conversationId, userId })
        .catch((e: unknown) => console.warn('typing fan-out failed', memberId, String(e)))
    }
    return ok(null)
  }

  private receipts(): Receipt[] {
    return [...this.members].map(([userId, m]) => ({ userId, deliveredSeq: m.deliveredSeq, readSeq: m.readSeq }))
  }

  /** Events after a cursor, oldest first, one page at a time, with every member's cursors. */
  async eventsAfter(conversationId: string, userId: string, afterSeq: number, limit = SYNC_PAGE_LIMIT): Promise<RoomResult<SyncPage>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const n = Math.min(Math.max(1, limit), SYNC_PAGE_LIMIT)
    // History before a member joined stays with the members who were there.
    const from = Math.max(afterSeq, auth.value.joinedSeq - 1)
    const rows = this.sql.exec<EventRow>(`SELECT ${EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, from, n + 1).toArray()
    return ok({
      events: rows.slice(0, n).map((r) => rowToEvent(conversationId, r)),
      hasMore: rows.length > n,
      lastSeq: this.lastSeq,
      receipts: this.receipts(),
    })
  }

  /** One event as it stands now (content erased if recalled), for pushes built at send time. */
  async eventFor(conversationId: string, userId: string, seq: number): Promise<RoomResult<{ event: ConversationEvent | null; receipt: Receipt }>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const row = this.eventRow(seq)
    return ok({ event: row ? rowToEvent(conversationId, row) : null, receipt: { userId, deliveredSeq: auth.value.deliveredSeq, readSeq: auth.value.readSeq } })
  }

  /** Sends to current members, plus `alsoTell` (people just removed, who learn it and nothing after). */
  private fanOut(event: ConversationEvent, alsoTell: string[] = []) {
    for (const userId of new Set([...this.members.keys(), ...alsoTell])) {
      getUserHub(this.env, userId)
        .deliver(userId, event)
        .catch((e: unknown) => console.warn('fan-out failed', userId, String(e)))
    }
  }

  private scheduleFlush() {
    if (this.flushing) return
    this.flushing = this.flushOutbox()
      .catch((e: unknown) => console.warn('D1 flush failed; the alarm retries', String(e)))
      .finally(() => {
        this.flushing = null
      })
  }

  /**
   * Upserts the current state of every outboxed row, and the read cursors that moved, into D1 in
   * one batch, then forgets them in one local transaction: a crash between the two only repeats a
   * write that changes nothing, so each event lands exactly once. One batch per round, not one for
   * events and one for cursors, because locally every commit is a disk sync the room waits behind.
   */
  private async flushOutbox(): Promise<void> {
    const conversationId = this.conversationId
    if (!conversationId) return
    // A failing R2 delete must not hold up history; the alarm retries it.
    await this.purgeMedia().catch((e) => console.warn('media purge failed', String(e)))
    for (;;) {
      const rows = this.sql
        .exec<EventRow & { gen: number }>(
          `SELECT ${EVENT_COLUMNS.split(', ').map((c) => `e.${c}`).join(', ')}, o.gen FROM d1_outbox o JOIN events e ON e.seq = o.seq ORDER BY o.seq LIMIT ?`,
          FLUSH_BATCH,
        )
        .toArray()
      const cursors = this.sql.exec<{ user_id: string; read_seq: number }>('SELECT user_id, read_seq FROM cursor_outbox').toArray()
      if (rows.length === 0 && cursors.length === 0) return
      const upsert = this.env.DB.prepare(
        `INSERT INTO messages (conversation_id, ${EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (conversation_id, seq) DO UPDATE SET kind = excluded.kind, body = excluded.body,
           edited_at = excluded.edited_at, recalled_by = excluded.recalled_by, recalled_by_admin = excluded.recalled_by_admin`,
      )
      const cursor = this.env.DB.prepare('UPDATE members SET read_seq = max(read_seq, ?) WHERE conversation_id = ? AND user_id = ?')
      const newest = rows.length ? rows.reduce((a, b) => (b.seq > a.seq ? b : a)) : null
      await this.env.DB.batch([
        ...rows.map((r) =>
          upsert.bind(conversationId, r.seq, r.type, r.sender_id, r.client_msg_id, r.kind, r.body, r.target_seq, r.edited_at, r.recalled_by, r.recalled_by_admin, r.created_at),
        ),
        ...(newest
          ? [this.env.DB.prepare('UPDATE conversations SET last_seq = max(last_seq, ?), last_activity_at = max(last_activity_at, ?) WHERE id = ?').bind(newest.seq, newest.created_at, conversationId)]
          : []),
        ...rows.flatMap((r) => this.mirrorStatements(conversationId, r)),
        // After the membership mirror, so a new member's row exists for its cursor to land on.
        ...cursors.map((d) => cursor.bind(d.read_seq, conversationId, d.user_id)),
      ])
      // A row or cursor that changed again while D1 was written stays queued.
      for (const r of rows) this.sql.exec('DELETE FROM d1_outbox WHERE seq = ? AND gen = ?', r.seq, r.gen)
      for (const d of cursors) this.sql.exec('DELETE FROM cursor_outbox WHERE user_id = ? AND read_seq = ?', d.user_id, d.read_seq)
    }
  }

  /** D1's copy of membership and title follows the room's current state, so replays converge. */
  private mirrorStatements(conversationId: string, r: EventRow): D1PreparedStatement[] {
    if (r.type === 'renamed') {
      const { title } = JSON.parse(r.body!) as { title: string }
      return [this.env.DB.prepare('UPDATE conversations SET title = ? WHERE id = ?').bind(title, conversationId)]
    }
    if (r.type !== 'member') return []
    const { userIds } = JSON.parse(r.body!) as { userIds: string[] }
    return userIds.map((uid) => {
      const m = this.members.get(uid)
      return m
        ? this.env.DB.prepare(
            `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_seq) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = excluded.role, joined_seq = excluded.joined_seq`,
          ).bind(conversationId, uid, m.role, r.created_at, m.joinedSeq)
        : this.env.DB.prepare('DELETE FROM members WHERE conversation_id = ? AND user_id = ?').bind(conversationId, uid)
    })
  }

  /** Recalled media: the R2 blob goes and D1 forgets it can be downloaded (and its transcript). */
  private async purgeMedia() {
    const ids = this.sql.exec<{ media_id: string }>('SELECT media_id FROM media_purge LIMIT 100').toArray().map((r) => r.media_id)
    if (ids.length === 0) return
    await this.env.MEDIA.delete(ids.map(mediaKey))
    const forget = this.env.DB.prepare(`UPDATE media SET status = 'deleted', transcript = NULL WHERE id = ?`)
    await this.env.DB.batch(ids.map((id) => forget.bind(id)))
    for (const id of ids) this.sql.exec('DELETE FROM media_purge WHERE media_id = ?', id)
  }

  /**
   * The alarm is the safety net that retries the D1 flush after a crash or a D1 failure. One that
   * is already due soon covers this commit too, so a busy room writes the alarm once per interval,
   * not once per message.
   */
  private armFlushAlarm() {
    // Wall time, not the injectable clock: alarms run on the real one.
    const now = Date.now()
    if (this.alarmAt !== null && this.alarmAt > now) return
    this.alarmAt = now + FLUSH_RETRY_MS
    void this.ctx.storage.setAlarm(this.alarmAt)
  }

  override async alarm() {
    this.alarmAt = null
    this.scheduleFlush()
    await this.flushing
    const pending = this.sql.exec<{ n: number }>('SELECT (SELECT count(*) FROM d1_outbox) + (SELECT count(*) FROM cursor_outbox) + (SELECT count(*) FROM media_purge) AS n').one().n
    if (pending > 0) {
      this.alarmAt = Date.now() + FLUSH_RETRY_MS
      await this.ctx.storage.setAlarm(this.alarmAt)
    }
  }

  /** For tests and the monitoring view. */
  async stats() {
    const outbox = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM d1_outbox').one().n
    return { conversationId: this.conversationId, kind: this.kind, lastSeq: this.lastSeq, members: [...this.members.keys()], outbox, receipts: this.receipts() }
  }
}
