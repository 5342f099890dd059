import { runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it, type ExpectStatic } from 'vitest'
import { getConversationRoom, getUserHub } from '../worker/durable-objects'
import type { AuthResult, ClientMessage, HistoryPage, MessageEvent } from '../worker/shared/protocol'
import type { ConversationRoom } from '../worker/conversation/ConversationRoom'
import { RateLimiter } from '../worker/conversation/rate-limit'
import { migrateRoom } from '../worker/conversation/room-schema'
import { DELIVERY_TIMEOUT_MS, MAX_DELIVERY_RETRIES, type UserHub } from '../worker/user/UserHub'
import { api, bobWithChatOpen, createGroup, Device, json, openChat, register, textSend, historyOf } from './helpers'
import { drainOutbox, firstPushes, newPushSubscription, receivedPushes, subscribe, waitFor, type FakeSubscription } from './push-helpers'

async function pair() {
  const alice = await register()
  const bob = await register()
  const conv = await openChat(alice, bob)
  return { alice, bob, conv }
}

async function setRoomClock(conversationId: string, now: () => number) {
  await runInDurableObject<ConversationRoom, void>(getConversationRoom(env, conversationId), (room) => {
    room.now = now
  })
}

function recall(conversationId: string, targetSeq: number): ClientMessage {
  return { type: 'recall', conversationId, clientMsgId: crypto.randomUUID(), targetSeq }
}

