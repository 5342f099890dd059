import { DurableObject } from 'cloudflare:workers'
import { memberIds, notifyUsers } from '../conversation/member-notify'
import { getConversationRoom } from '../durable-objects'
import type { Env } from '../env'
import { ErrorCode } from '../shared/errors'
import {
  decodeVoiceFrame,
  VOICE_MAX_LISTENERS,
  VOICE_MAX_OUTSTANDING,
  VOICE_MAX_SPEAKERS,
  VOICE_REJOIN_GRACE_MS,
  VoiceClientMessage,
  type VoiceParticipant,
  type VoiceRoomState,
  type VoiceRoomSummary,
  type VoiceServerMessage,
} from '../shared/voice'
import { Metrics } from '../ops/metrics'
import { Gauge } from '../shared/metrics'

/** Headers the Worker sets after checking the ticket and the membership. */
export const VOICE_UPGRADE_HEADERS = {
  userId: 'x-ev-voice-user',
  sessionId: 'x-ev-voice-session',
  conversationId: 'x-ev-voice-conversation',
  jti: 'x-ev-voice-jti',
  exp: 'x-ev-voice-exp',
} as const

/** Members hear of a change of speakers or listener count at most this often. */
const SUMMARY_EVERY_MS = 1_000
/** A refused audio frame is answered at most this often per socket. */
const REFUSAL_EVERY_MS = 1_000

interface Meta {
  conversationId: string
  startedAt: number
  hostId: string
  /** Who started it: the end event is written in their name. */
  starterId: string
  /** The end event's clientMsgId, so a retried end lands once. */
  endEventId: string
  /** Everyone who was in the room at some point. */
  people: string[]
  nextSlot: number
}

interface Person extends Omit<VoiceParticipant, 'connected'> {
  /** When the socket closed; null while connected. */
  leftAt: number | null
}

interface Attachment {
  userId: string
  sessionId: string
}

/**
 * One live voice room of a conversation. It relays each speaker's Opus frames to everyone else as
 * they come, without decoding and without storing audio; roles, hands and mutes are its state.
 * The room ends when the host ends it or the last person leaves (or stays away past the grace).
 */
