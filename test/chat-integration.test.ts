import { runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import { getConversationRoom } from '../worker/durable-objects'
import { ACTIVITY_MIRROR_MS, FLUSH_MIN_GAP_MS, type ConversationRoom } from '../worker/conversation/ConversationRoom'
import type { ConversationSummary, HistoryPage } from '../worker/shared/protocol'
import { api, Device, json, openChat, register, textSend, ticketFor, upgrade, historyOf } from './helpers'
import { drainOutbox, waitFor } from './push-helpers'

async function pair() {
  const alice = await register()
  const bob = await register()
  const conv = await openChat(alice, bob)
  return { alice, bob, conv }
}

async function d1Messages(conversationId: string) {
  const { results } = await (await historyOf(conversationId)).prepare('SELECT seq, client_msg_id, body FROM messages WHERE conversation_id = ? ORDER BY seq')
    .bind(conversationId)
    .all<{ seq: number; client_msg_id: string; body: string }>()
  return results
}

describe('conversations', () => {
  it('opens one direct chat per pair, whoever opens it', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const again = await openChat(bob, alice)
    expect(again.id).toBe(conv.id)
    expect(conv.members.map((m) => m.handle).sort()).toEqual([alice.user.handle, bob.user.handle].sort())
    expect(conv.title).toBe(bob.user.displayName)
    const list = await json(await api('/api/conversations', { token: bob.accessToken }))
    expect(list.conversations.map((c: { id: string }) => c.id)).toContain(conv.id)
  })

  it('refuses unknown handles and chats with yourself', async ({ expect }) => {
    const alice = await register()
    const missing = await api('/api/conversations', { token: alice.accessToken, body: { peerHandle: 'nobody_here_xyz' } })
    expect(missing.status).toBe(404)
    const self = await api('/api/conversations', { token: alice.accessToken, body: { peerHandle: alice.user.handle } })
    expect(self.status).toBe(400)
  })
})

