import { DurableObject } from 'cloudflare:workers'
import type { Ack, RoomResult } from '../conversation/ConversationRoom'
import { getConversationRoom, getUserHub } from '../durable-objects'
import type { Env } from '../env'
import { assertNever } from '../shared/assert'
import { APP_CLOSE_CODE, ErrorCode } from '../shared/errors'
import type { PushJob } from '../shared/jobs'
import { ClientMessage, MAX_FRAME_BYTES, PROTOCOL_VERSION, type ConversationEvent, type ServerMessage } from '../shared/protocol'

export interface DeviceAttachment {
  userId: string
  sessionId: string
}

/** Headers the Worker sets after verifying a ticket; never taken from the client. */
export const UPGRADE_HEADERS = {
  userId: 'x-ev-user-id',
  sessionId: 'x-ev-session-id',
  jti: 'x-ev-ticket-jti',
  exp: 'x-ev-ticket-exp',
} as const

/** A device that has not confirmed an event this long after it was sent gets it again. */
export const DELIVERY_TIMEOUT_MS = 5_000
/** Resends before the event is handed to the push queue. */
export const MAX_DELIVERY_RETRIES = 3
/** At most one push job per conversation in this window; later messages wait and coalesce. */
export const PUSH_COALESCE_MS = 2_000
/** A safety valve: entries are consumed within one fan-out, so a map this big has leaked and is dropped. */
const MAX_OWN_WRITES = 1_000

function send(ws: WebSocket, msg: ServerMessage | string) {
  try {
    ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg))
  } catch {
    // The socket closed under us; the device syncs when it reconnects.
  }
}

function errorFrame(code: ErrorCode, message: string, ref?: string): ServerMessage {
  return { type: 'error', code, message, ...(ref ? { ref } : {}) }
}

/**
 * One per user: holds that user's device sockets (hibernating), routes their frames to
 * conversations, receives fan-out, and resends unconfirmed events before falling back to push.
 */
