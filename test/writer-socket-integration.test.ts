import { runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import { getConversationRoom, getUserHub } from '../worker/durable-objects'
import type { ConversationRoom } from '../worker/conversation/ConversationRoom'
import type { AuthResult } from '../worker/shared/protocol'
import { histogram, scrape, value } from './metrics-helpers'
import { api, bobWithChatOpen, createGroup, Device, json, openChat, register, roomKnowsSockets, textSend, ticketFor, writerUpgrade } from './helpers'

async function pair() {
  const alice = await register()
  const bob = await register()
  const conv = await openChat(alice, bob)
  return { alice, bob, conv }
}

/** A second signed-in device of the same person (a session of its own). */
async function secondDevice(a: AuthResult): Promise<AuthResult> {
  return json<AuthResult>(await api('/api/auth/login', { body: { handle: a.user.handle, password: 'correct horse battery' } }))
}

const closedOf = (d: Device) => new Promise<{ code: number; reason: string }>((resolve) => d.ws.addEventListener('close', (e) => resolve({ code: e.code, reason: e.reason })))
const quiet = (ms = 150) => new Promise((r) => setTimeout(r, ms))
const lastSeq = (conversationId: string) =>
  runInDurableObject<ConversationRoom, number>(getConversationRoom(env, conversationId), (room) => room['lastSeq'])
const owedHere = (conversationId: string) =>
  runInDurableObject<ConversationRoom, number>(getConversationRoom(env, conversationId), (room) => room['direct'].size)

describe('writer socket', () => {
  // First in the file: counts of earlier tests' rooms reach the metrics when those rooms go quiet.
  it('counts writes on writer sockets in the metrics like writes through the hub: accepted, timed, refused', { timeout: 30_000 }, async ({ expect }) => {
    const { alice, conv } = await pair()
    const before = await scrape()
    const writer = await Device.writer(alice, conv.id)
    const retry = textSend(conv.id, 'once')
    for (let i = 0; i < 3; i++) await writer.sendAndAck(textSend(conv.id, `m${i}`))
    await writer.sendAndAck(retry)
    await writer.sendAndAck(retry)
    writer.send('{')
    await writer.next('error')
    await expect.poll(async () => value(await scrape(), 'messages_accepted_total') - value(before, 'messages_accepted_total'), { timeout: 10_000, interval: 200 }).toBe(4)
    const after = await scrape()
    expect(histogram(after).count - histogram(before).count).toBe(4)
    expect(value(after, 'messages_refused_total', { code: 'BAD_REQUEST' }) - value(before, 'messages_refused_total', { code: 'BAD_REQUEST' })).toBe(1)
    writer.close()
  })
  // One write at a time here: the test pool's in-process sockets can swap pipelined frames
  // (docs/decisions.md); pipelining on a writer socket is checked in test/e2e/frame-order.test.ts.
  it('takes writes straight to the room: acks in order, the peer gets every event', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const hub = await Device.connect(alice)
    const writer = await Device.writer(alice, conv.id)
    expect(writer.sessionId).toBe(hub.sessionId)
    const peer = await Device.connect(bob)
    const sends = Array.from({ length: 5 }, (_, i) => textSend(conv.id, `in order ${i}`))
    const acks = []
    for (const s of sends) acks.push(await writer.sendAndAck(s))
    expect(acks.map((a) => a.seq)).toEqual([1, 2, 3, 4, 5])
    for (let seq = 1; seq <= 5; seq++) {
      const e = await peer.next<'event'>((m) => m.type === 'event' && m.event.seq === seq)
      expect(e.event).toMatchObject({ type: 'message', senderId: alice.user.id, body: { kind: 'text', text: `in order ${seq - 1}` } })
    }
    // A retry of an acked write is answered with its first seq and writes nothing.
    const again = await writer.sendAndAck(sends[2]!)
    expect(again.seq).toBe(3)
    expect(await lastSeq(conv.id)).toBe(5)
    // The writing device has the acks: its chat socket is not sent its own text.
    await quiet()
    expect(hub.frames.some((m) => m.type === 'event')).toBe(false)
    for (const d of [hub, writer, peer]) d.close()
  })

  it('shows the writer\'s own writes on their other devices and tabs, including a device that connects later', async ({ expect }) => {
    const { alice, conv } = await pair()
    const phone = await Device.connect(alice)
    const writer = await Device.writer(alice, conv.id)
    await writer.sendAndAck(textSend(conv.id, 'only my phone is online'))
    // A laptop connects after the writer socket opened: the room learns of it before its hello.
    const laptop = await Device.connect(await secondDevice(alice))
    const ack = await writer.sendAndAck(textSend(conv.id, 'now the laptop sees it'))
    const seen = await laptop.next<'event'>((m) => m.type === 'event' && m.event.seq === ack.seq)
    expect(seen.event).toMatchObject({ senderId: alice.user.id, body: { text: 'now the laptop sees it' } })
    // A second tab of the phone (same session) sees it too; the room cannot tell the tabs apart.
    const tab = await Device.connect(alice)
    const third = await writer.sendAndAck(textSend(conv.id, 'both tabs'))
    await tab.next((m) => m.type === 'event' && m.event.seq === third.seq)
    await laptop.next((m) => m.type === 'event' && m.event.seq === third.seq)
    // The laptop goes away; the phone's one tab left: nothing more reaches its chat socket.
    laptop.close()
    tab.close()
    await quiet(300)
    phone.frames.length = 0
    await writer.sendAndAck(textSend(conv.id, 'phone alone again'))
    await quiet()
    expect(phone.frames.filter((m) => m.type === 'event')).toEqual([])
    phone.close()
    writer.close()
  })

  it('sends the writer the events it cannot build itself: an edit, a reaction, a recall', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const writer = await Device.writer(alice, conv.id)
    const peer = await Device.connect(bob)
    const sent = await writer.sendAndAck(textSend(conv.id, 'typo hree'))
    const edit = { type: 'edit', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: sent.seq, body: { kind: 'text', text: 'typo here' } } as const
    await writer.sendAndAck(edit)
    expect((await writer.next('event')).event).toMatchObject({ type: 'edit', targetSeq: sent.seq })
    await writer.sendAndAck({ type: 'react', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: sent.seq, emoji: '👍', on: true })
    expect((await writer.next('event')).event).toMatchObject({ type: 'reaction', emoji: '👍' })
    await writer.sendAndAck({ type: 'recall', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: sent.seq })
    expect((await writer.next('event')).event).toMatchObject({ type: 'recall', targetSeq: sent.seq })
    await peer.next((m) => m.type === 'event' && m.event.type === 'recall')
    writer.close()
    peer.close()
  })

  it('gives an open chat the events straight, when it is open in every tab of the recipient; a confirmation there moves the tick', async ({ expect }) => {
    const { alice, bob, conv, a, bobChat, bobWriter } = await bobWithChatOpen()
    const hub = getUserHub(env, bob.user.id)
    const callsBefore = (await hub.stats()).deliverCalls
    const sent = await a.sendAndAck(textSend(conv.id, 'straight to the open chat'))
    const got = await bobWriter.next<'event'>((m) => m.type === 'event' && m.event.seq === sent.seq)
    expect(got.event).toMatchObject({ type: 'message', senderId: alice.user.id, body: { text: 'straight to the open chat' } })
    // Not through bob's hub: no call, nothing on his chat socket.
    await quiet()
    expect((await hub.stats()).deliverCalls).toBe(callsBefore)
    expect(bobChat.frames.filter((m) => m.type === 'event')).toEqual([])
    expect(await owedHere(conv.id)).toBe(1)
    // Confirmed on the writer socket: settled in the room, and alice sees it delivered.
    bobWriter.send({ type: 'delivered', conversationId: conv.id, seq: sent.seq })
    await a.receiptOf(bob.user.id, (r) => r.deliveredSeq === sent.seq)
    expect(await owedHere(conv.id)).toBe(0)

    // A second tab without this chat: the hub delivers again (to both tabs), not the writer socket.
    const otherTab = await Device.connect(bob)
    await roomKnowsSockets(conv.id, bob.user.id, 2)
    const second = await a.sendAndAck(textSend(conv.id, 'every tab sees this'))
    await bobChat.next((m) => m.type === 'event' && m.event.seq === second.seq)
    await otherTab.next((m) => m.type === 'event' && m.event.seq === second.seq)
    await quiet()
    expect(bobWriter.frames.filter((m) => m.type === 'event')).toEqual([])
    expect((await hub.stats()).deliverCalls).toBe(callsBefore + 1)
    for (const d of [a, bobChat, bobWriter, otherTab]) d.close()
  })

  it('hands what a writer socket did not confirm to the hub when it closes, which resends it at once to every tab of the device', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const a = await Device.connect(alice)
    // Two tabs of one device, each with the chat open.
    const tabs = [await Device.connect(bob), await Device.connect(bob)]
    const writers = [await Device.writer(bob, conv.id), await Device.writer(bob, conv.id)]
    await roomKnowsSockets(conv.id, bob.user.id, 2)
    const sent = await a.sendAndAck(textSend(conv.id, 'seen, never confirmed'))
    for (const w of writers) await w.next((m) => m.type === 'event' && m.event.seq === sent.seq)
    expect(tabs.flatMap((t) => t.frames).filter((m) => m.type === 'event')).toEqual([])
    writers[1]!.send({ type: 'delivered', conversationId: conv.id, seq: sent.seq })
    await expect.poll(() => owedHere(conv.id), { timeout: 3000, interval: 50 }).toBe(1)
    writers[0]!.close()
    const hub = getUserHub(env, bob.user.id)
    // At the hub's next tick, not a delivery timeout later, and on both tabs' chat sockets.
    for (const t of tabs) {
      const again = await t.next<'event'>((m) => m.type === 'event' && m.event.seq === sent.seq, 3000)
      expect(again.event).toMatchObject({ body: { text: 'seen, never confirmed' } })
    }
    expect(await owedHere(conv.id)).toBe(0)
    expect((await hub.stats()).pending).toBe(1)
    for (const d of [a, ...tabs, writers[1]!]) d.close()
  })

  it('gives nothing straight to a writer socket whose device has no chat socket online (nothing reported): the hub has it', async ({ expect }) => {
    const { alice, bob, conv, a, bobChat, bobWriter } = await bobWithChatOpen()
    bobChat.close()
    await roomKnowsSockets(conv.id, bob.user.id, 0)
    const hub = getUserHub(env, bob.user.id)
    const callsBefore = (await hub.stats()).deliverCalls
    await a.sendAndAck(textSend(conv.id, 'to the hub'))
    await expect.poll(async () => (await hub.stats()).deliverCalls, { timeout: 3000, interval: 50 }).toBe(callsBefore + 1)
    await quiet()
    expect(bobWriter.frames.filter((m) => m.type === 'event')).toEqual([])
    for (const d of [a, bobWriter]) d.close()
  })

  it('refuses bad input with a clear error and writes nothing', async ({ expect }) => {
    const { alice, bob, conv } = await pair()
    const other = await openChat(alice, await register())
    const writer = await Device.writer(alice, conv.id)
    const before = await lastSeq(conv.id)
    writer.send('not json')
    expect(await writer.next('error')).toMatchObject({ code: 'BAD_REQUEST', message: 'frame is not valid JSON' })
    const wrong = textSend(other.id, 'to another conversation')
    writer.send(wrong)
    expect(await writer.next('error')).toMatchObject({ code: 'BAD_REQUEST', ref: (wrong as { clientMsgId: string }).clientMsgId })
    writer.send({ type: 'sync', conversationId: conv.id, afterSeq: 0 })
    expect((await writer.next('error')).code).toBe('BAD_REQUEST')
    writer.send(JSON.stringify({ type: 'send', conversationId: conv.id, clientMsgId: crypto.randomUUID(), body: { kind: 'text', text: '' } }))
    expect((await writer.next('error')).code).toBe('BAD_REQUEST')
    writer.ws.send(new Uint8Array([1, 2, 3]))
    expect((await writer.next('error')).message).toBe('binary frames are not accepted here')
    expect(await lastSeq(conv.id)).toBe(before)
    expect(await lastSeq(other.id)).toBe(0)
    writer.close()
    void bob
  })

  it('opens for members only, once per ticket', async ({ expect }) => {
    const { alice, conv } = await pair()
    const outsider = await register()
    const refused = await writerUpgrade(await ticketFor(outsider), conv.id)
    expect(refused.status).toBe(404)
    expect((await json(refused)).error.code).toBe('NOT_FOUND')
    expect((await writerUpgrade('forged', conv.id)).status).toBe(401)
    expect((await writerUpgrade(await ticketFor(alice), 'not-an-id!')).status).toBe(404)
    const ticket = await ticketFor(alice)
    const first = await writerUpgrade(ticket, conv.id)
    expect(first.status).toBe(101)
    first.webSocket!.accept()
    expect((await writerUpgrade(ticket, conv.id)).status).toBe(401)
    first.webSocket!.close()
  })

  it('closes when the session is signed out, or its person is removed from the group', async ({ expect }) => {
    const owner = await register()
    const member = await register()
    const group = await createGroup(owner, [member, await register()])
    const laptop = await secondDevice(member)
    const memberWriter = await Device.writer(laptop, group.id)
    // Give the room time to register with the member's hub (it asks on accept).
    await quiet()
    const signedOut = closedOf(memberWriter)
    expect((await api('/api/auth/logout', { method: 'POST', token: laptop.accessToken })).status).toBe(204)
    expect(await signedOut).toMatchObject({ code: 4099, reason: 'UNAUTHORIZED' })

    const writer = await Device.writer(member, group.id)
    await writer.sendAndAck(textSend(group.id, 'still here'))
    const removed = closedOf(writer)
    expect((await api(`/api/conversations/${group.id}/members/${member.user.id}`, { method: 'DELETE', token: owner.accessToken })).status).toBeLessThan(300)
    expect(await removed).toMatchObject({ code: 4099, reason: 'NOT_MEMBER' })
    // And a new one is refused.
    expect((await writerUpgrade(await ticketFor(member), group.id)).status).toBe(404)
  })

})

