import { runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import { CALL_RING_MS, type CallRoom } from '../worker/calls/CallRoom'
import { iceServersFor, TURN_TTL_S } from '../worker/calls/ice-servers'
import { TURN_KEY } from './support/cloudflare-turn'
import type { AuthResult, CallEvent, ConversationEvent, ConversationSummary } from '../worker/shared/protocol'
import { api, createGroup, Device, json, openChat, register } from './helpers'
import { newPushSubscription, receivedPushes, subscribe, waitFor } from './push-helpers'

const callRoom = (callId: string) => env.CALL.get(env.CALL.idFromName(callId))

async function history(token: string, conversationId: string): Promise<ConversationEvent[]> {
  return (await json<{ events: ConversationEvent[] }>(await api(`/api/conversations/${conversationId}/messages?limit=50`, { token }))).events
}

describe('calls: ringing, answering and signalling', () => {
  it('rings every device of the callee; accepting on one stops the other; signalling reaches only the call’s devices', { timeout: 20_000 }, async ({ expect }) => {
    const [ann, bob] = [await register(), await register()]
    const conv = await openChat(ann, bob)
    const a = await Device.connect(ann)
    const b1 = await Device.connect(bob)
    // Bob's second device: a sign-in of its own (a device is a session).
    const bobPhone = await json<AuthResult>(await api('/api/auth/login', { body: { handle: bob.user.handle, password: 'correct horse battery' } }))
    const b2 = await Device.connect(bobPhone)
    const callId = crypto.randomUUID()
    a.send({ type: 'call-start', conversationId: conv.id, callId, video: true })
    const started = await a.next('call-update')
    expect(started.call).toMatchObject({ callId, video: true, callerId: ann.user.id, answeredAt: null })
    const ring1 = await b1.next('call-ring')
    await b2.next('call-ring')
    expect(ring1.call.people.find((p) => p.userId === bob.user.id)!.state).toBe('ringing')

    b1.send({ type: 'call-accept', callId })
    expect((await b2.next('call-ended')).reason).toBe('answered-elsewhere')
    const joined = await a.next((m) => m.type === 'call-update' && m.call.answeredAt !== null)
    expect(joined.type === 'call-update' && joined.call.people.find((p) => p.userId === bob.user.id)).toMatchObject({ state: 'joined', sessionId: b1.sessionId })

    // An offer from the caller to the device that answered, and a candidate back.
    a.send({ type: 'call-signal', callId, toSession: b1.sessionId, data: { kind: 'offer', sdp: 'v=0 offer' } })
    const offer = await b1.next('call-signal')
    expect(offer).toMatchObject({ fromUser: ann.user.id, fromSession: a.sessionId, data: { kind: 'offer', sdp: 'v=0 offer' } })
    b1.send({ type: 'call-signal', callId, toSession: a.sessionId, data: { kind: 'ice', candidate: { candidate: 'candidate:1 1 udp 1 127.0.0.1 5000 typ host', sdpMid: '0', sdpMLineIndex: 0 } } })
    expect((await a.next('call-signal')).data.kind).toBe('ice')

    // The other device of Bob is not in the call: it can neither signal nor be signalled.
    b2.send({ type: 'call-signal', callId, toSession: a.sessionId, data: { kind: 'answer', sdp: 'x' } })
    expect((await b2.next('error')).code).toBe('NOT_ALLOWED')
    a.send({ type: 'call-signal', callId, toSession: b2.sessionId, data: { kind: 'offer', sdp: 'x' } })
    expect((await a.next('error')).code).toBe('NOT_FOUND')
    // Bad signalling is refused by the protocol before any object sees it.
    a.send(JSON.stringify({ type: 'call-signal', callId, toSession: b1.sessionId, data: { kind: 'offer' } }))
    expect((await a.next('error')).code).toBe('BAD_REQUEST')

    // Hang-up ends both sides and writes "video call · m:ss" once.
    a.send({ type: 'call-hangup', callId })
    expect((await b1.next('call-ended')).reason).toBe('hangup')
    const ev = (await b1.next((m) => m.type === 'event' && m.event.type === 'call')) as { event: CallEvent }
    expect(ev.event).toMatchObject({ type: 'call', video: true, outcome: 'answered', senderId: ann.user.id })
    b1.send({ type: 'call-hangup', callId })
    await b1.next('error')
    await expect.poll(async () => (await history(bob.accessToken, conv.id)).filter((e) => e.type === 'call').length, { timeout: 3000 }).toBe(1)
    for (const d of [a, b1, b2]) d.close()
  })

  it('refuses a call from a non-member and a group over four; a busy callee ends the call as busy', async ({ expect }) => {
    const [ann, bob, cy, dee, eve] = [await register(), await register(), await register(), await register(), await register()]
    const big = await createGroup(ann, [bob, cy, dee, eve], 'Five')
    // Friends already (the group made them): the 1:1 opens directly.
    const conv = (await json<{ conversation: ConversationSummary }>(await api('/api/conversations', { token: ann.accessToken, body: { peerHandle: bob.user.handle } }))).conversation
    const outsider = await Device.connect(eve)
    outsider.send({ type: 'call-start', conversationId: conv.id, callId: crypto.randomUUID(), video: false })
    expect((await outsider.next('error')).code).toBe('NOT_MEMBER')
    const a = await Device.connect(ann)
    a.send({ type: 'call-start', conversationId: big.id, callId: crypto.randomUUID(), video: false })
    expect((await a.next('error')).message).toContain('voice room')

    // Bob talks with Ann; Cy calls Bob: busy.
    const b = await Device.connect(bob)
    const first = crypto.randomUUID()
    a.send({ type: 'call-start', conversationId: conv.id, callId: first, video: false })
    await b.next('call-ring')
    b.send({ type: 'call-accept', callId: first })
    await a.next((m) => m.type === 'call-update' && m.call.answeredAt !== null)
    const cyBob = await openChat(cy, bob)
    const c = await Device.connect(cy)
    const second = crypto.randomUUID()
    c.send({ type: 'call-start', conversationId: cyBob.id, callId: second, video: false })
    expect((await c.next('call-ended')).reason).toBe('busy')
    await expect.poll(async () => (await history(cy.accessToken, cyBob.id)).find((e) => e.type === 'call'), { timeout: 3000 }).toMatchObject({ outcome: 'busy' })
    for (const d of [a, b, c, outsider]) d.close()
  })

  it('no answer in 45 s: a missed call in the log, unread and previewed like a message; decline ends a 1:1 call', async ({ expect }) => {
    const [ann, bob] = [await register(), await register()]
    const conv = await openChat(ann, bob)
    const a = await Device.connect(ann)
    const callId = crypto.randomUUID()
    a.send({ type: 'call-start', conversationId: conv.id, callId, video: false })
    await a.next('call-update')
    const room = callRoom(callId)
    // The ring timeout, on the call's own clock.
    await runInDurableObject(room, (o: CallRoom) => {
      o.now = () => Date.now() + CALL_RING_MS + 1_000
    })
    expect(await runDurableObjectAlarm(room)).toBe(true)
    expect((await a.next('call-ended')).reason).toBe('missed')
    await expect.poll(async () => (await history(bob.accessToken, conv.id)).filter((e) => e.type === 'call'), { timeout: 3000 }).toMatchObject([{ outcome: 'missed', video: false }])
    const list = (await json<{ conversations: ConversationSummary[] }>(await api('/api/conversations', { token: bob.accessToken }))).conversations.find((c) => c.id === conv.id)!
    expect(list.unread).toBe(1)
    expect(list.preview?.text).toBe('Missed voice call')
    // The alarm again changes nothing: still one event.
    await runDurableObjectAlarm(room)
    expect((await history(bob.accessToken, conv.id)).filter((e) => e.type === 'call')).toHaveLength(1)

    const b = await Device.connect(bob)
    const second = crypto.randomUUID()
    a.send({ type: 'call-start', conversationId: conv.id, callId: second, video: true })
    await b.next('call-ring')
    b.send({ type: 'call-decline', callId: second })
    expect((await a.next('call-ended')).reason).toBe('declined')
    await expect.poll(async () => (await history(bob.accessToken, conv.id)).filter((e) => e.type === 'call').length, { timeout: 3000 }).toBe(2)
    a.close()
    b.close()
  })

  it('a group call of three: everyone joins, the call stays on when one leaves, ends when one is left', async ({ expect }) => {
    const [ann, bob, cy] = [await register(), await register(), await register()]
    const group = await createGroup(ann, [bob, cy], 'Trio call')
    const [a, b, c] = [await Device.connect(ann), await Device.connect(bob), await Device.connect(cy)]
    const callId = crypto.randomUUID()
    a.send({ type: 'call-start', conversationId: group.id, callId, video: false })
    await b.next('call-ring')
    await c.next('call-ring')
    b.send({ type: 'call-accept', callId })
    c.send({ type: 'call-accept', callId })
    await a.next((m) => m.type === 'call-update' && m.call.people.filter((p) => p.state === 'joined').length === 3)
    // Bob may signal Cy directly: a full mesh.
    b.send({ type: 'call-signal', callId, toSession: c.sessionId, data: { kind: 'offer', sdp: 'mesh' } })
    expect((await c.next('call-signal')).fromUser).toBe(bob.user.id)
    b.send({ type: 'call-hangup', callId })
    await a.next((m) => m.type === 'call-update' && m.call.people.find((p) => p.userId === bob.user.id)?.state === 'left')
    c.send({ type: 'call-hangup', callId })
    expect((await a.next('call-ended')).reason).toBe('hangup')
    for (const d of [a, b, c]) d.close()
  })

  it('someone removed from the group is out of its call at once; someone removed while it rang stops ringing and cannot pick it up', async ({ expect }) => {
    const [ann, bob, cy, dee] = [await register(), await register(), await register(), await register()]
    const group = await createGroup(ann, [bob, cy, dee], 'Four')
    const [a, b, c, d] = [await Device.connect(ann), await Device.connect(bob), await Device.connect(cy), await Device.connect(dee)]
    const callId = crypto.randomUUID()
    a.send({ type: 'call-start', conversationId: group.id, callId, video: false })
    for (const x of [b, c, d]) await x.next('call-ring')
    b.send({ type: 'call-accept', callId })
    c.send({ type: 'call-accept', callId })
    await a.next((m) => m.type === 'call-update' && m.call.people.filter((p) => p.state === 'joined').length === 3)
    // Ann removes Cy, who is talking: Cy's device hears why, the others see Cy gone, Cy can signal no one.
    expect((await api(`/api/conversations/${group.id}/members/${cy.user.id}`, { method: 'DELETE', token: ann.accessToken })).status).toBe(200)
    expect((await c.next('call-ended')).reason).toBe('removed')
    await a.next((m) => m.type === 'call-update' && m.call.people.find((p) => p.userId === cy.user.id)?.state === 'left')
    c.send({ type: 'call-signal', callId, toSession: a.sessionId, data: { kind: 'offer', sdp: 'still here?' } })
    expect((await c.next('error')).code).toBe('NOT_ALLOWED')
    // Cy is free for other calls again.
    expect(await runInDurableObject(callRoom(callId), (room: CallRoom) => room.isIn(cy.user.id))).toBe(false)
    // Dee, still ringing, is removed: her device stops ringing, and an accept is refused.
    expect((await api(`/api/conversations/${group.id}/members/${dee.user.id}`, { method: 'DELETE', token: ann.accessToken })).status).toBe(200)
    expect((await d.next('call-ended')).reason).toBe('removed')
    d.send({ type: 'call-accept', callId })
    expect((await d.next('error')).code).toBe('CONFLICT')
    // Ann and Bob still talk.
    expect(await runInDurableObject(callRoom(callId), (room: CallRoom) => room.isIn(bob.user.id))).toBe(true)
    for (const x of [a, b, c, d]) x.close()
  })

  it('rings a device with no socket through Web Push, which stops when the call ends; the device can pick the call up by id', { timeout: 30_000 }, async ({ expect }) => {
    const [ann, bob, outsider] = [await register(), await register(), await register()]
    const conv = await openChat(ann, bob)
    const sub = await newPushSubscription()
    await subscribe(bob, sub)
    const a = await Device.connect(ann)
    const callId = crypto.randomUUID()
    a.send({ type: 'call-start', conversationId: conv.id, callId, video: true })
    await a.next('call-update')
    const ring = await waitFor(async () => (await receivedPushes(sub)).received.find((r) => (r.payload as { callId?: string }).callId === callId))
    expect(ring.payload).toEqual({ type: 'call', callId, conversationId: conv.id, ringing: true, title: ann.user.displayName, body: 'Incoming video call' })
    expect(Number(ring.ttl)).toBeLessThanOrEqual(45)
    // Opened from that notification, Bob's device finds the call still ringing for him.
    const seen = await json<{ call: { people: { userId: string; state: string }[] } }>(await api(`/api/calls/${callId}`, { token: bob.accessToken }))
    expect(seen.call.people.find((p) => p.userId === bob.user.id)!.state).toBe('ringing')
    expect((await api(`/api/calls/${callId}`, { token: outsider.accessToken })).status).toBe(404)
    // Ann gives up: the ringing stops on Bob's devices.
    a.send({ type: 'call-hangup', callId })
    await a.next((m) => m.type === 'event' && m.event.type === 'call')
    const stop = await waitFor(async () => (await receivedPushes(sub)).received.find((r) => (r.payload as { callId?: string; ringing?: boolean }).callId === callId && (r.payload as { ringing: boolean }).ringing === false))
    expect(stop.payload).toMatchObject({ type: 'call', callId, ringing: false })
    a.close()
  })
})

describe('ICE servers for a call', () => {
  const STUN = 'stun:stun.example.com:3478'
  it('mints Cloudflare TURN credentials per request (no port 53); a refused key leaves STUN; a REST secret mints coturn-style ones', async ({ expect }) => {
    const cf = await iceServersFor({ ...env, STUN_URLS: STUN, TURN_KEY_ID: TURN_KEY.id, TURN_KEY_API_TOKEN: TURN_KEY.token }, 'u1')
    expect(cf[0]).toEqual({ urls: [STUN] })
    expect(cf).toHaveLength(2)
    const relay = cf[1]!
    expect(relay.urls).toContain('turns:turn.cloudflare.com:443?transport=tcp')
    expect(relay.urls.filter((u) => /:53(\?|$)/.test(u))).toEqual([])
    expect(relay.username).toBe(`minted-${TURN_TTL_S}`)
    expect(relay.credential).toBeTruthy()
    // The key refused (revoked token): the call still gets STUN, nothing breaks.
    expect(await iceServersFor({ ...env, STUN_URLS: STUN, TURN_KEY_ID: TURN_KEY.id, TURN_KEY_API_TOKEN: 'revoked' }, 'u1')).toEqual([{ urls: [STUN] }])
    // The TURN REST secret: username "<expiry>:<user>", credential HMAC-SHA1 of it, as coturn checks.
    const now = Date.now()
    const [rest] = await iceServersFor({ ...env, TURN_URLS: 'turn:127.0.0.1:3478', TURN_SECRET: 'shared-secret' }, 'u1')
    expect(rest!.urls).toEqual(['turn:127.0.0.1:3478'])
    const [expiry, user] = rest!.username!.split(':')
    expect(user).toBe('u1')
    expect(Number(expiry)).toBeGreaterThanOrEqual(Math.floor(now / 1000) + TURN_TTL_S)
    const key = await crypto.subtle.importKey('raw', new TextEncoder().encode('shared-secret'), { name: 'HMAC', hash: 'SHA-1' }, false, ['verify'])
    const mac = Uint8Array.from(atob(rest!.credential!), (ch) => ch.charCodeAt(0))
    expect(await crypto.subtle.verify('HMAC', key, mac, new TextEncoder().encode(rest!.username!))).toBe(true)
  })

  it('are given only to a signed-in user, never cached', async ({ expect }) => {
    expect((await api('/api/calls/ice-servers')).status).toBe(401)
    const me = await register()
    const res = await api('/api/calls/ice-servers', { token: me.accessToken })
    expect(res.status).toBe(200)
    expect(res.headers.get('cache-control')).toBe('no-store')
    expect(await res.json()).toEqual({ iceServers: [] })
  })
})
