import { DurableObject } from 'cloudflare:workers'
import { getUserHub } from '../durable-objects'
import type { Env } from '../env'
import { ErrorCode } from '../shared/errors'
import { MessageBody, SYNC_PAGE_LIMIT, type ConversationEvent, type MessageEvent } from '../shared/protocol'
import { migrateRoom, ROOM_SCHEMA_VERSION } from './room-schema'

export type RoomResult<T> = { ok: true; value: T } | { ok: false; code: ErrorCode; message: string }
export interface Ack {
  conversationId: string
  clientMsgId: string
  seq: number
  serverTs: number
  duplicate: boolean
}

/** Retry interval for draining the D1 outbox when a flush fails or is pending. */
const FLUSH_RETRY_MS = 2_000
const FLUSH_BATCH = 100

interface EventRow extends Record<string, SqlStorageValue> {
  seq: number
  type: string
  sender_id: string
  client_msg_id: string
  body: string
  server_ts: number
}

function rowToEvent(conversationId: string, r: EventRow): ConversationEvent {
  return {
    type: 'message',
    conversationId,
    seq: r.seq,
    senderId: r.sender_id,
    clientMsgId: r.client_msg_id,
    serverTs: r.server_ts,
    body: JSON.parse(r.body) as MessageBody,
  }
}

const err = (code: ErrorCode, message: string) => ({ ok: false, code, message }) as const

/**
 * One per conversation. Its SQLite log is authoritative: it assigns seq, acks only after the
 * write, fans out to members' UserHubs and drains an outbox of events into D1 history.
 */