describe('receipts', () => {
  it('move delivered and read cursors forward only, and tell every member', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    for (let i = 0; i < 3; i++) a.send(textSend(conv.id, `r${i}`))
    for (let i = 0; i < 3; i++) await a.next('ack')

    b.send({ type: 'delivered', conversationId: conv.id, seq: 3 })
    expect(await a.receiptOf(bob.user.id)).toEqual({ userId: bob.user.id, deliveredSeq: 3, readSeq: 0 })

    b.send({ type: 'read', conversationId: conv.id, seq: 2 })
    expect(await a.receiptOf(bob.user.id, (r) => r.readSeq === 2)).toEqual({ userId: bob.user.id, deliveredSeq: 3, readSeq: 2 })

    // Backwards is ignored; beyond the end is clamped to the last seq.
    b.send({ type: 'read', conversationId: conv.id, seq: 1 })
    b.send({ type: 'read', conversationId: conv.id, seq: 99 })
    expect(await a.receiptOf(bob.user.id, (r) => r.readSeq !== 2)).toEqual({ userId: bob.user.id, deliveredSeq: 3, readSeq: 3 })

    b.send({ type: 'sync', conversationId: conv.id, afterSeq: 3 })
    const page = await b.next('events')
    expect(page.receipts).toEqual(
      expect.arrayContaining([
        { userId: bob.user.id, deliveredSeq: 3, readSeq: 3 },
        // Sending counts as having read everything up to one's own message.
        { userId: alice.user.id, deliveredSeq: 3, readSeq: 3 },
      ]),
    )
    a.close()
    b.close()
  })

  it('a wake before the cursors were stored reads each sender’s own moves back from the log', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const room = getConversationRoom(env, conv.id)
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    await a.sendAndAck(textSend(conv.id, 'first'))
    await drainOutbox(conv.id)
    await runDurableObjectAlarm(room)
    // Own moves are stored by the alarm (10 s on) or a commit made anyway; the ticks' flushes of
    // these plain messages make none. Reading state back now is a crash right after the acks.
    await a.sendAndAck(textSend(conv.id, 'second'))
    await b.sendAndAck(textSend(conv.id, 'third'))
    await a.sendAndAck(textSend(conv.id, 'fourth'))
    const cursors = await runInDurableObject<ConversationRoom, { stored: Record<string, number>; loaded: Record<string, number> }>(room, (r, state) => {
      const read = () => Object.fromEntries(state.storage.sql.exec<{ user_id: string; read_seq: number }>('SELECT user_id, read_seq FROM members').toArray().map((m) => [m.user_id, m.read_seq]))
      const stored = read()
      const room = r as unknown as { loadState(): void; members: Map<string, { readSeq: number }> }
      room.loadState()
      return { stored, loaded: Object.fromEntries([...room.members].map(([id, m]) => [id, m.readSeq])) }
    })
    // Storage still has the cursors of the first flush; the log says each sender read up to their last message.
    expect(cursors.stored).toEqual({ [alice.user.id]: 1, [bob.user.id]: 0 })
    expect(cursors.loaded).toEqual({ [alice.user.id]: 4, [bob.user.id]: 3 })
    // And a sync shows it, as a later wake would.
    b.send({ type: 'sync', conversationId: conv.id, afterSeq: 4 })
    expect((await b.next('events')).receipts).toEqual(expect.arrayContaining([{ userId: alice.user.id, deliveredSeq: 4, readSeq: 4 }, { userId: bob.user.id, deliveredSeq: 3, readSeq: 3 }]))
    a.close()
    b.close()
  })

  it('a room stored before cursors had a mark takes the log’s end as its mark (its cursors were stored with each event)', async ({ expect }) => {
    const { alice, conv } = await pair()
    const a = await Device.connect(alice)
    for (const text of ['one', 'two']) await a.sendAndAck(textSend(conv.id, text))
    a.close()
    const mark = await runInDurableObject<ConversationRoom, string | undefined>(getConversationRoom(env, conv.id), (_r, state) => {
      const sql = state.storage.sql
      sql.exec(`UPDATE meta SET value = '3' WHERE key = 'version'`)
      sql.exec(`DELETE FROM meta WHERE key = 'cursors_seq'`)
      migrateRoom(sql)
      return sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'cursors_seq'`).toArray()[0]?.value
    })
    expect(mark).toBe('2')
  })

  it('a non-member cannot move anyone’s cursor', async ({ expect }) => {
    const { conv } = await pair()
    const mallory = await register()
    const m = await Device.connect(mallory)
    m.send({ type: 'read', conversationId: conv.id, seq: 1 })
    expect((await m.next('error')).code).toBe('NOT_MEMBER')
    m.close()
  })
})

describe('edit', () => {
  it('replaces the text of one’s own message everywhere, as an event', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    a.send(textSend(conv.id, 'teh typo'))
    await a.next('ack')
    a.send({ type: 'edit', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: 1, body: { kind: 'text', text: 'the typo' } })
    expect((await a.next('ack')).seq).toBe(2)
    const edit = await b.next((m) => m.type === 'event' && m.event.type === 'edit')
    expect(edit.type === 'event' && edit.event).toMatchObject({ type: 'edit', targetSeq: 1, body: { kind: 'text', text: 'the typo' } })

    b.send({ type: 'edit', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: 1, body: { kind: 'text', text: 'hijack' } })
    expect((await b.next('error')).code).toBe('NOT_ALLOWED')

    await drainOutbox(conv.id)
    const history = await json<HistoryPage>(await api(`/api/conversations/${conv.id}/messages`, { token: bob.accessToken }))
    const original = history.events.find((e) => e.seq === 1) as MessageEvent
    expect(original.body).toEqual({ kind: 'text', text: 'the typo' })
    expect(original.editedAt).toBeTypeOf('number')
    a.close()
    b.close()
  })
})

describe('recall', () => {
  it('is accepted at 119.999 s and refused at 120.001 s after the server timestamp', async ({ expect }) => {
    const { alice, conv } = await pair()
    const t0 = 1_800_000_000_000
    await setRoomClock(conv.id, () => t0)
    const a = await Device.connect(alice)
    a.send(textSend(conv.id, 'first'))
    a.send(textSend(conv.id, 'second'))
    await a.next('ack')
    await a.next('ack')

    await setRoomClock(conv.id, () => t0 + 119_999)
    a.send(recall(conv.id, 1))
    expect((await a.next('ack')).seq).toBe(3)

    await setRoomClock(conv.id, () => t0 + 120_001)
    a.send(recall(conv.id, 2))
    const late = await a.next('error')
    expect(late.code).toBe('TOO_LATE')
    expect((await getConversationRoom(env, conv.id).stats()).lastSeq).toBe(3)
    a.close()
  })

  it('erases the content in the room log and D1, tells online devices at once and offline ones on sync', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    a.send(textSend(conv.id, 'oops, secret'))
    await a.next('ack')
    a.send({ type: 'edit', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: 1, body: { kind: 'text', text: 'oops, secret v2' } })
    await a.next('ack')
    await drainOutbox(conv.id)
    b.close()

    a.send(recall(conv.id, 1))
    expect((await a.next('ack')).seq).toBe(3)
    await drainOutbox(conv.id)

    const room = getConversationRoom(env, conv.id)
    const logBodies = await runInDurableObject(room, (_r, state) =>
      state.storage.sql.exec<{ body: string | null }>('SELECT body FROM events').toArray().map((r) => r.body),
    )
    expect(logBodies.join(' ')).not.toContain('secret')
    const d1 = await (await historyOf(conv.id)).prepare('SELECT body, recalled_by FROM messages WHERE conversation_id = ? ORDER BY seq').bind(conv.id).all<{ body: string | null; recalled_by: string | null }>()
    expect(JSON.stringify(d1.results)).not.toContain('secret')
    expect(d1.results[0]!.recalled_by).toBe(alice.user.id)

    // Bob was offline: on sync he learns of the recall and never sees the text.
    const b2 = await Device.connect(bob)
    b2.send({ type: 'sync', conversationId: conv.id, afterSeq: 0 })
    const page = await b2.next('events')
    expect(JSON.stringify(page)).not.toContain('secret')
    expect(page.events.map((e) => e.type)).toEqual(['message', 'edit', 'recall'])
    expect(page.events[0]).toMatchObject({ body: null, recalled: { by: alice.user.id, byAdmin: false } })

    // Alice's other device was online and got it at once.
    const recallSeen = a.frames.find((m) => m.type === 'event' && m.event.type === 'recall')
    expect(recallSeen).toBeDefined()
    a.close()
    b2.close()
  })

  it('only the sender may recall in a direct chat', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    a.send(textSend(conv.id, 'mine'))
    await a.next('ack')
    b.send(recall(conv.id, 1))
    expect((await b.next('error')).code).toBe('NOT_ALLOWED')
    a.send(recall(conv.id, 1))
    await a.next('ack')
    a.send(recall(conv.id, 1))
    expect((await a.next('error')).code).toBe('NOT_ALLOWED')
    a.close()
    b.close()
  })
})

describe('rate limit', () => {
  it('refuses a flood from one member with RATE_LIMITED and lets the other member write', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    const t = 1_900_000_000_000
    await setRoomClock(conv.id, () => t)
    const codes: string[] = []
    for (let i = 0; i < 35; i++) {
      const msg = textSend(conv.id, `flood ${i}`)
      a.send(msg)
      const reply = await a.next((m) => (m.type === 'ack' || m.type === 'error') && (m.type === 'ack' ? m.clientMsgId : m.ref) === (msg as { clientMsgId: string }).clientMsgId)
      codes.push(reply.type === 'error' ? reply.code : reply.type)
    }
    expect(codes.filter((c) => c === 'ack')).toHaveLength(30)
    expect(codes.slice(30)).toEqual(Array(5).fill('RATE_LIMITED'))
    expect((await b.sendAndAck(textSend(conv.id, 'I can still talk'))).seq).toBe(31)
    // A second later the bucket has refilled by ten.
    await setRoomClock(conv.id, () => t + 1000)
    expect((await a.sendAndAck(textSend(conv.id, 'calm now'))).seq).toBe(32)
    a.close()
    b.close()
  })

  it('answers a retry of an acked write with its ack over the rate and after a block, and a retry costs no budget', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const t = 1_900_000_000_000
    await setRoomClock(conv.id, () => t)
    const first = textSend(conv.id, 'the one that got through')
    expect((await a.sendAndAck(first)).seq).toBe(1)
    // Retries, on the hub and on a writer socket: each answered with seq 1, none charged.
    const writer = await Device.writer(alice, conv.id)
    for (let i = 0; i < 40; i++) expect((await (i % 2 ? writer : a).sendAndAck(first)).seq).toBe(1)
    for (let i = 0; i < 29; i++) await a.sendAndAck(textSend(conv.id, `more ${i}`))
    const over = textSend(conv.id, 'over the rate')
    a.send(over)
    expect(await a.next('error')).toMatchObject({ code: 'RATE_LIMITED', ref: (over as { clientMsgId: string }).clientMsgId })
    expect((await a.sendAndAck(first)).seq).toBe(1)
    // Bob blocks Alice: new writes are refused, the retry still gets its ack; nothing was written.
    expect((await api('/api/blocks', { token: bob.accessToken, body: { userId: alice.user.id } })).status).toBeLessThan(300)
    await setRoomClock(conv.id, () => t + 60_000)
    const blocked = textSend(conv.id, 'after the block')
    writer.send(blocked)
    expect((await writer.next('error')).code).toBe('FORBIDDEN')
    expect((await writer.sendAndAck(first)).seq).toBe(1)
    const log = await runInDurableObject<ConversationRoom, number>(getConversationRoom(env, conv.id), (room) => room['lastSeq'])
    expect(log).toBe(30)
    a.close()
    writer.close()
  })
})

/** Moves the hub's clock and runs one tick, as its timer would. */
async function tickAt(hub: DurableObjectStub<UserHub>, now: number) {
  await runInDurableObject<UserHub, void>(hub, async (h) => {
    h.now = () => now
    await h.tick()
  })
}

/**
 * Bob's device never confirms seqs 1–3 (1 recalled by alice, 2 a message, 3 the recall): the hub
 * resends all three MAX_DELIVERY_RETRIES times, 1 always recalled, then pushes once, for 2; the
 * secret of 1 is in no frame and no push.
 */
async function expectRecalledResendsThenOnePush(expect: ExpectStatic, hub: DurableObjectStub<UserHub>, b: Device, sub: FakeSubscription, aliceId: string, secret: string) {
  let clock = Date.now()
  const rounds: number[][] = []
  for (let attempt = 1; attempt <= MAX_DELIVERY_RETRIES; attempt++) {
    clock += DELIVERY_TIMEOUT_MS + 1
    await tickAt(hub, clock)
    const seqs: number[] = []
    for (let i = 0; i < 3; i++) {
      const f = await b.next('event')
      if (f.type === 'event') seqs.push(f.event.seq)
      if (f.type === 'event' && f.event.seq === 1) expect(f.event).toMatchObject({ type: 'message', body: null, recalled: { by: aliceId } })
    }
    rounds.push(seqs.sort((x, y) => x - y))
  }
  expect(rounds).toEqual([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
  clock += DELIVERY_TIMEOUT_MS + 1
  await tickAt(hub, clock)
  expect((await hub.stats()).pending).toBe(0)
  const pushes = await firstPushes(sub)
  await new Promise((r) => setTimeout(r, 300))
  const after = await receivedPushes(sub)
  // One push, for the newest message; the recalled one is not announced.
  expect(after.received).toHaveLength(1)
  expect(pushes.received[0]!.payload).toMatchObject({ seq: 2, body: 'second' })
  // Exactly three resends.
  expect(b.frames.filter((m) => m.type === 'event')).toEqual([])
  expect(JSON.stringify(b.frames)).not.toContain(secret)
  expect(JSON.stringify(after)).not.toContain(secret)
}

describe('server-to-device retry', () => {
  it(`resends an unconfirmed event ${MAX_DELIVERY_RETRIES} times, then hands it to push`, async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const sub = await newPushSubscription()
    await subscribe(bob, sub)
    const b = await Device.connect(bob)
    const a = await Device.connect(alice)
    a.send(textSend(conv.id, 'are you there?'))
    await a.next('ack')
    await b.next((m) => m.type === 'event' && m.event.seq === 1)

    const hub = getUserHub(env, bob.user.id)
    let clock = Date.now()
    for (let attempt = 1; attempt <= MAX_DELIVERY_RETRIES; attempt++) {
      clock += DELIVERY_TIMEOUT_MS + 1
      await tickAt(hub, clock)
      // The same event again: the device deduplicates by seq.
      await b.next((m) => m.type === 'event' && m.event.seq === 1)
    }
    expect((await hub.stats()).pending).toBe(1)
    clock += DELIVERY_TIMEOUT_MS + 1
    await tickAt(hub, clock)
    expect((await hub.stats()).pending).toBe(0)
    const pushes = await firstPushes(sub)
    expect(pushes.received[0]!.payload).toEqual({ conversationId: conv.id, seq: 1, title: alice.user.displayName, body: 'are you there?' })
    // Exactly three resends: nothing more arrives.
    await new Promise((r) => setTimeout(r, 100))
    expect(b.frames.filter((m) => m.type === 'event' && m.event.seq === 1)).toHaveLength(0)
    a.close()
    b.close()
  })

  it('resends events as they are now: after a recall, never the old text, and pushes once', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const sub = await newPushSubscription()
    await subscribe(bob, sub)
    const b = await Device.connect(bob)
    const a = await Device.connect(alice)
    const secret = `canary-${crypto.randomUUID()}`
    await a.sendAndAck(textSend(conv.id, secret))
    await a.sendAndAck(textSend(conv.id, 'second'))
    await b.next((m) => m.type === 'event' && m.event.seq === 2)
    await a.sendAndAck(recall(conv.id, 1))
    await b.next((m) => m.type === 'event' && m.event.type === 'recall')
    // Bob's device never confirms. From here on, no frame may carry the secret.
    b.frames.length = 0
    await expectRecalledResendsThenOnePush(expect, getUserHub(env, bob.user.id), b, sub, alice.user.id, secret)
    a.close()
    b.close()
  })

  it('an open chat that never confirms what the room gave it straight: the hub resends it 3 times as it is now, then pushes once', async ({ expect }) => {
    const { alice, bob, conv, a, bobChat: b, bobWriter: bWriter } = await bobWithChatOpen()
    const sub = await newPushSubscription()
    await subscribe(bob, sub)
    const secret = `canary-${crypto.randomUUID()}`
    await a.sendAndAck(textSend(conv.id, secret))
    await a.sendAndAck(textSend(conv.id, 'second'))
    await a.sendAndAck(recall(conv.id, 1))
    // All three went straight to the open chat, none through the hub.
    for (let seq = 1; seq <= 3; seq++) await bWriter.next((m) => m.type === 'event' && m.event.seq === seq)
    expect(b.frames.filter((m) => m.type === 'event')).toEqual([])
    // Unconfirmed for a second: the room hands the debt to bob's hub.
    const hub = getUserHub(env, bob.user.id)
    await expect.poll(async () => (await hub.stats()).pending, { timeout: 3000, interval: 50 }).toBe(1)
    await expectRecalledResendsThenOnePush(expect, hub, b, sub, alice.user.id, secret)
    for (const d of [a, b, bWriter]) d.close()
  })

  it('stops resending once the device confirms, and a confirmed delivery writes nothing', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const b = await Device.connect(bob)
    const a = await Device.connect(alice)
    a.send(textSend(conv.id, 'got it?'))
    await a.next('ack')
    await b.next('event')
    const hub = getUserHub(env, bob.user.id)
    expect((await hub.stats()).pending).toBe(1)
    b.send({ type: 'delivered', conversationId: conv.id, seq: 1 })
    await a.receiptOf(bob.user.id, (r) => r.deliveredSeq === 1)
    expect((await hub.stats()).pending).toBe(0)
    await tickAt(hub, Date.now() + 10 * DELIVERY_TIMEOUT_MS)
    const rows = await runInDurableObject(hub, (_h, state) => state.storage.sql.exec<{ n: number }>('SELECT count(*) AS n FROM unconfirmed').one().n)
    expect(rows).toBe(0)
    await new Promise((r) => setTimeout(r, 100))
    expect(b.frames.filter((m) => m.type === 'event')).toHaveLength(0)
    a.close()
    b.close()
  })

  it('events committed together reach each hub in one call, and its devices in seq order', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const b = await Device.connect(bob)
    const a = await Device.connect(alice)
    a.send(textSend(conv.id, 'first'))
    await a.next('ack')
    await b.next('event')
    const hub = getUserHub(env, bob.user.id)
    const before = await hub.stats()
    // Five writes in one turn of the room: their fan-out is queued for the next turn, together.
    const seqs = await runInDurableObject<ConversationRoom, number[]>(getConversationRoom(env, conv.id), async (room) => {
      const acks = await Promise.all(Array.from({ length: 5 }, (_, i) => room.appendMessage(conv.id, alice.user.id, crypto.randomUUID(), { kind: 'text', text: `together ${i}` })))
      return acks.map((r) => (r.ok ? r.value.seq : -1))
    })
    expect(seqs).toEqual([2, 3, 4, 5, 6])
    const seen = () => b.frames.flatMap((m) => (m.type === 'event' ? [m.event.seq] : []))
    await waitFor(async () => seen().includes(6))
    expect(seen()).toEqual([2, 3, 4, 5, 6])
    const after = await hub.stats()
    expect(after.deliveries - before.deliveries).toBe(5)
    expect(after.deliverCalls - before.deliverCalls).toBe(1)
    a.close()
    b.close()
  })

  it('tracks the sender’s other devices, not the device that sent (it has the ack)', async ({ expect }) => {
    const { alice, conv } = await pair()
    const sending = await Device.connect(alice)
    // A second device is a second session: log in again.
    const laptop = await json<AuthResult>(await api('/api/auth/login', { body: { handle: alice.user.handle, password: 'correct horse battery' } }))
    const other = await Device.connect(laptop)
    const send = textSend(conv.id, 'from my phone')
    await sending.sendAndAck(send)
    // The other device gets the event; the sending one has the ack and its own copy (a text
    // message has nothing the server filled in, so it is not echoed back)…
    await other.next((m) => m.type === 'event' && m.event.seq === 1)
    await new Promise((r) => setTimeout(r, 100))
    expect(sending.frames.some((m) => m.type === 'event')).toBe(false)
    // …but only the other device's copy waits for a confirmation and would be resent.
    const hub = getUserHub(env, alice.user.id)
    expect((await hub.stats()).pending).toBe(1)
    other.send({ type: 'delivered', conversationId: conv.id, seq: 1 })
    await waitFor(async () => ((await hub.stats()).pending === 0 ? true : null))
    // A repeat of the acked send is answered with the same seq and leaves nothing behind.
    const again = await sending.sendAndAck(send)
    expect(again.seq).toBe(1)
    expect((await hub.stats()).pending).toBe(0)
    sending.close()
    other.close()
  })

  it('after a crash, what was owed for over a second becomes a push when the alarm fires', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const sub = await newPushSubscription()
    await subscribe(bob, sub)
    const b = await Device.connect(bob)
    const a = await Device.connect(alice)
    await a.sendAndAck(textSend(conv.id, 'owed'))
    await b.next('event')
    const hub = getUserHub(env, bob.user.id)
    // A tick after the grace second writes the owed delivery down...
    await tickAt(hub, Date.now() + 1_500)
    const stored = await runInDurableObject(hub, (_h, state) => state.storage.sql.exec('SELECT * FROM unconfirmed').toArray())
    expect(stored).toEqual([expect.objectContaining({ conversation_id: conv.id, push_seq: 1 })])
    // ...then the device goes and memory is lost, as in a crash.
    b.close()
    await runInDurableObject<UserHub, void>(hub, (h) => {
      ;(h as unknown as { tracker: { forget(s: string, c: string): void } }).tracker.forget(b.sessionId, conv.id)
    })
    expect(await runDurableObjectAlarm(hub)).toBe(true)
    const pushes = await firstPushes(sub)
    expect(pushes.received[0]!.payload).toMatchObject({ conversationId: conv.id, seq: 1, body: 'owed' })
    a.close()
  })
})

describe('sync after reconnect', () => {
  it('pages 10,000 missed messages in order, with no gap and no duplicate', { timeout: 120_000 }, async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const room = getConversationRoom(env, conv.id)
    await runInDurableObject<ConversationRoom, void>(room, (r) => {
      r.limiter = new RateLimiter(1e9, 1e9)
    })
    const N = 10_000
    for (let i = 0; i < N; i += 500) {
      await Promise.all(
        Array.from({ length: 500 }, (_, j) => room.appendMessage(conv.id, alice.user.id, crypto.randomUUID(), { kind: 'text', text: `bulk ${i + j}` })),
      )
    }
    const b = await Device.connect(bob)
    const seqs: number[] = []
    let after = 0
    for (;;) {
      b.send({ type: 'sync', conversationId: conv.id, afterSeq: after })
      const page = await b.next('events', 10_000)
      for (const e of page.events) seqs.push(e.seq)
      after = seqs[seqs.length - 1] ?? after
      if (!page.hasMore) {
        expect(page.lastSeq).toBe(N)
        break
      }
    }
    expect(seqs).toHaveLength(N)
    expect(seqs.every((s, i) => s === i + 1)).toBe(true)
    b.close()
  })

  it('answers a gap request for an exact range', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    for (let i = 0; i < 10; i++) a.send(textSend(conv.id, `g${i}`))
    for (let i = 0; i < 10; i++) await a.next('ack')
    const b = await Device.connect(bob)
    // A client holding 1–3 and 7–10 asks for what lies between.
    b.send({ type: 'sync', conversationId: conv.id, afterSeq: 3, limit: 3 })
    const page = await b.next('events')
    expect(page.events.map((e) => e.seq)).toEqual([4, 5, 6])
    expect(page.hasMore).toBe(true)
    a.close()
    b.close()
  })
})

describe('replies and reactions', () => {
  it('a reply quotes an existing message; reactions are events; bad targets and non-emoji are refused', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    const first = await a.sendAndAck(textSend(conv.id, 'lunch?'))
    const reply = await b.sendAndAck({ type: 'send', conversationId: conv.id, clientMsgId: crypto.randomUUID(), body: { kind: 'text', text: 'yes!', replyTo: { seq: first.seq } } })
    const seen = await a.next((m) => m.type === 'event' && m.event.seq === reply.seq)
    expect(seen.type === 'event' && seen.event.type === 'message' && seen.event.body).toEqual({ kind: 'text', text: 'yes!', replyTo: { seq: first.seq } })

    const bogus = textSend(conv.id, 'to nowhere')
    ;(bogus as { body: { replyTo?: { seq: number } } }).body.replyTo = { seq: 999 }
    b.send(bogus)
    expect((await b.next('error')).code).toBe('BAD_REQUEST')

    const r = await b.sendAndAck({ type: 'react', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: first.seq, emoji: '👍', on: true })
    const ev = await a.next((m) => m.type === 'event' && m.event.type === 'reaction')
    expect(ev.type === 'event' && ev.event).toMatchObject({ type: 'reaction', seq: r.seq, targetSeq: first.seq, emoji: '👍', on: true, senderId: bob.user.id })
    b.send({ type: 'react', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: first.seq, emoji: 'lol', on: true } as never)
    expect((await b.next('error')).code).toBe('BAD_REQUEST')
    await a.sendAndAck({ type: 'recall', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: first.seq })
    b.send({ type: 'react', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: first.seq, emoji: '❤️', on: true })
    expect((await b.next('error')).code).toBe('NOT_FOUND')
    a.close()
    b.close()
  })
})

describe('receipt fan-out', () => {
  it('tells the writers whose ticks change and the reader’s own devices, not every member', async ({ expect }) => {
    const owner = await register()
    const writer = await register()
    const lurker = await register()
    const g = await createGroup(owner, [writer, lurker], 'receipts')
    const dw = await Device.connect(writer)
    const dl = await Device.connect(lurker)
    const dOwner = await Device.connect(owner)
    const dOwner2 = await Device.connect(owner)
    const m = await dw.sendAndAck(textSend(g.id, 'did you read this?'))
    dOwner.send({ type: 'read', conversationId: g.id, seq: m.seq })
    expect((await dw.receiptOf(owner.user.id, (r) => r.readSeq === m.seq)).readSeq).toBe(m.seq)
    await dOwner2.receiptOf(owner.user.id)
    await new Promise((r) => setTimeout(r, 200))
    expect(dl.frames.some((f) => (f.type === 'receipt' && f.receipt.userId === owner.user.id) || (f.type === 'receipts' && f.receipts.some((r) => r.userId === owner.user.id)))).toBe(false)
    for (const d of [dw, dl, dOwner, dOwner2]) d.close()
  })
})
