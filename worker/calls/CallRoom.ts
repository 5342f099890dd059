import { DurableObject } from 'cloudflare:workers'
import type { RoomResult } from '../conversation/ConversationRoom'
import { getCallRoom, getConversationRoom, getUserHub } from '../durable-objects'
import type { Env } from '../env'
import { ErrorCode } from '../shared/errors'
import { CALL_MAX_PEOPLE, type CallEndReason, type CallInfo, type CallOutcome, type CallSignal, type ServerMessage } from '../shared/protocol'
import { liveAccess } from '../social/policy'
import { getDb } from '../db/client'
import { Metrics } from '../ops/metrics'
import { Gauge } from '../shared/metrics'

/** Nobody answered in this long: a missed call. */
export const CALL_RING_MS = 45_000

/** One person in the call: `sessionId` is the device in the call, once joined. */
type Person = CallInfo['people'][number]

interface CallState extends CallInfo {
  /** The log entry's clientMsgId, fixed at the start so the end lands once. */
  eventId: string
  ended: boolean
}

/**
 * Someone out of a conversation is out of the call they are in there: the one their hub knows they
 * joined, else the one still ringing in that conversation (`ringing`, as its room remembers it).
 */
export async function dropFromCall(env: Env, conversationId: string, userId: string, ringing: string | null): Promise<void> {
  const callId = (await getUserHub(env, userId).activeCall()) ?? ringing
  if (callId) await getCallRoom(env, callId).dropUser(conversationId, userId)
}

const ok = <T>(value: T): RoomResult<T> => ({ ok: true, value })
const fail = (code: ErrorCode, message: string): RoomResult<never> => ({ ok: false, code, message })

/**
 * One call: who rings, who joined, when it started. Signalling passes through here so only the
 * call's joined devices reach each other; media goes peer to peer. The end writes one call event
 * into the conversation ("missed voice call", "video call · 3:24").
 */