export class ConversationRoom extends DurableObject<Env> {
  private sql: SqlStorage
  private conversationId: string | null = null
  private members = new Map<string, { role: string }>()
  private lastSeq = 0
  private flushing: Promise<void> | null = null
  /** Injectable clock so time boundaries are testable. */
  now: () => number = () => Date.now()

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    void ctx.blockConcurrencyWhile(async () => {
      migrateRoom(this.sql)
      this.loadState()
    })
  }

  private loadState() {
    const meta = this.sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'conversation_id'`).toArray()[0]
    this.conversationId = meta?.value ?? null
    this.members = new Map(
      this.sql.exec<{ user_id: string; role: string }>('SELECT user_id, role FROM members').toArray().map((m) => [m.user_id, { role: m.role }]),
    )
    this.lastSeq = this.sql.exec<{ s: number | null }>('SELECT max(seq) AS s FROM events').one().s ?? 0
  }

  /** The first call for a conversation copies its membership from D1, where the Worker created it. */
  private async ensureLoaded(conversationId: string): Promise<RoomResult<null>> {
    if (this.conversationId === conversationId) return { ok: true, value: null }
    if (this.conversationId !== null) return err(ErrorCode.NOT_FOUND, 'conversation not found')
    const { results } = await this.env.DB.prepare('SELECT user_id, role FROM members WHERE conversation_id = ?')
      .bind(conversationId)
      .all<{ user_id: string; role: string }>()
    if (results.length === 0) return err(ErrorCode.NOT_FOUND, 'conversation not found')
    // Another call may have loaded it while we awaited D1.
    if (this.conversationId === conversationId) return { ok: true, value: null }
    this.ctx.storage.transactionSync(() => {
      this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('conversation_id', ?), ('version', ?)`, conversationId, String(ROOM_SCHEMA_VERSION))
      for (const m of results) this.sql.exec('INSERT OR IGNORE INTO members (user_id, role) VALUES (?, ?)', m.user_id, m.role)
    })
    this.loadState()
    return { ok: true, value: null }
  }

  private async authorize(conversationId: string, userId: string): Promise<RoomResult<null>> {
    const loaded = await this.ensureLoaded(conversationId)
    if (!loaded.ok) return loaded
    if (!this.members.has(userId)) return err(ErrorCode.NOT_MEMBER, 'not a member of this conversation')
    return loaded
  }

  async appendMessage(conversationId: string, senderId: string, clientMsgId: string, body: unknown): Promise<RoomResult<Ack>> {
    const parsed = MessageBody.safeParse(body)
    if (!parsed.success) return err(ErrorCode.BAD_REQUEST, parsed.error.issues[0]?.message ?? 'invalid body')
    const auth = await this.authorize(conversationId, senderId)
    if (!auth.ok) return auth

    const existing = this.sql
      .exec<{ seq: number; server_ts: number }>('SELECT seq, server_ts FROM events WHERE sender_id = ? AND client_msg_id = ?', senderId, clientMsgId)
      .toArray()[0]
    if (existing) {
      return { ok: true, value: { conversationId, clientMsgId, seq: existing.seq, serverTs: existing.server_ts, duplicate: true } }
    }

    // No await between reading lastSeq and the write, so seq stays gapless and unique.
    const seq = this.lastSeq + 1
    const serverTs = this.now()
    const event: MessageEvent = { type: 'message', conversationId, seq, senderId, clientMsgId, serverTs, body: parsed.data }
    this.ctx.storage.transactionSync(() => {
      this.sql.exec(
        'INSERT INTO events (seq, type, sender_id, client_msg_id, body, server_ts) VALUES (?, ?, ?, ?, ?, ?)',
        seq, event.type, senderId, clientMsgId, JSON.stringify(event.body), serverTs,
      )
      this.sql.exec('INSERT INTO d1_outbox (seq) VALUES (?)', seq)
    })
    this.lastSeq = seq
    await this.ctx.storage.setAlarm(this.now() + FLUSH_RETRY_MS)

    this.fanOut(event)
    this.scheduleFlush()
    return { ok: true, value: { conversationId, clientMsgId, seq, serverTs, duplicate: false } }
  }

  /** Events after a cursor, oldest first, one page at a time. */
  async eventsAfter(conversationId: string, userId: string, afterSeq: number, limit = SYNC_PAGE_LIMIT): Promise<RoomResult<{ events: ConversationEvent[]; hasMore: boolean }>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const n = Math.min(Math.max(1, limit), SYNC_PAGE_LIMIT)
    const rows = this.sql.exec<EventRow>('SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?', afterSeq, n + 1).toArray()
    const hasMore = rows.length > n
    return { ok: true, value: { events: rows.slice(0, n).map((r) => rowToEvent(conversationId, r)), hasMore } }
  }

  async isMember(conversationId: string, userId: string): Promise<boolean> {
    return (await this.authorize(conversationId, userId)).ok
  }

  private fanOut(event: ConversationEvent) {
    for (const userId of this.members.keys()) {
      getUserHub(this.env, userId)
        .deliver(event)
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

  /** Idempotent on (conversation_id, seq): a crash between insert and delete only repeats a no-op. */
  private async flushOutbox(): Promise<void> {
    const conversationId = this.conversationId
    if (!conversationId) return
    for (;;) {
      const rows = this.sql
        .exec<EventRow>('SELECT e.* FROM d1_outbox o JOIN events e ON e.seq = o.seq ORDER BY o.seq LIMIT ?', FLUSH_BATCH)
        .toArray()
      if (rows.length === 0) return
      const insert = this.env.DB.prepare(
        `INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (conversation_id, seq) DO NOTHING`,
      )
      const last = rows[rows.length - 1]!
      await this.env.DB.batch([
        ...rows.map((r) => insert.bind(conversationId, r.seq, r.sender_id, r.client_msg_id, (JSON.parse(r.body) as MessageBody).kind, r.body, r.server_ts)),
        this.env.DB.prepare('UPDATE conversations SET last_seq = max(last_seq, ?), last_activity_at = max(last_activity_at, ?) WHERE id = ?')
          .bind(last.seq, last.server_ts, conversationId),
      ])
      this.sql.exec('DELETE FROM d1_outbox WHERE seq <= ?', last.seq)
    }
  }

  override async alarm() {
    this.scheduleFlush()
    await this.flushing
    const pending = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM d1_outbox').one().n
    if (pending > 0) await this.ctx.storage.setAlarm(this.now() + FLUSH_RETRY_MS)
  }

  /** For tests and monitoring. */
  async stats() {
    const outbox = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM d1_outbox').one().n
    return { conversationId: this.conversationId, lastSeq: this.lastSeq, members: [...this.members.keys()], outbox }
  }
}
