import { DurableObject } from 'cloudflare:workers'
import type { Ack, ConversationRoom, Delivery, DeliveryReply, RoomResult } from '../conversation/ConversationRoom'
import { getCallRoom, getConversationRoom, getUserHub } from '../durable-objects'
import type { Env } from '../env'
import { assertNever } from '../shared/assert'
import { APP_CLOSE_CODE, ErrorCode, errorBody } from '../shared/errors'
import type { PushJob } from '../shared/jobs'
import { ClientMessage, PROTOCOL_VERSION, worthPush, type ConversationEvent, type Presence, type ServerMessage } from '../shared/protocol'
import { parseRate } from '../conversation/rate-limit'
import { DEFAULT_FRAME_RATE, FrameBudget } from '../ws/frame-budget'
import { spendTicket, upgradeClaims } from '../ws/upgrade'
import { errorFrame, parseFrame, send } from '../ws/frames'
import { attachmentOf } from '../ws/attachment'
import { DeliveryTracker } from './delivery-tracker'
import { getPresenceIndex, presenceShardOf, type PresenceIndex } from './PresenceIndex'
import { pool } from '../pool'
import { Metrics } from '../ops/metrics'
import { Counter, Gauge } from '../shared/metrics'

export interface DeviceAttachment {
  userId: string
  sessionId: string
}


export { DELIVERY_TIMEOUT_MS, MAX_DELIVERY_RETRIES } from './delivery-tracker'
/** At most one push job per conversation in this window; later messages wait and coalesce. */
export const PUSH_COALESCE_MS = 2_000
/** Devices' cursor moves reach the rooms this long after the first one, together (a tick shows ~¼ s late). */
const CURSOR_REPORT_MS = 200
/** How often unconfirmed deliveries and waiting pushes are looked at while there are any. */
const TICK_MS = 1_000
/** After a crash the alarm turns what was written down into pushes; it is due this long after the write. */
const RECOVERY_ALARM_MS = 30_000
/** Rooms that hear of this user's sockets for their writer sockets (see writerOpened). */
const MAX_WRITER_ROOMS = 64
/** A connect waits at most this long for writer rooms to learn of the new device. */
const WRITER_ROOMS_WAIT_MS = 500
/** Presence calls to friends' hubs in flight at once. */
const PRESENCE_CONCURRENCY = 8
/** Signed-in devices (sessions) with a socket open at once, and sockets per session (browser tabs). */
export const MAX_DEVICES = 10
export const MAX_SOCKETS_PER_DEVICE = 5
/** A sync answers with up to SYNC_PAGE_BYTES: it costs this many frames of the socket's budget. */
const SYNC_COST = 3

type Room = DurableObjectStub<ConversationRoom>

const sessionOf = (ws: WebSocket) => attachmentOf<DeviceAttachment>(ws).sessionId

/** Bumped when the hub's SQLite layout changes. */
const HUB_SCHEMA_VERSION = 2