describe('sending', () => {
  it('acks with gapless seqs in send order and delivers live to the peer', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    const b = await Device.connect(bob)
    // Clients send one write per conversation at a time: frame order on a socket is not relied on.
    const sends = Array.from({ length: 10 }, (_, i) => textSend(conv.id, `hello ${i}`))
    const acks = []
    for (const s of sends) {
      a.send(s)
      acks.push(await a.next((m) => m.type === 'ack' && m.clientMsgId === (s as { clientMsgId: string }).clientMsgId))
    }
    expect(acks.map((x) => x.type === 'ack' && x.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    for (let seq = 1; seq <= 10; seq++) {
      const ev = await b.next((m) => m.type === 'event' && m.event.seq === seq)
      expect(ev.type === 'event' && ev.event.type === 'message' && ev.event.body).toEqual({ kind: 'text', text: `hello ${seq - 1}` })
    }
    a.close()
    b.close()
  })

  it('returns the original seq for a retried clientMsgId and stores it once', async ({ expect }) => {
    const { alice, conv } = await pair()
    const a = await Device.connect(alice)
    const msg = textSend(conv.id, 'only once')
    a.send(msg)
    const first = await a.next('ack')
    a.send(textSend(conv.id, 'something else'))
    await a.next('ack')
    a.send(msg)
    const retry = await a.next('ack')
    expect(retry).toEqual(first)
    // A retry after reconnecting on another socket is just as idempotent.
    a.close()
    const a2 = await Device.connect(alice)
    a2.send(msg)
    expect(await a2.next('ack')).toEqual(first)
    await drainOutbox(conv.id)
    const rows = await d1Messages(conv.id)
    expect(rows.map((r) => r.seq)).toEqual([1, 2])
    expect(rows.filter((r) => r.client_msg_id === (msg as { clientMsgId: string }).clientMsgId)).toHaveLength(1)
    a2.close()
  })

  it('writes every acknowledged message to D1 exactly once, even when a flush repeats', async ({ expect }) => {
    const { alice, conv } = await pair()
    const a = await Device.connect(alice)
    for (let i = 0; i < 25; i++) {
      a.send(textSend(conv.id, `m${i}`))
      await a.next('ack')
    }
    await drainOutbox(conv.id)
    // Replaying from an old mark (as after a crash between the D1 batch and moving the mark) changes nothing.
    const room = getConversationRoom(env, conv.id)
    await runInDurableObject(room, async (instance, state) => {
      state.storage.sql.exec(`UPDATE meta SET value = '0' WHERE key = 'd1_seq'`)
      ;(instance as unknown as { d1Seq: number; d1SeqSaved: number }).d1Seq = 0
      ;(instance as unknown as { d1SeqSaved: number }).d1SeqSaved = 0
      // The safety-net alarm armed with the first of those events is what replays them (run by
      // drainOutbox below; set in the future so it cannot fire before the outbox is read).
      await state.storage.setAlarm(Date.now() + 60_000)
    })
    expect((await room.stats()).outbox).toBe(25)
    await drainOutbox(conv.id)
    const rows = await d1Messages(conv.id)
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1))
    expect(rows.map((r) => JSON.parse(r.body).text)).toEqual(Array.from({ length: 25 }, (_, i) => `m${i}`))
    const listed = await json<{ conversation: ConversationSummary }>(await api(`/api/conversations/${conv.id}`, { token: alice.accessToken }))
    expect(listed.conversation.lastSeq).toBe(25)
    a.close()
  })

  it('a busy room sends D1 one batch a tick: a write that lands while a batch is in flight waits for the next', async ({ expect }) => {
    const { alice, conv } = await pair()
    const room = getConversationRoom(env, conv.id)
    const text = (t: string) => ({ kind: 'text', text: t })
    const { during, started } = await runInDurableObject<ConversationRoom, { during: number; started: number }>(room, async (r) => {
      expect((await r.appendMessage(conv.id, alice.user.id, crypto.randomUUID(), text('first'), 'hub')).ok).toBe(true)
      const batches = (await r.stats()).d1Batches
      const started = Date.now()
      const flushing = r['startFlush']()
      // Microtasks only: D1's answer needs a turn of the event loop, so the batch is still in flight.
      for (let i = 0; i < 20; i++) await null
      const second = await r.appendMessage(conv.id, alice.user.id, crypto.randomUUID(), text('second'), 'hub')
      await flushing
      expect(second.ok && second.value.seq).toBe(2)
      return { during: (await r.stats()).d1Batches - batches, started }
    })
    expect(during).toBe(1)
    expect((await room.stats()).outbox).toBeGreaterThan(0)
    // The tick after it comes on its own (no alarm), FLUSH_MIN_GAP_MS after the first began.
    await waitFor(async () => (await room.stats()).outbox === 0, 5000)
    expect(Date.now() - started).toBeGreaterThanOrEqual(FLUSH_MIN_GAP_MS - 50)
    expect((await d1Messages(conv.id)).map((m) => m.seq)).toEqual([1, 2])
  })

  it('a tick writes its shard only (events and read cursors, one batch); the directory gets the activity every few minutes and when the room goes quiet', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const room = getConversationRoom(env, conv.id)
    const directory = async () => (await env.DB.prepare('SELECT last_seq FROM conversations WHERE id = ?').bind(conv.id).first<{ last_seq: number }>())!.last_seq
    const cursors = async () => {
      const { results } = await (await historyOf(conv.id)).prepare('SELECT user_id, read_seq FROM read_cursors WHERE conversation_id = ?').bind(conv.id).all<{ user_id: string; read_seq: number }>()
      return Object.fromEntries(results.map((r) => [r.user_id, r.read_seq]))
    }
    // Ticks only (their own timers), no alarm: the alarm is what catches a quiet room up.
    const ticked = () => waitFor(async () => (await room.stats()).outbox === 0, 5000)
    const a = await Device.connect(alice)
    await a.sendAndAck(textSend(conv.id, 'one'))
    await ticked()
    // The room's first tick mirrors its activity: it never had.
    await waitFor(async () => (await directory()) === 1, 5000)
    await a.sendAndAck(textSend(conv.id, 'two'))
    await a.sendAndAck(textSend(conv.id, 'three'))
    const b = await Device.connect(bob)
    b.send({ type: 'read', conversationId: conv.id, seq: 2 })
    await waitFor(async () => (await cursors())[bob.user.id] === 2, 5000)
    await ticked()
    // Sending implies having read: alice's cursor went with her messages.
    expect(await cursors()).toEqual({ [alice.user.id]: 3, [bob.user.id]: 2 })
    expect(await directory()).toBe(1)
    // The list is exact all the same, from the shard.
    const listed = await json<{ conversation: ConversationSummary }>(await api(`/api/conversations/${conv.id}`, { token: bob.accessToken }))
    expect(listed.conversation).toMatchObject({ lastSeq: 3, readSeq: 2, unread: 1 })
    // An alarm that finds no event since the one before: the room went quiet, the directory catches up.
    await runDurableObjectAlarm(room)
    expect(await directory()).toBe(1)
    await runDurableObjectAlarm(room)
    expect(await directory()).toBe(3)
    // Once ACTIVITY_MIRROR_MS has passed (set back here), a tick mirrors it, and storage keeps when.
    const mirroredAt = await runInDurableObject<ConversationRoom, number>(room, (r) => (r['activityMirroredAt'] -= ACTIVITY_MIRROR_MS))
    await a.sendAndAck(textSend(conv.id, 'four'))
    await waitFor(async () => (await directory()) === 4, 5000)
    // The next commit or alarm writes when: the alarm here.
    expect(await runDurableObjectAlarm(room)).toBe(true)
    const saved = await runInDurableObject<ConversationRoom, number>(room, (_, state) => Number(state.storage.sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'activity_mirrored_at'`).one().value))
    expect(saved).toBeGreaterThan(mirroredAt)
    a.close()
    b.close()
  })

  it('sends every event to every device of the sender too', async ({ expect }) => {
    const { alice, conv } = await pair()
    const laptop = await Device.connect(alice)
    const phone = await Device.connect(alice)
    laptop.send(textSend(conv.id, 'from laptop'))
    const ack = await laptop.next('ack')
    const seen = await phone.next('event')
    expect(seen.event.seq).toBe(ack.seq)
    expect(seen.event.senderId).toBe(alice.user.id)
    laptop.close()
    phone.close()
  })

  it('syncs missed events in order, in pages', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    for (let i = 0; i < 30; i++) a.send(textSend(conv.id, `n${i}`))
    for (let i = 0; i < 30; i++) await a.next('ack')
    const b = await Device.connect(bob)
    const got: number[] = []
    let after = 0
    for (;;) {
      b.send({ type: 'sync', conversationId: conv.id, afterSeq: after, limit: 12 })
      const page = await b.next('events')
      got.push(...page.events.map((e) => e.seq))
      after = got[got.length - 1] ?? after
      if (!page.hasMore) break
    }
    expect(got).toEqual(Array.from({ length: 30 }, (_, i) => i + 1))
    a.close()
    b.close()
  })
})

describe('history', () => {
  it('pages backwards from D1 with before/limit', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    for (let i = 0; i < 7; i++) {
      a.send(textSend(conv.id, `h${i}`))
      await a.next('ack')
    }
    await drainOutbox(conv.id)
    const p1 = await json<HistoryPage>(await api(`/api/conversations/${conv.id}/messages?limit=3`, { token: bob.accessToken }))
    expect(p1.events.map((m) => m.seq)).toEqual([5, 6, 7])
    expect(p1.nextBefore).toBe(5)
    const p2 = await json<HistoryPage>(await api(`/api/conversations/${conv.id}/messages?limit=3&before=5`, { token: bob.accessToken }))
    expect(p2.events.map((m) => m.seq)).toEqual([2, 3, 4])
    const p3 = await json<HistoryPage>(await api(`/api/conversations/${conv.id}/messages?limit=3&before=2`, { token: bob.accessToken }))
    expect(p3.events.map((m) => m.seq)).toEqual([1])
    expect(p3.nextBefore).toBeNull()
    expect(p1.events[0]).toMatchObject({ type: 'message', body: { kind: 'text', text: 'h4' } })
    const bad = await api(`/api/conversations/${conv.id}/messages?limit=1000`, { token: bob.accessToken })
    expect(bad.status).toBe(400)
    a.close()
  })
})

describe('authorisation', () => {
  it('a non-member can neither read, send nor sync, and nothing changes', async ({ expect }) => {
    const { alice, conv } = await pair()
    const mallory = await register()
    const history = await api(`/api/conversations/${conv.id}/messages`, { token: mallory.accessToken })
    expect(history.status).toBe(404)
    expect((await json(history)).error.code).toBe('NOT_FOUND')

    const m = await Device.connect(mallory)
    const intrusion = textSend(conv.id, 'let me in')
    m.send(intrusion)
    const refused = await m.next('error')
    expect(refused).toMatchObject({ code: 'NOT_MEMBER', ref: (intrusion as { clientMsgId: string }).clientMsgId })
    m.send({ type: 'sync', conversationId: conv.id, afterSeq: 0 })
    expect((await m.next('error')).code).toBe('NOT_MEMBER')
    expect((await getConversationRoom(env, conv.id).stats()).lastSeq).toBe(0)

    const a = await Device.connect(alice)
    a.send(textSend(conv.id, 'members only'))
    expect((await a.next('ack')).seq).toBe(1)
    m.close()
    a.close()
  })

  it('unauthenticated requests are refused', async ({ expect }) => {
    expect((await api('/api/conversations')).status).toBe(401)
    expect((await api('/api/ws/ticket', { method: 'POST' })).status).toBe(401)
  })
})

describe('socket tickets', () => {
  it('are single use', async ({ expect }) => {
    const alice = await register()
    const ticket = await ticketFor(alice)
    const first = await upgrade(ticket)
    expect(first.status).toBe(101)
    first.webSocket!.accept()
    const replay = await upgrade(ticket)
    expect(replay.status).toBe(401)
    first.webSocket!.close()
  })

  it('refuse a missing or forged ticket, an access token in its place and a foreign origin', async ({ expect }) => {
    const alice = await register()
    expect((await upgrade('')).status).toBe(401)
    expect((await upgrade('forged.ticket.value')).status).toBe(401)
    expect((await upgrade(alice.accessToken)).status).toBe(401)
    const foreign = await upgrade(await ticketFor(alice), { origin: 'https://evil.example' })
    expect(foreign.status).toBe(403)
    const same = await upgrade(await ticketFor(alice), { origin: 'http://echovalley.test' })
    expect(same.status).toBe(101)
    same.webSocket!.accept()
    same.webSocket!.close()
  })
})

describe('bad frames', () => {
  it('get an error frame, keep the socket open and change nothing', async ({ expect }) => {
    const { alice, conv } = await pair()
    const a = await Device.connect(alice)
    const bad: (string | object)[] = [
      'not json',
      '[]',
      'null',
      { type: 'nope' },
      { type: 'send' },
      { type: 'send', conversationId: conv.id, clientMsgId: 'not-a-uuid', body: { kind: 'text', text: 'x' } },
      { type: 'send', conversationId: conv.id, clientMsgId: crypto.randomUUID(), body: { kind: 'text', text: '   ' } },
      { type: 'send', conversationId: conv.id, clientMsgId: crypto.randomUUID(), body: { kind: 'text', text: 'x'.repeat(4001) } },
      { type: 'send', conversationId: conv.id, clientMsgId: crypto.randomUUID(), body: { kind: 'video', url: 'x' } },
      { type: 'sync', conversationId: conv.id, afterSeq: -1 },
      'x'.repeat(20_000),
    ]
    for (const frame of bad) {
      a.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
      const e = await a.next('error')
      expect(['BAD_REQUEST', 'PAYLOAD_TOO_LARGE']).toContain(e.code)
    }
    a.ws.send(new Uint8Array([1, 2, 3]))
    expect((await a.next('error')).code).toBe('BAD_REQUEST')
    expect((await getConversationRoom(env, conv.id).stats()).lastSeq).toBe(0)
    a.send(textSend(conv.id, 'still works'))
    expect((await a.next('ack')).seq).toBe(1)
    a.close()
  })
})