export class UserHub extends DurableObject<Env> {
  private sql: SqlStorage
  /** Per-conversation chains keep one user's writes in the order their frames arrived. */
  private chains = new Map<string, Promise<unknown>>()
  /**
   * Writes in flight, `conversationId clientMsgId` → the session that sent them. That device gets
   * the ack, so its copy of the event is sent but not tracked for resend: tracking would put a
   * storage write (and so a commit the ack waits behind) on every send. The entry lives until the
   * event comes back through deliver(), which may be just after the ack.
   */
  private ownWrites = new Map<string, string>()
  /** Stored once per object lifetime: a write on every delivery would hold every outgoing frame behind a commit. */
  private knownUser: string | null = null
  /** Injectable clock so retry timing is testable. */
  now: () => number = () => Date.now()

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('ping', 'pong'))
    void ctx.blockConcurrencyWhile(async () => {
      this.sql.exec(`
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS used_tickets (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS pending (
          session_id TEXT NOT NULL,
          conversation_id TEXT NOT NULL,
          seq INTEGER NOT NULL,
          event TEXT NOT NULL,
          push INTEGER NOT NULL,
          attempts INTEGER NOT NULL,
          due_at INTEGER NOT NULL,
          PRIMARY KEY (session_id, conversation_id, seq)
        );
        CREATE INDEX IF NOT EXISTS pending_due ON pending (due_at);
        CREATE TABLE IF NOT EXISTS push_outbox (
          conversation_id TEXT PRIMARY KEY,
          sent_at INTEGER NOT NULL,
          waiting_seq INTEGER
        );
      `)
    })
  }

  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get('upgrade') !== 'websocket') return new Response('expected websocket', { status: 426 })
    const userId = request.headers.get(UPGRADE_HEADERS.userId)
    const sessionId = request.headers.get(UPGRADE_HEADERS.sessionId)
    const jti = request.headers.get(UPGRADE_HEADERS.jti)
    const exp = Number(request.headers.get(UPGRADE_HEADERS.exp))
    if (!userId || !sessionId || !jti || !Number.isFinite(exp)) return new Response('bad upgrade', { status: 400 })

    // Single use: a replayed ticket finds its jti already spent.
    this.sql.exec('DELETE FROM used_tickets WHERE exp < ?', Math.floor(Date.now() / 1000))
    if (this.sql.exec('SELECT 1 FROM used_tickets WHERE jti = ?', jti).toArray().length > 0) {
      return Response.json({ error: { code: ErrorCode.UNAUTHORIZED, message: 'ticket already used' } }, { status: 401 })
    }
    this.sql.exec('INSERT INTO used_tickets (jti, exp) VALUES (?, ?)', jti, exp)
    this.rememberUser(userId)

    const wasOffline = this.openSockets().length === 0
    const { 0: client, 1: server } = new WebSocketPair()
    this.ctx.acceptWebSocket(server, [sessionId])
    server.serializeAttachment({ userId, sessionId } satisfies DeviceAttachment)
    send(server, { type: 'hello', protocol: PROTOCOL_VERSION, userId, sessionId })
    if (wasOffline) this.announcePresence(userId, true)
    return new Response(null, { status: 101, webSocket: client })
  }

  override async webSocketMessage(ws: WebSocket, data: string | ArrayBuffer) {
    const device = ws.deserializeAttachment() as DeviceAttachment
    if (typeof data !== 'string') return send(ws, errorFrame(ErrorCode.BAD_REQUEST, 'binary frames are not accepted here'))
    if (data.length > MAX_FRAME_BYTES) return send(ws, errorFrame(ErrorCode.PAYLOAD_TOO_LARGE, `frames are limited to ${MAX_FRAME_BYTES} bytes`))
    let json: unknown
    try {
      json = JSON.parse(data)
    } catch {
      return send(ws, errorFrame(ErrorCode.BAD_REQUEST, 'frame is not valid JSON'))
    }
    const parsed = ClientMessage.safeParse(json)
    if (!parsed.success) {
      const ref = (json as { clientMsgId?: unknown } | null)?.clientMsgId
      const issue = parsed.error.issues[0]
      const message = issue ? `${issue.path.join('.') || 'frame'}: ${issue.message}` : 'invalid frame'
      return send(ws, errorFrame(ErrorCode.BAD_REQUEST, message, typeof ref === 'string' ? ref : undefined))
    }
    await this.handle(ws, device, parsed.data)
  }

  private async handle(ws: WebSocket, device: DeviceAttachment, msg: ClientMessage) {
    const room = getConversationRoom(this.env, msg.conversationId)
    const { userId } = device
    switch (msg.type) {
      case 'send':
        return this.reply(ws, msg.clientMsgId, () => room.appendMessage(msg.conversationId, userId, msg.clientMsgId, msg.body), msg.conversationId)
      case 'edit':
        return this.reply(ws, msg.clientMsgId, () => room.edit(msg.conversationId, userId, msg.clientMsgId, msg.targetSeq, msg.body), msg.conversationId)
      case 'recall':
        return this.reply(ws, msg.clientMsgId, () => room.recall(msg.conversationId, userId, msg.clientMsgId, msg.targetSeq), msg.conversationId)
      case 'react':
        return this.reply(ws, msg.clientMsgId, () => room.react(msg.conversationId, userId, msg.clientMsgId, msg.targetSeq, msg.emoji, msg.on), msg.conversationId)
      case 'delivered':
      case 'read': {
        if (msg.type === 'delivered') this.confirm(device.sessionId, msg.conversationId, msg.seq)
        const result = await room.updateCursor(msg.conversationId, userId, msg.type, msg.seq)
        if (!result.ok) send(ws, errorFrame(result.code, result.message))
        return
      }
      case 'typing': {
        const result = await room.typing(msg.conversationId, userId)
        if (!result.ok) send(ws, errorFrame(result.code, result.message))
        return
      }
      case 'sync': {
        const result = await room.eventsAfter(msg.conversationId, userId, msg.afterSeq, msg.limit)
        if (!result.ok) return send(ws, errorFrame(result.code, result.message))
        return send(ws, { type: 'events', conversationId: msg.conversationId, ...result.value })
      }
      default:
        assertNever(msg)
    }
  }

  private async reply(ws: WebSocket, clientMsgId: string, write: () => Promise<RoomResult<Ack>>, conversationId: string) {
    const key = `${conversationId} ${clientMsgId}`
    // Bounded: an event whose fan-out never arrived must not hold its entry forever.
    if (this.ownWrites.size >= MAX_OWN_WRITES) this.ownWrites.clear()
    this.ownWrites.set(key, (ws.deserializeAttachment() as DeviceAttachment).sessionId)
    const result = await this.inOrder(conversationId, async (): Promise<RoomResult<Ack>> => write()).catch((e: unknown) => {
      this.ownWrites.delete(key)
      throw e
    })
    // A refused write or a repeat of an acked one is not fanned out again: nothing will consume the entry.
    if (!result.ok || result.value.duplicate) this.ownWrites.delete(key)
    if (!result.ok) return send(ws, errorFrame(result.code, result.message, clientMsgId))
    const { seq, serverTs } = result.value
    send(ws, { type: 'ack', conversationId, clientMsgId, seq, serverTs })
  }

  private inOrder<T>(key: string, task: () => Promise<T>): Promise<T> {
    const next = (this.chains.get(key) ?? Promise.resolve()).then(task, task)
    const tail = next.catch(() => undefined)
    this.chains.set(key, tail)
    void tail.then(() => {
      // Only forget the chain if no later task was queued behind this one.
      if (this.chains.get(key) === tail) this.chains.delete(key)
    })
    return next
  }

  /**
   * Fan-out entry point: sends the event to every connected device and tracks it until each
   * confirms. With no device connected, a message from someone else goes to the push queue.
   */
  async deliver(userId: string, event: ConversationEvent): Promise<number> {
    this.rememberUser(userId)
    const sockets = this.ctx.getWebSockets()
    const pushable = event.type === 'message' && event.senderId !== userId
    const ownKey = `${event.conversationId} ${event.clientMsgId}`
    const origin = event.senderId === userId ? this.ownWrites.get(ownKey) : undefined
    if (origin) this.ownWrites.delete(ownKey)
    if (sockets.length === 0) {
      if (pushable) await this.requestPush(userId, [{ conversationId: event.conversationId, seq: event.seq }])
      return 0
    }
    const frame = JSON.stringify({ type: 'event', event } satisfies ServerMessage)
    const due = this.now() + DELIVERY_TIMEOUT_MS
    for (const ws of sockets) {
      send(ws, frame)
      const { sessionId } = ws.deserializeAttachment() as DeviceAttachment
      if (sessionId === origin) continue
      this.sql.exec(
        'INSERT OR REPLACE INTO pending (session_id, conversation_id, seq, event, push, attempts, due_at) VALUES (?, ?, ?, ?, ?, 1, ?)',
        sessionId, event.conversationId, event.seq, frame, Number(pushable), due,
      )
    }
    await this.armAlarm()
    return sockets.length
  }

  /** Transient frames (receipts, later typing and presence): best effort, never retried. */
  async notify(frame: ServerMessage): Promise<void> {
    const text = JSON.stringify(frame)
    for (const ws of this.ctx.getWebSockets()) send(ws, text)
  }

  private confirm(sessionId: string, conversationId: string, seq: number) {
    // Read first: a delete that finds nothing would still be a write every later frame waits behind.
    const any = this.sql.exec('SELECT 1 FROM pending WHERE session_id = ? AND conversation_id = ? AND seq <= ? LIMIT 1', sessionId, conversationId, seq).toArray()
    if (any.length === 0) return
    this.sql.exec('DELETE FROM pending WHERE session_id = ? AND conversation_id = ? AND seq <= ?', sessionId, conversationId, seq)
  }

  /** One alarm serves two timers: device resends and coalesced pushes; it fires at the earlier. */
  private async armAlarm() {
    const resend = this.sql.exec<{ due: number | null }>('SELECT min(due_at) AS due FROM pending').one().due
    const push = this.sql
      .exec<{ due: number | null }>('SELECT min(sent_at) AS due FROM push_outbox WHERE waiting_seq IS NOT NULL')
      .one().due
    const next = Math.min(resend ?? Infinity, push === null ? Infinity : push + PUSH_COALESCE_MS)
    if (next === Infinity) return
    const current = await this.ctx.storage.getAlarm()
    if (current === null || current > next) await this.ctx.storage.setAlarm(next)
  }

  override async alarm() {
    const userId = this.userId()
    if (userId) {
      await this.resendUnconfirmed(userId)
      await this.releaseCoalescedPushes(userId)
    }
    await this.armAlarm()
  }

  private async resendUnconfirmed(userId: string) {
    const now = this.now()
    const due = this.sql
      .exec<{ session_id: string; conversation_id: string; seq: number; event: string; push: number; attempts: number }>(
        'SELECT session_id, conversation_id, seq, event, push, attempts FROM pending WHERE due_at <= ? ORDER BY seq',
        now,
      )
      .toArray()
    const gaveUp: { conversationId: string; seq: number }[] = []
    for (const p of due) {
      const ws = this.ctx.getWebSockets(p.session_id)[0]
      if (ws && p.attempts <= MAX_DELIVERY_RETRIES) {
        send(ws, p.event)
        this.sql.exec('UPDATE pending SET attempts = attempts + 1, due_at = ? WHERE session_id = ? AND conversation_id = ? AND seq = ?',
          now + DELIVERY_TIMEOUT_MS, p.session_id, p.conversation_id, p.seq)
        continue
      }
      this.sql.exec('DELETE FROM pending WHERE session_id = ? AND conversation_id = ? AND seq = ?', p.session_id, p.conversation_id, p.seq)
      if (p.push) gaveUp.push({ conversationId: p.conversation_id, seq: p.seq })
    }
    await this.requestPush(userId, gaveUp)
  }

  /**
   * Pushes the newest message of each conversation: the first at once, later ones at most once per
   * PUSH_COALESCE_MS, so a flood while offline is a few notifications, not one per message.
   */
  private async requestPush(userId: string, items: { conversationId: string; seq: number }[]) {
    const now = this.now()
    const jobs: PushJob[] = []
    for (const { conversationId, seq } of items) {
      const row = this.sql
        .exec<{ sent_at: number; waiting_seq: number | null }>('SELECT sent_at, waiting_seq FROM push_outbox WHERE conversation_id = ?', conversationId)
        .toArray()[0]
      if (row && now - row.sent_at < PUSH_COALESCE_MS) {
        this.sql.exec('UPDATE push_outbox SET waiting_seq = max(coalesce(waiting_seq, 0), ?) WHERE conversation_id = ?', seq, conversationId)
        continue
      }
      this.sql.exec('INSERT OR REPLACE INTO push_outbox (conversation_id, sent_at, waiting_seq) VALUES (?, ?, NULL)', conversationId, now)
      jobs.push({ type: 'push', userId, conversationId, seq })
    }
    await this.enqueuePush(jobs)
    await this.armAlarm()
  }

  private async releaseCoalescedPushes(userId: string) {
    const now = this.now()
    const ready = this.sql
      .exec<{ conversation_id: string; waiting_seq: number }>(
        'SELECT conversation_id, waiting_seq FROM push_outbox WHERE waiting_seq IS NOT NULL AND sent_at <= ?',
        now - PUSH_COALESCE_MS,
      )
      .toArray()
    for (const r of ready) this.sql.exec('UPDATE push_outbox SET sent_at = ?, waiting_seq = NULL WHERE conversation_id = ?', now, r.conversation_id)
    this.sql.exec('DELETE FROM push_outbox WHERE waiting_seq IS NULL AND sent_at <= ?', now - PUSH_COALESCE_MS)
    await this.enqueuePush(ready.map((r) => ({ type: 'push', userId, conversationId: r.conversation_id, seq: r.waiting_seq })))
  }

  private rememberUser(userId: string) {
    if (this.knownUser === userId) return
    this.sql.exec(`INSERT OR IGNORE INTO meta (key, value) VALUES ('user_id', ?)`, userId)
    this.knownUser = userId
  }

  private userId(): string | null {
    const row = this.sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'user_id'`).toArray()[0]
    return row?.value ?? null
  }

  private async enqueuePush(jobs: PushJob[]) {
    if (jobs.length === 0) return
    await this.env.PUSH_QUEUE.sendBatch(jobs.map((body) => ({ body })))
  }

  /** Closes the sockets of a revoked session. */
  async closeSession(sessionId: string): Promise<void> {
    for (const ws of this.ctx.getWebSockets(sessionId)) ws.close(APP_CLOSE_CODE, ErrorCode.UNAUTHORIZED)
  }

  /** For tests and the monitoring view. */
  async stats() {
    const pending = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM pending').one().n
    return { devices: this.ctx.getWebSockets().length, pending }
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string) {
    this.closeDevice(ws, code === 1005 || code === 1006 ? 1000 : code, reason)
  }

  override async webSocketError(ws: WebSocket) {
    this.closeDevice(ws, 1011, 'socket error')
  }

  private closeDevice(ws: WebSocket, code: number, reason: string) {
    try {
      ws.close(code, reason)
    } catch {
      // Already closed.
    }
    const userId = this.userId()
    if (userId && this.openSockets(ws).length === 0) this.announcePresence(userId, false)
  }

  private openSockets(except?: WebSocket): WebSocket[] {
    return this.ctx.getWebSockets().filter((w) => w !== except && w.readyState === WebSocket.OPEN)
  }

  async isOnline(): Promise<boolean> {
    return this.openSockets().length > 0
  }

  /** Tells friends (as the user's privacy setting allows) that the first device came or the last one went. */
  private announcePresence(userId: string, online: boolean) {
    const work = (async () => {
      const now = Date.now()
      if (!online) await this.env.DB.prepare('UPDATE users SET last_seen_at = ? WHERE id = ?').bind(now, userId).run()
      const [me, friends] = await this.env.DB.batch<{ presence_visibility?: string; last_seen_at?: number | null; friend_id?: string }>([
        this.env.DB.prepare('SELECT presence_visibility, last_seen_at FROM users WHERE id = ?').bind(userId),
        this.env.DB.prepare('SELECT friend_id FROM friendships WHERE user_id = ?').bind(userId),
      ])
      if (me!.results[0]?.presence_visibility === 'nobody') return
      const frame: ServerMessage = { type: 'presence', userId, online, lastSeenAt: online ? (me!.results[0]?.last_seen_at ?? null) : now }
      await Promise.all(friends!.results.map((f) => getUserHub(this.env, f.friend_id!).notify(frame)))
    })()
    this.ctx.waitUntil(work.catch((e: unknown) => console.warn('presence fan-out failed', String(e))))
  }
}