function migrateHub(sql: SqlStorage) {
  try {
    if (sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'schema'`).toArray()[0]?.value === String(HUB_SCHEMA_VERSION)) return
  } catch {
    // A new hub: no meta table yet.
  }
  sql.exec(`
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS used_tickets (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL);
    -- Deliveries still unconfirmed a second after they went out, written once per tick, so that
    -- after a crash the alarm still turns them into pushes.
    CREATE TABLE IF NOT EXISTS unconfirmed (
      session_id TEXT NOT NULL,
      conversation_id TEXT NOT NULL,
      push_seq INTEGER NOT NULL,
      PRIMARY KEY (session_id, conversation_id)
    );
    CREATE TABLE IF NOT EXISTS push_outbox (
      conversation_id TEXT PRIMARY KEY,
      sent_at INTEGER NOT NULL,
      waiting_seq INTEGER
    );
    CREATE TABLE IF NOT EXISTS watchers (user_id TEXT PRIMARY KEY);
  `)
  // Version 1 kept a row per event and device; what it owed becomes a push after a crash.
  if (sql.exec(`SELECT 1 FROM sqlite_master WHERE name = 'pending'`).toArray().length > 0) {
    sql.exec(`INSERT OR REPLACE INTO unconfirmed (session_id, conversation_id, push_seq)
      SELECT session_id, conversation_id, max(CASE WHEN push = 1 THEN seq ELSE 0 END) FROM pending GROUP BY session_id, conversation_id`)
    sql.exec('DROP TABLE pending')
  }
  sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)`, String(HUB_SCHEMA_VERSION))
}

/**
 * One per user: holds that user's device sockets (hibernating), routes their frames to
 * conversations, receives fan-out, resends what devices do not confirm, then falls back to push.
 * Delivery state is cursors in memory (see DeliveryTracker); nothing is written per event.
 */
export class UserHub extends DurableObject<Env> {
  private sql: SqlStorage
  /** One stub per conversation: calls on one stub arrive in the order they were made (E-order). */
  private rooms = new Map<string, Room>()
  private tracker = new DeliveryTracker()
  /** Cursor moves waiting to be reported, by conversation; `ws` hears of a refusal. */
  private reports = new Map<string, { delivered: number | null; read: number | null; ws: WebSocket }>()
  private reportTimer: ReturnType<typeof setTimeout> | null = null
  private tickTimer: ReturnType<typeof setTimeout> | null = null
  /** Sessions whose chat socket is being accepted (rooms are being told of it). */
  private connecting: string[] = []
  /** Push coalescing per conversation: when the last push went, and the newest seq waiting for the next. */
  private pushes = new Map<string, { sentAt: number; waitingSeq: number | null; stored: boolean }>()
  private pushesDirty = new Set<string>()
  /** Rooms told that no device is online, so they stop calling until told otherwise; in storage (key `away_rooms`), since the hub may be evicted meanwhile. */
  private awayRooms: Set<string> | null = null
  private recoveryAlarmSet = false
  private knownUser: string | null = null
  /** Friends to tell when this user goes offline (online friends who said hello); mirrored in storage, since hibernation empties memory. */
  private watchers: Set<string> | null = null
  private visible: boolean | null = null
  private budget: FrameBudget
  /** Rooms holding writer sockets of this user, newest last; mirrored in storage (`writer_rooms`). */
  private writerRooms: string[] | null = null
  /** Orders this hub's reports of its sockets to rooms (wall-clock based, so it grows across instances). */
  private socketsVersion = 0
  /** Injectable clock so retry timing is testable. */
  now: () => number = () => Date.now()
  /** Deliveries this instance took (tests count what a message costs). */
  deliveries = 0
  /** Fan-out calls from rooms (a call may carry several events). */
  deliverCalls = 0
  /** Presence hellos this instance answered (tests check that offline friends are not woken). */
  presenceHellos = 0
  private presenceStub: DurableObjectStub<PresenceIndex> | null = null
  /** Push jobs this instance queued (tests count them). */
  pushJobs = 0
  /** Bumped by every pushChanged(): a D1 read that began before it must not overwrite what it said. */
  private pushEpoch = 0
  readonly metrics: Metrics

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('ping', 'pong'))
    // Synchronous, and one read when the layout is current: a hub wakes for every message of a
    // big group its user is in, so waking must cost next to nothing.
    migrateHub(this.sql)
    this.budget = new FrameBudget(parseRate(env.FRAME_RATE, DEFAULT_FRAME_RATE))
    // A hub is awake a second after each delivery anyway (its tick); 2 s of quiet adds little to that.
    this.metrics = new Metrics(env, `hub:${ctx.id.toString()}`, { quietMs: 2_000 })
    // A new instance (after hibernation) reports its sockets, which refreshes the shard's row.
    if (ctx.getWebSockets().length > 0) this.reportSockets()
  }

  /** Spends `cost` of this socket's frame budget; false when the frame is dropped (see FrameBudget). */
  private spend(ws: WebSocket, cost: number, ref?: string, alwaysTell = false): boolean {
    const verdict = this.budget.spend(ws, cost, Date.now(), alwaysTell)
    if (verdict === 'ok') return true
    this.metrics.count(Counter.rateLimited, 'socket')
    if (verdict === 'close') ws.close(APP_CLOSE_CODE, ErrorCode.RATE_LIMITED)
    // One refusal a second is enough to slow a client down (its unanswered writes are retried).
    if (verdict === 'tell') send(ws, errorFrame(ErrorCode.RATE_LIMITED, 'too many frames: slow down', ref))
    return false
  }

  private room(conversationId: string): Room {
    let stub = this.rooms.get(conversationId)
    if (!stub) this.rooms.set(conversationId, (stub = getConversationRoom(this.env, conversationId)))
    return stub
  }

  // ---- sockets ----

  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get('upgrade') !== 'websocket') return new Response('expected websocket', { status: 426 })
    const claims = upgradeClaims(request)
    if (!claims) return new Response('bad upgrade', { status: 400 })
    const { userId, sessionId } = claims
    // Single use: a replayed ticket finds its jti already spent.
    if (!spendTicket(this.sql, claims.jti, claims.exp)) return Response.json(errorBody(ErrorCode.UNAUTHORIZED, 'ticket already used'), { status: 401 })
    this.rememberUser(userId)

    const open = this.openSockets()
    const devices = new Set(open.map(sessionOf))
    if (!devices.has(sessionId) && devices.size >= MAX_DEVICES) {
      return Response.json(errorBody(ErrorCode.RATE_LIMITED, `at most ${MAX_DEVICES} devices can be connected at once; sign one out`), { status: 429 })
    }
    if (open.filter((ws) => sessionOf(ws) === sessionId).length >= MAX_SOCKETS_PER_DEVICE) {
      return Response.json(errorBody(ErrorCode.RATE_LIMITED, `at most ${MAX_SOCKETS_PER_DEVICE} connections per device`), { status: 429 })
    }
    const wasOffline = open.length === 0
    // A room that asks for this user's sockets meanwhile (writerOpened) must hear of this one too.
    this.connecting.push(sessionId)
    try {
      if (wasOffline) {
        // No device was online, so rooms were told of none, and none gives this user events
        // straight (that needs a reported socket); after a restart or a deploy, telling the list
        // would wake every room in it for nothing, and keeping it would wake them all at the next
        // disconnect. A room that still holds a writer socket asks again within WRITER_PEERS_TTL_MS.
        this.forgetWriterRooms()
      } else {
        // Rooms where this user has writer sockets must know of the new device before it syncs,
        // or it could miss events meanwhile (a gap it sees later heals it too).
        await this.tellWriterRooms([...open.map(sessionOf), sessionId], WRITER_ROOMS_WAIT_MS)
      }
    } finally {
      this.connecting.splice(this.connecting.indexOf(sessionId), 1)
    }
    const { 0: client, 1: server } = new WebSocketPair()
    this.ctx.acceptWebSocket(server, [sessionId])
    server.serializeAttachment({ userId, sessionId } satisfies DeviceAttachment)
    send(server, { type: 'hello', protocol: PROTOCOL_VERSION, userId, sessionId })
    this.reportSockets()
    if (wasOffline) {
      this.ctx.waitUntil(this.announceOnline(userId).catch((e: unknown) => console.warn('presence fan-out failed', String(e))))
      this.ctx.waitUntil(this.backInRooms(userId).catch((e: unknown) => console.warn('rooms not told of the return', String(e))))
    }
    return new Response(null, { status: 101, webSocket: client })
  }

  override async webSocketMessage(ws: WebSocket, data: string | ArrayBuffer) {
    const device = attachmentOf<DeviceAttachment>(ws)
    const parsed = parseFrame(ClientMessage, data)
    if (!parsed.ok) {
      this.metrics.count(Counter.messagesRefused, parsed.error.code)
      if (this.spend(ws, 1)) send(ws, parsed.error)
      return
    }
    const msg = parsed.msg
    // A sync answers with up to SYNC_PAGE_BYTES: it costs more of the budget than a send.
    if (!this.spend(ws, msg.type === 'sync' ? SYNC_COST : 1, 'clientMsgId' in msg ? msg.clientMsgId : undefined, msg.type === 'sync')) return
    // No await before the room call: frames reach the room in the order they arrived here.
    await this.handle(ws, device, msg, Date.now())
  }

  private async handle(ws: WebSocket, device: DeviceAttachment, msg: ClientMessage, arrivedAt: number) {
    const { userId } = device
    switch (msg.type) {
      case 'send':
        return this.reply(ws, msg.conversationId, msg.clientMsgId, this.room(msg.conversationId).appendMessage(msg.conversationId, userId, msg.clientMsgId, msg.body, 'hub'), arrivedAt)
      case 'edit':
        return this.reply(ws, msg.conversationId, msg.clientMsgId, this.room(msg.conversationId).edit(msg.conversationId, userId, msg.clientMsgId, msg.targetSeq, msg.body, 'hub'))
      case 'recall':
        return this.reply(ws, msg.conversationId, msg.clientMsgId, this.room(msg.conversationId).recall(msg.conversationId, userId, msg.clientMsgId, msg.targetSeq, 'hub'))
      case 'react':
        return this.reply(ws, msg.conversationId, msg.clientMsgId, this.room(msg.conversationId).react(msg.conversationId, userId, msg.clientMsgId, msg.targetSeq, msg.emoji, msg.on, 'hub'))
      case 'delivered':
      case 'read':
        this.tracker.confirm(device.sessionId, msg.conversationId, msg.seq, this.now())
        return this.queueReport(ws, msg.conversationId, msg.type, msg.seq)
      case 'typing': {
        const result = await this.room(msg.conversationId).typing(msg.conversationId, userId)
        if (!result.ok) send(ws, errorFrame(result.code, result.message))
        return
      }
      case 'sync': {
        const result = await this.room(msg.conversationId).eventsAfter(msg.conversationId, userId, msg.afterSeq, msg.limit)
        if (!result.ok) return send(ws, errorFrame(result.code, result.message))
        return send(ws, { type: 'events', conversationId: msg.conversationId, ...result.value })
      }
      case 'call-start': {
        const r = await getCallRoom(this.env, msg.callId).start(msg.conversationId, userId, device.sessionId, msg.callId, msg.video)
        return r.ok ? send(ws, { type: 'call-update', call: r.value }) : send(ws, errorFrame(r.code, r.message, msg.callId))
      }
      case 'call-accept':
      case 'call-decline':
      case 'call-hangup':
      case 'call-media':
      case 'call-signal': {
        const call = getCallRoom(this.env, msg.callId)
        const r =
          msg.type === 'call-accept' ? await call.accept(userId, device.sessionId)
          : msg.type === 'call-decline' ? await call.decline(userId, device.sessionId)
          : msg.type === 'call-hangup' ? await call.hangup(userId, device.sessionId)
          : msg.type === 'call-media' ? await call.media(userId, device.sessionId, msg.audio, msg.video)
          : await call.signal(userId, device.sessionId, msg.toSession, msg.data)
        if (!r.ok) send(ws, errorFrame(r.code, r.message, msg.callId))
        return
      }
      default:
        assertNever(msg)
    }
  }

  // ---- calls ----

  /** The call this user is in (on any device), so a second caller hears "busy". */
  async activeCall(): Promise<string | null> {
    const callId = this.ctx.storage.kv.get<string>('active_call') ?? null
    if (!callId) return null
    // The mark outlives a call that never ended cleanly (a crash): ask the call itself.
    const userId = this.knownUser ?? this.userId()
    if (userId && (await getCallRoom(this.env, callId).isIn(userId))) return callId
    this.ctx.storage.kv.delete('active_call')
    return null
  }

  /** Marks the user in a call, or out of it (only out of `onlyIf` when given, so a late end cannot clear a newer call). */
  async setActiveCall(callId: string | null, onlyIf?: string): Promise<void> {
    if (callId === null && onlyIf && this.ctx.storage.kv.get<string>('active_call') !== onlyIf) return
    if (callId === null) this.ctx.storage.kv.delete('active_call')
    else this.ctx.storage.kv.put('active_call', callId)
  }

  /**
   * Answers a write with its ack, then shows the new event on every device of this user (the room
   * leaves the writer's own devices to this hub). The sending device has the ack, so only the
   * others wait for a confirmation.
   */
  private async reply(ws: WebSocket, conversationId: string, clientMsgId: string, write: Promise<RoomResult<Ack>>, sentAt?: number) {
    let result: RoomResult<Ack>
    try {
      result = await write
    } catch (e) {
      // A broken stub stays broken: the next frame gets a fresh one.
      this.rooms.delete(conversationId)
      throw e
    }
    if (!result.ok) return send(ws, errorFrame(result.code, result.message, clientMsgId))
    const { seq, serverTs, event, receipts } = result.value
    send(ws, { type: 'ack', conversationId, clientMsgId, seq, serverTs })
    // A retry answered from the log says nothing about how long a write takes.
    if (sentAt !== undefined && !result.value.duplicate) this.metrics.observeSendAck(Date.now() - sentAt)
    if (event) this.show(event, ws, attachmentOf<DeviceAttachment>(ws).userId)
    if (receipts) void this.notify({ type: 'receipts', conversationId, receipts })
  }

  /**
   * Sends an event to this user's devices and tracks it until each confirms. The device that wrote
   * it (`origin`) has the ack: a text message it builds from its outbox, so that one is not echoed;
   * everything else it gets (media bodies the server filled in, edits, recalls, reactions).
   */
  private show(event: ConversationEvent, origin: WebSocket | null, userId: string, frame = JSON.stringify({ type: 'event', event } satisfies ServerMessage), skipSession?: string, open = this.openSockets()) {
    const pushable = event.type === 'message' && event.senderId !== userId
    const originNeedsIt = !(event.type === 'message' && event.body?.kind === 'text')
    const now = this.now()
    let sent = 0
    for (const ws of open) {
      if (skipSession !== undefined && sessionOf(ws) === skipSession) continue
      if (ws === origin) {
        if (originNeedsIt) send(ws, frame)
        continue
      }
      send(ws, frame)
      sent++
      this.tracker.sent(sessionOf(ws), event.conversationId, event.seq, pushable, now)
    }
    this.metrics.count(Counter.deliveries, undefined, sent)
    this.ensureTick()
  }

  /**
   * Fan-out entry point: events of one conversation, in seq order (a busy room sends what queued up
   * together in one call). Connected devices get them at once; with none connected, a message from
   * someone else goes to the push queue (coalesced per conversation). Each `frame` is the event
   * frame the room serialised once for every member. `skipSession`: the device that wrote it on a
   * writer socket, which has the ack.
   */
  async deliver(userId: string, deliveries: Delivery[]): Promise<DeliveryReply> {
    const conversationId = deliveries[0]?.meta.conversationId
    if (conversationId === undefined) return null
    this.deliveries += deliveries.length
    this.deliverCalls++
    this.rememberUser(userId)
    const open = this.openSockets()
    if (open.length === 0) {
      let pushSeq = 0
      for (const { meta } of deliveries) if (worthPush(meta, userId)) pushSeq = Math.max(pushSeq, meta.seq)
      if (pushSeq > 0) this.requestPush(conversationId, pushSeq)
      this.noteAway(conversationId)
      return { away: true }
    }
    for (const { meta, frame, skipSession } of deliveries) this.show(meta as ConversationEvent, null, userId, frame, skipSession, open)
    // A waiting delivery confirmation for this conversation goes back with the answer (a read
    // waits for its own report: the user's other devices hear of it from that one).
    const report = this.reports.get(conversationId)
    if (report?.delivered == null || report.read !== null) return null
    this.reports.delete(conversationId)
    return { delivered: report.delivered }
  }

  /**
   * A room's events that went straight to this user's writer sockets (an open chat) and were not
   * confirmed there in time: tracked from when they were sent, resent on the chat socket from the
   * room's log, then pushed, like the hub's own deliveries.
   */
  async owed(userId: string, conversationId: string, items: { sessionId: string; confirmed: number; sent: number; pushSeq: number; since: number }[], closed = false): Promise<void> {
    this.rememberUser(userId)
    // A writer socket that closed owing events (a chat switched while they were on the way): its
    // tab still shows the list, so they come again at the next tick, not a timeout later.
    for (const o of items) this.tracker.owe(o.sessionId, conversationId, o.confirmed, o.sent, o.pushSeq, o.since, closed ? this.now() : undefined)
    this.ensureTick()
  }

  /**
   * Transient frames (typing, presence, a room's gathered receipts, calls): best effort, never
   * retried. To every device, one device (`only`), or all but one (`except`).
   */
  async notify(frame: ServerMessage, to: { only?: string; except?: string } = {}): Promise<void> {
    const text = JSON.stringify(frame)
    for (const ws of this.openSockets()) {
      const session = sessionOf(ws)
      if ((to.only && session !== to.only) || (to.except && session === to.except)) continue
      send(ws, text)
    }
  }

  // ---- cursors: devices → rooms, batched ----

  private queueReport(ws: WebSocket, conversationId: string, kind: 'delivered' | 'read', seq: number) {
    const r = this.reports.get(conversationId) ?? { delivered: null, read: null, ws }
    r.ws = ws
    if (kind === 'read') r.read = Math.max(r.read ?? 0, seq)
    else r.delivered = Math.max(r.delivered ?? 0, seq)
    this.reports.set(conversationId, r)
    this.reportTimer ??= setTimeout(() => this.sendReports(), CURSOR_REPORT_MS)
  }

  /** One call per conversation per report tick, whatever the number of confirmations. */
  private sendReports() {
    this.reportTimer = null
    const userId = this.knownUser ?? this.userId()
    if (!userId) return
    for (const [conversationId, r] of this.reports) {
      this.room(conversationId)
        .moveCursors(conversationId, userId, r.delivered, r.read)
        .then((result) => {
          if (!result.ok) return send(r.ws, errorFrame(result.code, result.message))
          // The user's own devices follow a read cursor (unread badges); the room tells the senders.
          if (result.value.readMoved) void this.notify({ type: 'receipt', conversationId, receipt: result.value.receipt })
        })
        .catch((e: unknown) => {
          this.rooms.delete(conversationId)
          console.warn('cursor report failed', conversationId, String(e))
        })
    }
    this.reports.clear()
  }

  // ---- rooms that stopped calling while no device was online ----

  private storedAwayRooms(): Set<string> {
    return new Set(this.ctx.storage.kv.get<string[]>('away_rooms') ?? [])
  }

  private noteAway(conversationId: string) {
    const rooms = (this.awayRooms ??= this.storedAwayRooms())
    if (rooms.has(conversationId)) return
    rooms.add(conversationId)
    // One write per conversation per absence, not per event.
    this.ctx.storage.kv.put('away_rooms', [...rooms])
  }

  /** A device is online again: every room that stopped calling calls again (and hands over the newest event it held back). */
  private async backInRooms(userId: string) {
    const rooms = this.awayRooms ?? this.storedAwayRooms()
    this.awayRooms = new Set()
    if (rooms.size === 0) return
    this.ctx.storage.kv.delete('away_rooms')
    await pool([...rooms], PRESENCE_CONCURRENCY, (conversationId) => this.room(conversationId).back(conversationId, userId))
  }

  // ---- resends and pushes ----

  private ensureTick() {
    if (this.tickTimer || (this.tracker.size === 0 && this.pushesWaiting() === 0)) return
    this.tickTimer = setTimeout(() => {
      this.tickTimer = null
      void this.tick().finally(() => this.ensureTick())
    }, TICK_MS)
  }

  private pushesWaiting(): number {
    let n = 0
    for (const p of this.pushes.values()) if (p.waitingSeq !== null) n++
    return n
  }

  /**
   * Resends what devices have not confirmed (read from the room's log as it is now, so a recalled
   * message stays recalled), pushes what they still did not confirm after MAX_DELIVERY_RETRIES
   * resends, releases coalesced pushes, and writes down — once per tick — what a crash must not
   * forget. Public so tests can drive it with an injected clock.
   */
  async tick(): Promise<void> {
    const userId = this.knownUser ?? this.userId()
    if (!userId) return
    const now = this.now()
    const open = new Set(this.openSockets().map(sessionOf))
    const { resend, push } = this.tracker.due(now, (session) => open.has(session))
    for (const p of push) this.requestPush(p.conversationId, p.seq)
    this.releasePushes(now)
    this.persist(now)
    await Promise.all(resend.map((r) => this.resend(userId, r.sessionId, r.conversationId, r.afterSeq)))
  }

  /** Resends to every tab of the device: one tab's confirmation settles the device, so each must have had the chance. */
  private async resend(userId: string, sessionId: string, conversationId: string, afterSeq: number) {
    if (!this.ctx.getWebSockets(sessionId).some((ws) => ws.readyState === WebSocket.OPEN)) return
    const page = await this.room(conversationId).eventsAfter(conversationId, userId, afterSeq)
    if (!page.ok) return this.tracker.forget(sessionId, conversationId)
    const frames = page.value.events.map((event) => JSON.stringify({ type: 'event', event } satisfies ServerMessage))
    const tabs = this.ctx.getWebSockets(sessionId).filter((ws) => ws.readyState === WebSocket.OPEN)
    for (const ws of tabs) for (const frame of frames) send(ws, frame)
    this.metrics.count(Counter.resends, undefined, page.value.events.length)
  }

  /** Pushes the newest message of each conversation: the first at once, later ones at most once per PUSH_COALESCE_MS. */
  private requestPush(conversationId: string, seq: number) {
    const now = this.now()
    const p = this.pushes.get(conversationId)
    if (p && now - p.sentAt < PUSH_COALESCE_MS) {
      p.waitingSeq = Math.max(p.waitingSeq ?? 0, seq)
      this.pushesDirty.add(conversationId)
      this.ensureTick()
      return
    }
    this.pushes.set(conversationId, { sentAt: now, waitingSeq: null, stored: p?.stored ?? false })
    this.enqueuePush([{ conversationId, seq }])
  }

  private releasePushes(now: number) {
    const ready: { conversationId: string; seq: number }[] = []
    for (const [conversationId, p] of this.pushes) {
      if (now - p.sentAt < PUSH_COALESCE_MS) continue
      if (p.waitingSeq !== null) {
        ready.push({ conversationId, seq: p.waitingSeq })
        p.sentAt = now
        p.waitingSeq = null
      } else {
        this.pushes.delete(conversationId)
      }
      this.pushesDirty.add(conversationId)
    }
    this.enqueuePush(ready)
  }

  private enqueuePush(items: { conversationId: string; seq: number }[]) {
    const userId = this.knownUser ?? this.userId()
    if (!userId || items.length === 0) return
    const jobs: PushJob[] = items.map(({ conversationId, seq }) => ({ type: 'push', userId, conversationId, seq }))
    this.ctx.waitUntil(
      (async () => {
        if (!(await this.pushable(userId))) return
        this.pushJobs += jobs.length
        await this.env.PUSH_QUEUE.sendBatch(jobs.map((body) => ({ body })))
      })().catch((e: unknown) => console.warn('push enqueue failed', String(e))),
    )
  }

  /**
   * Whether the user has a push endpoint, kept in storage (`pushable`; absent: not known, one D1
   * read). Most people offline at a given moment have none, and a job for them would cost a queue
   * message and a D1 read in the consumer for nothing. Only wrong on the safe side: the route that
   * adds an endpoint says so before it answers; removals reach here when a job finds none.
   */
  private async pushable(userId: string): Promise<boolean> {
    const known = this.ctx.storage.kv.get<boolean>('pushable')
    if (known !== undefined) return known
    const epoch = this.pushEpoch
    const row = await this.env.DB.prepare('SELECT 1 FROM push_subscriptions WHERE user_id = ? LIMIT 1').bind(userId).first()
    if (epoch === this.pushEpoch) this.ctx.storage.kv.put('pushable', row !== null)
    return row !== null || this.ctx.storage.kv.get<boolean>('pushable') === true
  }

  /** The user's endpoints changed: true, one was added (the route waits for this); null, look again in D1 next time. */
  async pushChanged(has: true | null): Promise<void> {
    this.pushEpoch++
    if (has) this.ctx.storage.kv.put('pushable', true)
    else this.ctx.storage.kv.delete('pushable')
  }

  /**
   * Writes down what a crash must not lose, once per tick and only when it changed: deliveries
   * unconfirmed for over a second (they become pushes) and pushes waiting in the coalescing window.
   * A device that confirms within the second costs no write at all.
   */
  private persist(now: number) {
    const { upsert, remove } = this.tracker.toPersist(now)
    let wrote = false
    for (const r of upsert) {
      this.sql.exec('INSERT OR REPLACE INTO unconfirmed (session_id, conversation_id, push_seq) VALUES (?, ?, ?)', r.sessionId, r.conversationId, r.pushSeq)
      wrote = true
    }
    for (const r of remove) {
      this.sql.exec('DELETE FROM unconfirmed WHERE session_id = ? AND conversation_id = ?', r.sessionId, r.conversationId)
    }
    for (const conversationId of this.pushesDirty) {
      const p = this.pushes.get(conversationId)
      if (p?.waitingSeq != null) {
        this.sql.exec('INSERT OR REPLACE INTO push_outbox (conversation_id, sent_at, waiting_seq) VALUES (?, ?, ?)', conversationId, p.sentAt, p.waitingSeq)
        p.stored = true
        wrote = true
      } else if (p?.stored !== false) {
        this.sql.exec('DELETE FROM push_outbox WHERE conversation_id = ?', conversationId)
        if (p) p.stored = false
      }
    }
    this.pushesDirty.clear()
    if (wrote && !this.recoveryAlarmSet) {
      this.recoveryAlarmSet = true
      void this.ctx.storage.setAlarm(Date.now() + RECOVERY_ALARM_MS)
    }
  }

  /**
   * After a crash (or an eviction) memory is empty but storage still holds what was owed: pushes
   * for it. While the object lives, the tick does the work and the alarm finds it done.
   */
  override async alarm() {
    this.recoveryAlarmSet = false
    const userId = this.knownUser ?? this.userId()
    if (!userId) return
    const now = this.now()
    const open = new Set(this.openSockets().map(sessionOf))
    for (const r of this.sql.exec<{ session_id: string; conversation_id: string; push_seq: number }>('SELECT * FROM unconfirmed').toArray()) {
      if (this.tracker.has(r.session_id, r.conversation_id) || open.has(r.session_id)) continue
      if (r.push_seq > 0) this.requestPush(r.conversation_id, r.push_seq)
      this.sql.exec('DELETE FROM unconfirmed WHERE session_id = ? AND conversation_id = ?', r.session_id, r.conversation_id)
    }
    for (const r of this.sql.exec<{ conversation_id: string; sent_at: number; waiting_seq: number | null }>('SELECT * FROM push_outbox').toArray()) {
      if (this.pushes.has(r.conversation_id)) continue
      this.pushes.set(r.conversation_id, { sentAt: r.sent_at, waitingSeq: r.waiting_seq, stored: true })
    }
    this.releasePushes(now)
    this.persist(now)
    this.ensureTick()
    const left = this.sql.exec<{ n: number }>('SELECT (SELECT count(*) FROM unconfirmed) + (SELECT count(*) FROM push_outbox) AS n').one().n
    if (left > 0 && !this.recoveryAlarmSet) {
      this.recoveryAlarmSet = true
      await this.ctx.storage.setAlarm(Date.now() + RECOVERY_ALARM_MS)
    }
  }

  private rememberUser(userId: string) {
    if (this.knownUser === userId) return
    // Read first: a write on every wake would be a commit that frames wait behind.
    if (this.userId() !== userId) this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('user_id', ?)`, userId)
    this.knownUser = userId
  }

  private userId(): string | null {
    const row = this.sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'user_id'`).toArray()[0]
    return row?.value ?? null
  }

  /** Closes every socket of this user (a suspension); `reason` tells the client why. */
  async closeAll(reason: ErrorCode): Promise<void> {
    for (const ws of this.ctx.getWebSockets()) ws.close(APP_CLOSE_CODE, reason)
    await this.closeWriters(null, reason)
  }

  /** Closes the sockets of a revoked session, its writer sockets in rooms included. */
  async closeSession(sessionId: string): Promise<void> {
    for (const ws of this.ctx.getWebSockets(sessionId)) ws.close(APP_CLOSE_CODE, ErrorCode.UNAUTHORIZED)
    await this.closeWriters(sessionId, ErrorCode.UNAUTHORIZED)
  }

  // ---- writer sockets: rooms this user's devices write to directly ----

  private storedWriterRooms(): string[] {
    return (this.writerRooms ??= this.ctx.storage.kv.get<string[]>('writer_rooms') ?? [])
  }

  private forgetWriterRooms() {
    if (this.storedWriterRooms().length === 0) return
    this.writerRooms = []
    this.ctx.storage.kv.delete('writer_rooms')
  }

  private saveWriterRooms(rooms: string[]) {
    this.writerRooms = rooms
    this.ctx.storage.kv.put('writer_rooms', rooms)
  }

  /**
   * A room accepted a writer socket of this user: from now on it hears of every change to this
   * user's sockets, and gets them now (a session per open socket).
   */
  async writerOpened(userId: string, conversationId: string): Promise<{ version: number; sockets: string[] }> {
    this.rememberUser(userId)
    const rooms = this.storedWriterRooms().filter((id) => id !== conversationId)
    rooms.push(conversationId)
    const evicted = rooms.splice(0, Math.max(0, rooms.length - MAX_WRITER_ROOMS))
    this.saveWriterRooms(rooms)
    // A room that will not hear of changes any more delivers every write to this hub, as if unknown.
    for (const id of evicted) void this.room(id).writerPeers(id, userId, this.nextSocketsVersion(), null).catch(() => undefined)
    return { version: this.nextSocketsVersion(), sockets: [...this.openSockets().map(sessionOf), ...this.connecting] }
  }

  private nextSocketsVersion(): number {
    return (this.socketsVersion = Math.max(this.socketsVersion + 1, Date.now()))
  }

  /** Tells every writer room this user's open sockets; rooms holding no writer socket of the user are forgotten. */
  private async tellWriterRooms(sockets: string[], waitMs = Infinity): Promise<void> {
    const rooms = this.storedWriterRooms()
    const userId = this.knownUser ?? this.userId()
    if (rooms.length === 0 || !userId) return
    const version = this.nextSocketsVersion()
    const gone = new Set<string>()
    const told = pool(rooms, PRESENCE_CONCURRENCY, async (id) => {
      if (!(await this.room(id).writerPeers(id, userId, version, sockets).catch(() => true))) gone.add(id)
    }).then(() => {
      if (gone.size > 0) this.saveWriterRooms(this.storedWriterRooms().filter((id) => !gone.has(id)))
    })
    await (Number.isFinite(waitMs) ? Promise.race([told, new Promise((r) => setTimeout(r, waitMs))]) : told)
  }

  /** Closes this user's writer sockets in every room (one session's, or all). */
  private async closeWriters(sessionId: string | null, reason: ErrorCode) {
    const userId = this.knownUser ?? this.userId()
    if (!userId) return
    await pool(this.storedWriterRooms(), PRESENCE_CONCURRENCY, (id) => this.room(id).closeWriters(id, userId, sessionId, reason))
  }

  /** For tests and the monitoring view: `pending` counts device × conversation pairs with unconfirmed events. */
  async stats() {
    return { devices: this.ctx.getWebSockets().length, pending: this.tracker.size, pushJobs: this.pushJobs, deliveries: this.deliveries, deliverCalls: this.deliverCalls }
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
    this.reportSockets()
    this.ctx.waitUntil(this.tellWriterRooms(this.openSockets(ws).map(sessionOf)))
    // What it had not confirmed is pushed at its next due time (the tick sees no socket).
    const userId = this.knownUser ?? this.userId()
    if (userId && this.openSockets(ws).length === 0) this.ctx.waitUntil(this.announceOffline(userId).catch((e: unknown) => console.warn('presence fan-out failed', String(e))))
  }

  private reportSockets() {
    const open = this.openSockets()
    this.metrics.gauge(Gauge.socketsOpen, open.length)
    this.metrics.gauge(Gauge.devicesOnline, new Set(open.map(sessionOf)).size)
  }

  private openSockets(except?: WebSocket): WebSocket[] {
    return this.ctx.getWebSockets().filter((w) => w !== except && w.readyState === WebSocket.OPEN)
  }

  // ---- presence ----

  private lastSeenAt(): number | null {
    const row = this.sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'last_seen_at'`).toArray()[0]
    return row ? Number(row.value) : null
  }

  /** Online, and when last seen (from this object's storage: a disconnect writes no D1 row). */
  async presence(): Promise<Presence> {
    return { online: this.openSockets().length > 0, lastSeenAt: this.lastSeenAt() }
  }

  private watcherSet(): Set<string> {
    this.watchers ??= new Set(this.sql.exec<{ user_id: string }>('SELECT user_id FROM watchers').toArray().map((r) => r.user_id))
    return this.watchers
  }

  private addWatcher(userId: string) {
    const set = this.watcherSet()
    if (set.has(userId)) return
    set.add(userId)
    this.sql.exec('INSERT OR IGNORE INTO watchers (user_id) VALUES (?)', userId)
  }

  /**
   * The first device came: say hello to each friend's hub, a few at a time. Hubs with devices
   * online remember this user as a watcher and show the friend as online; offline ones hold
   * nothing. Friends that answer online become this hub's watchers in turn.
   */
  private async announceOnline(userId: string) {
    const [me, friends] = await this.env.DB.batch<{ presence_visibility?: string; friend_id?: string }>([
      this.env.DB.prepare('SELECT presence_visibility FROM users WHERE id = ?').bind(userId),
      this.env.DB.prepare('SELECT friend_id FROM friendships WHERE user_id = ?').bind(userId),
    ])
    const visible = me!.results[0]?.presence_visibility !== 'nobody'
    this.visible = visible
    const answered: { friendId: string; visible: boolean }[] = []
    const online = await this.onlineAmong(userId, friends!.results.map((f) => f.friend_id!))
    await pool(online, PRESENCE_CONCURRENCY, async (friendId) => {
      const answer = await getUserHub(this.env, friendId).presenceHello(userId, visible)
      if (answer) answered.push({ friendId, ...answer })
    })
    // One write for all of them, not one per answer.
    for (const a of answered) this.addWatcher(a.friendId)
    for (const a of answered) if (a.visible) void this.notify({ type: 'presence', userId: a.friendId, online: true, lastSeenAt: null })
  }

  /**
   * Sets this user online in the presence index, then asks it which friends are online: one call
   * per index shard instead of a wake of every friend's hub. Set before asking, so of two friends
   * connecting at once the later one finds the earlier one. If the index fails, every friend.
   */
  private async onlineAmong(userId: string, friends: string[]): Promise<string[]> {
    try {
      await this.setOnline(userId, true)
      const byShard = new Map<number, string[]>()
      for (const id of friends) {
        const shard = presenceShardOf(this.env, id)
        const list = byShard.get(shard)
        if (list) list.push(id)
        else byShard.set(shard, [id])
      }
      const found: string[] = []
      await pool([...byShard], PRESENCE_CONCURRENCY, async ([shard, ids]) => {
        found.push(...(await getPresenceIndex(this.env, shard).online(ids)))
      })
      return found
    } catch (e) {
      console.warn('presence index not reached; greeting every friend', String(e))
      return friends
    }
  }

  /** This user's entry in the presence index, through one stub, so the index gets the changes in the order they were made. */
  private setOnline(userId: string, online: boolean): Promise<void> {
    this.presenceStub ??= getPresenceIndex(this.env, presenceShardOf(this.env, userId))
    return this.presenceStub.set(userId, online).catch((e: unknown) => {
      this.presenceStub = null
      throw e
    })
  }

  /** A friend came online. Returns null when this user is offline (nothing is remembered then). */
  async presenceHello(friendId: string, friendVisible: boolean): Promise<{ visible: boolean } | null> {
    this.presenceHellos++
    if (this.openSockets().length === 0) {
      // The index said online: an entry left by a runtime that stopped with sockets open.
      const me = this.knownUser ?? this.userId()
      if (me) void this.setOnline(me, false).catch(() => undefined)
      return null
    }
    this.addWatcher(friendId)
    if (friendVisible) await this.notify({ type: 'presence', userId: friendId, online: true, lastSeenAt: null })
    return { visible: await this.isVisible() }
  }

  /** The user's own presence setting, read once per object lifetime (the profile route refreshes it). */
  private async isVisible(): Promise<boolean> {
    if (this.visible === null) {
      const me = this.knownUser ?? this.userId()
      const row = me ? await this.env.DB.prepare('SELECT presence_visibility FROM users WHERE id = ?').bind(me).first<{ presence_visibility: string }>() : null
      this.visible = row?.presence_visibility !== 'nobody'
    }
    return this.visible
  }

  async setPresenceVisible(visible: boolean): Promise<void> {
    this.visible = visible
  }

  /** A watched friend went offline. */
  async presenceChanged(frame: Extract<ServerMessage, { type: 'presence' }>): Promise<void> {
    if (!frame.online) {
      this.watcherSet().delete(frame.userId)
      this.sql.exec('DELETE FROM watchers WHERE user_id = ?', frame.userId)
    }
    await this.notify(frame)
  }

  /** The last device went: remember when, and tell only the friends who are online (the watchers). */
  private async announceOffline(userId: string) {
    const now = Date.now()
    // Not awaited: the call is made now, in order with this hub's other index calls.
    void this.setOnline(userId, false).catch((e: unknown) => console.warn('presence index not told of the disconnect', String(e)))
    this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seen_at', ?)`, String(now))
    const watchers = [...this.watcherSet()]
    this.watchers = new Set()
    this.sql.exec('DELETE FROM watchers')
    // Hidden presence was never shown, so there is nothing to take back.
    if (!(await this.isVisible())) return
    const frame = { type: 'presence', userId, online: false, lastSeenAt: now } satisfies ServerMessage
    await pool(watchers, PRESENCE_CONCURRENCY, (w) => getUserHub(this.env, w).presenceChanged(frame))
  }
}