export class VoiceRoom extends DurableObject<Env> {
  private metrics = new Metrics(this.env, `voice:${this.ctx.id.toString()}`)
  private sql: SqlStorage
  private meta: Meta | null = null
  private people = new Map<string, Person>()
  /** Open sockets by user: the relay's fan-out list, rebuilt after a wake. */
  private sockets = new Map<string, WebSocket>()
  private lastRefusal = new WeakMap<WebSocket, number>()
  /** Per person's current socket: audio frames sent, and the count it last reported receiving. */
  private flow = new Map<string, { sent: number; got: number }>()
  private summaryTimer: ReturnType<typeof setTimeout> | null = null
  private members: string[] | null = null

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    this.sql.exec(`CREATE TABLE IF NOT EXISTS used_tickets (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL)`)
    this.meta = ctx.storage.kv.get<Meta>('meta') ?? null
    for (const p of ctx.storage.kv.get<Person[]>('people') ?? []) this.people.set(p.userId, p)
    for (const ws of ctx.getWebSockets()) {
      const a = ws.deserializeAttachment() as Attachment | null
      if (a) this.sockets.set(a.userId, ws)
    }
    // Woken with a room but after a crash or deploy its sockets are gone: whoever does not come
    // back within the grace is dropped by the alarm, so a room nobody rejoins still ends.
    if (this.meta) {
      void ctx.storage.getAlarm().then(async (at) => {
        if (at === null) await ctx.storage.setAlarm(Date.now() + VOICE_REJOIN_GRACE_MS)
      })
    }
  }

  // ---- joining ----

  override async fetch(request: Request): Promise<Response> {
    const h = (k: keyof typeof VOICE_UPGRADE_HEADERS) => request.headers.get(VOICE_UPGRADE_HEADERS[k])
    const [userId, sessionId, conversationId, jti, exp] = [h('userId'), h('sessionId'), h('conversationId'), h('jti'), Number(h('exp'))]
    if (!userId || !sessionId || !conversationId || !jti || !Number.isFinite(exp)) return new Response('bad upgrade', { status: 400 })
    if (this.meta && this.meta.conversationId !== conversationId) return new Response('wrong room', { status: 400 })
    // Single use: a replayed ticket finds its jti spent.
    this.sql.exec('DELETE FROM used_tickets WHERE exp < ?', Math.floor(Date.now() / 1000))
    if (this.sql.exec('SELECT 1 FROM used_tickets WHERE jti = ?', jti).toArray().length > 0) return error(401, ErrorCode.UNAUTHORIZED, 'this ticket was already used')
    this.sql.exec('INSERT INTO used_tickets (jti, exp) VALUES (?, ?)', jti, exp)

    const known = this.people.get(userId)
    if (!known && this.listeners() >= VOICE_MAX_LISTENERS) return error(429, ErrorCode.RATE_LIMITED, `a voice room holds ${VOICE_MAX_LISTENERS} listeners`)
    const starting = !this.meta
    if (!this.meta) {
      this.meta = { conversationId, startedAt: Date.now(), hostId: userId, starterId: userId, endEventId: crypto.randomUUID(), people: [], nextSlot: 1 }
    }
    const meta = this.meta
    if (!meta.people.includes(userId)) meta.people.push(userId)
    // A rejoin keeps the role it had; someone new listens first.
    const person: Person = known ?? { userId, slot: meta.nextSlot++, role: starting ? 'host' : 'listener', muted: false, hand: false, leftAt: null }
    person.leftAt = null
    this.people.set(userId, person)

    const pair = new WebSocketPair()
    const [client, server] = [pair[0], pair[1]]
    this.ctx.acceptWebSocket(server, [userId])
    server.serializeAttachment({ userId, sessionId } satisfies Attachment)
    // One socket per person: a second device (or a rejoin racing the old socket) takes over.
    const previous = this.sockets.get(userId)
    this.sockets.set(userId, server)
    // A new socket starts counting afresh (its client counts from zero too).
    this.flow.set(userId, { sent: 0, got: 0 })
    if (previous) previous.close(4001, 'joined from another connection')
    this.save()
    send(server, { type: 'welcome', userId, state: this.state() })
    this.broadcast(userId)
    if (starting) {
      this.metrics.gauge(Gauge.voiceRoomsLive, 1)
      await this.env.DB.prepare('UPDATE conversations SET voice_live_since = ? WHERE id = ?').bind(meta.startedAt, conversationId).run()
    }
    this.summaryChanged(starting)
    return new Response(null, { status: 101, webSocket: client })
  }

  // ---- frames ----

  override async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const from = this.attachment(ws)
    if (!from || this.sockets.get(from.userId) !== ws) return
    if (typeof message !== 'string') return this.relay(ws, from.userId, message)
    let json: unknown
    try {
      json = JSON.parse(message)
    } catch {
      return send(ws, { type: 'error', code: ErrorCode.BAD_REQUEST, message: 'not JSON' })
    }
    const parsed = VoiceClientMessage.safeParse(json)
    if (!parsed.success) return send(ws, { type: 'error', code: ErrorCode.BAD_REQUEST, message: parsed.error.issues[0]?.message ?? 'invalid frame' })
    if (parsed.data.type === 'got') {
      const f = this.flow.get(from.userId)
      // Counted on the socket, so a report can only ever move forward to what was sent.
      if (f) f.got = Math.min(f.sent, Math.max(f.got, parsed.data.n))
      return
    }
    const refusal = await this.control(from.userId, parsed.data)
    if (refusal) send(ws, { type: 'error', code: refusal.code, message: refusal.message })
  }

  /** Forwards one Opus frame from an unmuted speaker to everyone else; the room never decodes or keeps it. */
  private relay(ws: WebSocket, userId: string, data: ArrayBuffer) {
    const me = this.people.get(userId)
    const frame = decodeVoiceFrame(data)
    if (!me || !frame || me.role === 'listener' || me.muted) {
      const now = Date.now()
      if (now - (this.lastRefusal.get(ws) ?? 0) > REFUSAL_EVERY_MS) {
        this.lastRefusal.set(ws, now)
        send(ws, { type: 'error', code: ErrorCode.NOT_ALLOWED, message: !frame ? 'not an audio frame' : me?.muted ? 'you are muted' : 'listeners cannot speak until the host invites them' })
      }
      return
    }
    // The slot is the room's word for who speaks: nobody can speak as somebody else.
    new DataView(data).setUint16(2, me.slot, true)
    for (const [id, other] of this.sockets) {
      if (id === userId) continue
      let f = this.flow.get(id)
      if (!f) this.flow.set(id, (f = { sent: 0, got: 0 }))
      // A listener that fell behind loses frames until it catches up; nobody else waits for it.
      if (f.sent - f.got >= VOICE_MAX_OUTSTANDING) continue
      try {
        other.send(data)
        f.sent++
      } catch {
        // A socket closing right now: its close handler tidies up.
      }
    }
  }

  private async control(userId: string, m: VoiceClientMessage): Promise<{ code: ErrorCode; message: string } | null> {
    const me = this.people.get(userId)
    const meta = this.meta
    if (!me || !meta) return { code: ErrorCode.NOT_FOUND, message: 'not in this room' }
    const hostOnly = m.type === 'promote' || m.type === 'demote' || m.type === 'force-mute' || m.type === 'remove' || m.type === 'handover' || m.type === 'end'
    if (hostOnly && meta.hostId !== userId) return { code: ErrorCode.NOT_ALLOWED, message: 'only the host can do that' }
    const target = 'userId' in m ? this.people.get(m.userId) : undefined
    if ('userId' in m && (!target || target.leftAt !== null && m.type !== 'remove')) return { code: ErrorCode.NOT_FOUND, message: 'not in this room' }
    switch (m.type) {
      case 'mute':
        if (!m.muted && me.role !== 'listener' && this.unmutedSpeakers() >= VOICE_MAX_SPEAKERS) return { code: ErrorCode.NOT_ALLOWED, message: `at most ${VOICE_MAX_SPEAKERS} people can speak at once` }
        me.muted = m.muted
        break
      case 'hand':
        if (me.role !== 'listener') return { code: ErrorCode.BAD_REQUEST, message: 'speakers have the floor already' }
        me.hand = m.raised
        break
      case 'promote':
        if (target!.role !== 'listener') return null
        // Invited speakers start muted when the stage is full; they unmute when someone stops.
        target!.role = 'speaker'
        target!.hand = false
        target!.muted = this.unmutedSpeakers() >= VOICE_MAX_SPEAKERS
        break
      case 'demote':
        if (target!.role !== 'speaker') return { code: ErrorCode.BAD_REQUEST, message: 'only a speaker can be moved back to the audience' }
        target!.role = 'listener'
        break
      case 'force-mute':
        target!.muted = true
        break
      case 'remove':
        if (target!.userId === userId) return { code: ErrorCode.BAD_REQUEST, message: 'use leave to leave' }
        this.drop(target!.userId, 4003, 'removed by the host', 'removed')
        break
      case 'handover':
        if (target!.userId === userId) return null
        me.role = 'speaker'
        target!.role = 'host'
        target!.hand = false
        meta.hostId = target!.userId
        break
      case 'end':
        await this.end('host-ended')
        return null
      case 'got':
        return null
      case 'leave':
        this.drop(userId, 1000, 'left', null)
        if (this.people.size === 0) await this.end('empty')
        else this.handOnIfHostGone()
        break
    }
    this.save()
    this.broadcast()
    this.summaryChanged()
    return null
  }

  // ---- leaving ----

  override async webSocketClose(ws: WebSocket): Promise<void> {
    await this.lost(ws)
  }
  override async webSocketError(ws: WebSocket): Promise<void> {
    await this.lost(ws)
  }

  /** A dropped socket keeps its place for the grace period, so a rejoin finds its role. */
  private async lost(ws: WebSocket) {
    const a = this.attachment(ws)
    if (!a || this.sockets.get(a.userId) !== ws) return
    this.sockets.delete(a.userId)
    const p = this.people.get(a.userId)
    if (p) p.leftAt = Date.now()
    this.save()
    this.broadcast()
    this.summaryChanged()
    await this.ctx.storage.setAlarm(Date.now() + VOICE_REJOIN_GRACE_MS)
  }

  override async alarm(): Promise<void> {
    const now = Date.now()
    // Places whose socket vanished without a close (the process died) had the grace since the wake.
    for (const p of this.people.values()) if (p.leftAt === null && !this.sockets.has(p.userId)) p.leftAt = now - VOICE_REJOIN_GRACE_MS
    for (const p of [...this.people.values()]) if (p.leftAt !== null && now - p.leftAt >= VOICE_REJOIN_GRACE_MS) this.people.delete(p.userId)
    if (this.meta && this.people.size === 0) return this.end('empty')
    this.handOnIfHostGone()
    this.save()
    this.broadcast()
    this.summaryChanged()
    const next = Math.min(...[...this.people.values()].flatMap((p) => (p.leftAt !== null ? [p.leftAt + VOICE_REJOIN_GRACE_MS] : [])))
    if (Number.isFinite(next)) await this.ctx.storage.setAlarm(next)
  }

  /** Someone removed from the conversation leaves its room at once. */
  async dropUser(conversationId: string, userId: string): Promise<void> {
    // The next summary goes only to who is a member now.
    this.members = null
    if (!this.meta || this.meta.conversationId !== conversationId || !this.people.has(userId)) return
    this.drop(userId, 4003, 'no longer a member of the conversation', 'not-member')
    if (this.people.size === 0) return this.end('empty')
    this.handOnIfHostGone()
    this.save()
    this.broadcast()
    this.summaryChanged()
  }

  private drop(userId: string, code: number, reason: string, tell: 'removed' | 'not-member' | null) {
    const ws = this.sockets.get(userId)
    this.sockets.delete(userId)
    this.people.delete(userId)
    this.flow.delete(userId)
    if (ws) {
      if (tell) send(ws, { type: 'ended', reason: tell })
      ws.close(code, reason)
    }
  }

  /** A room whose host is gone passes to a speaker, else to whoever has been there longest. */
  private handOnIfHostGone() {
    const meta = this.meta
    if (!meta || this.people.get(meta.hostId)?.leftAt === null) return
    const present = [...this.people.values()].filter((p) => p.leftAt === null)
    const heir = present.find((p) => p.role === 'speaker') ?? present[0]
    if (!heir) return
    const old = this.people.get(meta.hostId)
    if (old) old.role = 'speaker'
    heir.role = 'host'
    heir.hand = false
    meta.hostId = heir.userId
  }

  /** Writes "voice room · N min · M people" into the conversation once, tells everyone, forgets the room. */
  private async end(reason: 'host-ended' | 'empty') {
    const meta = this.meta
    if (!meta) return
    for (const [userId, ws] of this.sockets) {
      send(ws, { type: 'ended', reason })
      ws.close(4000, 'the voice room ended')
      this.sockets.delete(userId)
    }
    const durationMs = Date.now() - meta.startedAt
    const ack = await getConversationRoom(this.env, meta.conversationId).voiceEnded(meta.conversationId, meta.starterId, meta.endEventId, meta.startedAt, durationMs, meta.people.length)
    if (!ack.ok) console.warn('voice end event refused', ack.code, ack.message)
    await this.env.DB.prepare('UPDATE conversations SET voice_live_since = NULL WHERE id = ? AND voice_live_since = ?').bind(meta.conversationId, meta.startedAt).run()
    this.meta = null
    this.metrics.gauge(Gauge.voiceRoomsLive, 0)
    this.people.clear()
    this.ctx.storage.kv.delete('meta')
    this.ctx.storage.kv.delete('people')
    await this.ctx.storage.deleteAlarm()
    await this.tellMembers({ conversationId: meta.conversationId, live: false, startedAt: null, hostId: null, speakers: [], listeners: 0 })
  }

  // ---- state ----

  async summary(conversationId: string): Promise<VoiceRoomSummary> {
    if (!this.meta || this.meta.conversationId !== conversationId) return { conversationId, live: false, startedAt: null, hostId: null, speakers: [], listeners: 0 }
    const present = [...this.people.values()].filter((p) => p.leftAt === null)
    return {
      conversationId,
      live: true,
      startedAt: this.meta.startedAt,
      hostId: this.meta.hostId,
      speakers: present.filter((p) => p.role !== 'listener').map((p) => p.userId),
      listeners: present.filter((p) => p.role === 'listener').length,
    }
  }

  private state(): VoiceRoomState {
    const meta = this.meta!
    return {
      conversationId: meta.conversationId,
      startedAt: meta.startedAt,
      hostId: meta.hostId,
      participants: [...this.people.values()].map(({ leftAt, ...p }) => ({ ...p, connected: leftAt === null })),
    }
  }

  private listeners(): number {
    let n = 0
    for (const p of this.people.values()) if (p.role === 'listener') n++
    return n
  }

  private unmutedSpeakers(): number {
    let n = 0
    for (const p of this.people.values()) if (p.role !== 'listener' && !p.muted && p.leftAt === null) n++
    return n
  }

  private broadcast(except?: string) {
    if (!this.meta) return
    const text = JSON.stringify({ type: 'state', state: this.state() } satisfies VoiceServerMessage)
    for (const [id, ws] of this.sockets) if (id !== except) send(ws, text)
  }

  /** The chat's live card and list badge follow, at most once a second (at once for a start). */
  private summaryChanged(now = false) {
    if (now) {
      if (this.summaryTimer) clearTimeout(this.summaryTimer)
      this.summaryTimer = null
      void this.pushSummary()
      return
    }
    this.summaryTimer ??= setTimeout(() => {
      this.summaryTimer = null
      void this.pushSummary()
    }, SUMMARY_EVERY_MS)
  }

  private async pushSummary() {
    if (!this.meta) return
    await this.tellMembers(await this.summary(this.meta.conversationId)).catch((e: unknown) => console.warn('voice summary failed', String(e)))
  }

  private async tellMembers(summary: VoiceRoomSummary) {
    this.members ??= await memberIds(this.env, summary.conversationId)
    await notifyUsers(this.env, this.members, { type: 'voice-room', summary })
    if (!summary.live) this.members = null
  }

  private save() {
    if (!this.meta) return
    this.ctx.storage.kv.put('meta', this.meta)
    this.ctx.storage.kv.put('people', [...this.people.values()])
  }

  private attachment(ws: WebSocket): Attachment | null {
    return (ws.deserializeAttachment() as Attachment | null) ?? null
  }
}

function send(ws: WebSocket, frame: VoiceServerMessage | string) {
  try {
    ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
  } catch {
    // Closed meanwhile.
  }
}

function error(status: number, code: ErrorCode, message: string): Response {
  return Response.json({ error: { code, message } }, { status })
}