export class CallRoom extends DurableObject<Env> {
  private metrics = new Metrics(this.env, `call:${this.ctx.id.toString()}`)
  private call: CallState | null
  /** The clock; tests move it to reach the ring timeout. */
  now = () => Date.now()

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.call = ctx.storage.kv.get<CallState>('call') ?? null
  }

  async start(conversationId: string, callerId: string, sessionId: string, callId: string, video: boolean): Promise<RoomResult<CallInfo>> {
    if (this.call) return this.call.callerId === callerId && this.call.conversationId === conversationId ? ok(this.info()) : fail(ErrorCode.CONFLICT, 'this call id is taken')
    const access = await liveAccess(getDb(this.env), conversationId, callerId)
    if (!access.ok) return access.why === 'not-member' ? fail(ErrorCode.NOT_MEMBER, 'not a member of this conversation') : fail(ErrorCode.FORBIDDEN, 'you cannot call this person')
    if (access.members.length > CALL_MAX_PEOPLE) return fail(ErrorCode.NOT_ALLOWED, `calls hold at most ${CALL_MAX_PEOPLE} people; start a voice room instead`)
    const others = access.members.filter((m) => m !== callerId)
    if (others.length === 0) return fail(ErrorCode.BAD_REQUEST, 'nobody to call')
    if (await getUserHub(this.env, callerId).activeCall()) return fail(ErrorCode.CONFLICT, 'you are already in a call')
    const busy = new Set<string>()
    await Promise.all(others.map(async (id) => (await getUserHub(this.env, id).activeCall()) && busy.add(id)))
    const startedAt = this.now()
    this.call = {
      callId,
      conversationId,
      video,
      callerId,
      startedAt,
      answeredAt: null,
      eventId: crypto.randomUUID(),
      ended: false,
      people: [
        { userId: callerId, state: 'joined', sessionId, audio: true, video },
        ...others.map((userId): Person => ({ userId, state: busy.has(userId) ? 'busy' : 'ringing', sessionId: null, audio: true, video })),
      ],
    }
    this.save()
    this.metrics.gauge(Gauge.callsLive, 1)
    await getUserHub(this.env, callerId).setActiveCall(callId)
    if (!this.call.people.some((p) => p.state === 'ringing')) {
      await this.end('busy')
      return ok(this.info())
    }
    await this.ctx.storage.setAlarm(startedAt + CALL_RING_MS)
    // The conversation's room remembers the call, so someone removed while it rings stops ringing.
    await getConversationRoom(this.env, conversationId).callStarted(conversationId, callId).catch((e: unknown) => console.warn('room not told of the call', String(e)))
    const ring: ServerMessage = { type: 'call-ring', call: this.info() }
    const rung = this.call.people.filter((p) => p.state === 'ringing')
    await Promise.all(rung.map((p) => getUserHub(this.env, p.userId).notify(ring)))
    // Devices without a socket ring through Web Push (a visible window skips the notification).
    await this.pushRing(rung.map((p) => p.userId), true)
    return ok(this.info())
  }

  async accept(userId: string, sessionId: string): Promise<RoomResult<CallInfo>> {
    const call = this.call
    const me = call?.people.find((p) => p.userId === userId)
    if (!call || call.ended || !me) return fail(ErrorCode.NOT_FOUND, 'no such call')
    if (me.state === 'joined' && me.sessionId === sessionId) return ok(this.info())
    if (me.state !== 'ringing') return fail(ErrorCode.CONFLICT, me.state === 'joined' ? 'answered on another device' : 'this call is not ringing for you')
    if (await getUserHub(this.env, userId).activeCall()) return fail(ErrorCode.CONFLICT, 'you are already in a call')
    // Still allowed to talk here: a member, and in a 1:1 not blocked since the ring.
    const access = await liveAccess(getDb(this.env), call.conversationId, userId)
    if (!access.ok) return fail(access.why === 'not-member' ? ErrorCode.NOT_MEMBER : ErrorCode.FORBIDDEN, 'you can no longer join this call')
    me.state = 'joined'
    me.sessionId = sessionId
    call.answeredAt ??= this.now()
    this.save()
    await getUserHub(this.env, userId).setActiveCall(call.callId)
    // Accepted here: the user's other devices stop ringing (those without a socket through push).
    await getUserHub(this.env, userId).notify({ type: 'call-ended', callId: call.callId, reason: 'answered-elsewhere' }, { except: sessionId })
    await this.pushRing([userId], false)
    await this.broadcast()
    return ok(this.info())
  }

  async decline(userId: string, sessionId: string): Promise<RoomResult<CallInfo>> {
    const call = this.call
    const me = call?.people.find((p) => p.userId === userId)
    if (!call || call.ended || !me) return fail(ErrorCode.NOT_FOUND, 'no such call')
    if (me.state !== 'ringing') return fail(ErrorCode.CONFLICT, 'this call is not ringing for you')
    me.state = 'declined'
    this.save()
    await getUserHub(this.env, userId).notify({ type: 'call-ended', callId: call.callId, reason: 'declined-elsewhere' }, { except: sessionId })
    if (!this.stillOn()) await this.end(call.answeredAt ? 'hangup' : 'declined')
    else await this.broadcast()
    return ok(this.info())
  }

  async hangup(userId: string, sessionId: string): Promise<RoomResult<CallInfo>> {
    const call = this.call
    const me = call?.people.find((p) => p.userId === userId)
    if (!call || call.ended || !me) return fail(ErrorCode.NOT_FOUND, 'no such call')
    if (me.state !== 'joined' || me.sessionId !== sessionId) return fail(ErrorCode.NOT_ALLOWED, 'this device is not in the call')
    me.state = 'left'
    this.save()
    await getUserHub(this.env, userId).setActiveCall(null)
    if (userId === call.callerId && !call.answeredAt) await this.end('cancelled')
    else if (!this.stillOn()) await this.end('hangup')
    else await this.broadcast()
    return ok(this.info())
  }

  async media(userId: string, sessionId: string, audio: boolean, video: boolean): Promise<RoomResult<CallInfo>> {
    const me = this.joined(userId, sessionId)
    if (!me) return fail(ErrorCode.NOT_ALLOWED, 'this device is not in the call')
    me.audio = audio
    me.video = video
    this.save()
    await this.broadcast()
    return ok(this.info())
  }

  /** Only a device in the call reaches only another device in the call. */
  async signal(userId: string, sessionId: string, toSession: string, data: CallSignal): Promise<RoomResult<null>> {
    if (!this.joined(userId, sessionId)) return fail(ErrorCode.NOT_ALLOWED, 'this device is not in the call')
    const to = this.call!.people.find((p) => p.state === 'joined' && p.sessionId === toSession)
    if (!to) return fail(ErrorCode.NOT_FOUND, 'that device is not in the call')
    await getUserHub(this.env, to.userId).notify({ type: 'call-signal', callId: this.call!.callId, fromUser: userId, fromSession: sessionId, data }, { only: toSession })
    return ok(null)
  }

  /** Out of the conversation (removed, or left), out of its call at once: their devices stop ringing or talking. */
  async dropUser(conversationId: string, userId: string): Promise<void> {
    const call = this.call
    const me = call?.people.find((p) => p.userId === userId)
    if (!call || call.ended || call.conversationId !== conversationId || !me || (me.state !== 'joined' && me.state !== 'ringing')) return
    me.state = 'left'
    this.save()
    const hub = getUserHub(this.env, userId)
    await hub.setActiveCall(null, call.callId)
    await hub.notify({ type: 'call-ended', callId: call.callId, reason: 'removed' })
    await this.pushRing([userId], false)
    if (userId === call.callerId && !call.answeredAt) await this.end('cancelled')
    else if (!this.stillOn()) await this.end('hangup')
    else await this.broadcast()
  }

  /** The call as one of its people sees it (the push consumer and a device opened from a notification ask). */
  async infoFor(userId: string): Promise<CallInfo | null> {
    return this.call && this.call.people.some((p) => p.userId === userId) ? this.info() : null
  }

  private async pushRing(userIds: string[], ringing: boolean) {
    if (userIds.length === 0) return
    const { callId, conversationId } = this.call!
    await this.env.PUSH_QUEUE.sendBatch(userIds.map((userId) => ({ body: { type: 'call-push' as const, userId, conversationId, callId, ringing } }))).catch((e: unknown) => console.warn('call push enqueue failed', String(e)))
  }

  /** Whether this user is talking in this call now (their hub's "busy" mark checks it). */
  async isIn(userId: string): Promise<boolean> {
    return !!this.call && !this.call.ended && this.call.people.some((p) => p.userId === userId && p.state === 'joined')
  }

  override async alarm(): Promise<void> {
    const call = this.call
    if (!call || call.ended) return
    if (this.now() < call.startedAt + CALL_RING_MS) {
      await this.ctx.storage.setAlarm(call.startedAt + CALL_RING_MS)
      return
    }
    // Still ringing after the timeout: missed for them; the call ends if nobody is talking.
    for (const p of call.people) {
      if (p.state !== 'ringing') continue
      p.state = 'missed'
      await getUserHub(this.env, p.userId).notify({ type: 'call-ended', callId: call.callId, reason: 'missed' })
    }
    this.save()
    if (!call.answeredAt) await this.end('missed')
    else if (!this.stillOn()) await this.end('hangup')
    else await this.broadcast()
  }

  private joined(userId: string, sessionId: string): Person | undefined {
    const call = this.call
    if (!call || call.ended) return undefined
    return call.people.find((p) => p.userId === userId && p.state === 'joined' && p.sessionId === sessionId)
  }

  /** Two people can still talk, or someone is still being rung while the caller waits. */
  private stillOn(): boolean {
    const people = this.call!.people
    const joined = people.filter((p) => p.state === 'joined').length
    const ringing = people.some((p) => p.state === 'ringing')
    return joined >= 2 || (joined === 1 && ringing)
  }

  private async end(reason: CallEndReason) {
    const call = this.call!
    if (call.ended) return
    call.ended = true
    this.save()
    this.metrics.gauge(Gauge.callsLive, 0)
    await this.ctx.storage.deleteAlarm()
    const outcome: CallOutcome = call.answeredAt ? 'answered' : reason === 'busy' ? 'busy' : reason === 'declined' ? 'declined' : reason === 'cancelled' ? 'cancelled' : 'missed'
    const durationMs = call.answeredAt ? this.now() - call.answeredAt : 0
    await Promise.all(
      call.people.map(async (p) => {
        const hub = getUserHub(this.env, p.userId)
        if (p.state === 'joined' || p.state === 'left') await hub.setActiveCall(null, call.callId)
        if (p.state === 'joined' || p.state === 'ringing') await hub.notify({ type: 'call-ended', callId: call.callId, reason })
      }),
    )
    // Notifications that still ring stop (a missed one says so).
    await this.pushRing(call.people.filter((p) => p.userId !== call.callerId).map((p) => p.userId), false)
    const written = await getConversationRoom(this.env, call.conversationId).callEnded(call.conversationId, call.callerId, call.eventId, call.video, outcome, durationMs)
    if (!written.ok) console.warn('call event refused', written.code, written.message)
  }

  private async broadcast() {
    const frame: ServerMessage = { type: 'call-update', call: this.info() }
    await Promise.all(this.call!.people.filter((p) => p.state === 'joined' && p.sessionId).map((p) => getUserHub(this.env, p.userId).notify(frame, { only: p.sessionId! })))
  }

  private info(): CallInfo {
    const { eventId: _e, ended: _x, people, ...call } = this.call!
    return { ...call, people: people.map((p) => ({ ...p })) }
  }

  private save() {
    this.ctx.storage.kv.put('call', this.call)
  }
}
