import { createExecutionContext, createMessageBatch, getQueueResult, runDurableObjectAlarm, runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { ConversationRoom } from '../worker/conversation/ConversationRoom'
import { getConversationRoom, getUserHub } from '../worker/durable-objects'
import { handleQueue, PUSH_QUEUE } from '../worker/push/queue'
import { PUSH_COALESCE_MS, type UserHub } from '../worker/user/UserHub'
import type { PushJob } from '../worker/shared/jobs'
import { api, Device, openChat, register, textSend } from './helpers'
import { drainOutbox, newPushSubscription, offlineRecipient, receivedPushes, subscribe, waitFor } from './push-helpers'

const offlineBob = offlineRecipient

async function runBatch(jobs: PushJob[]) {
  const batch = createMessageBatch(PUSH_QUEUE, jobs.map((body, i) => ({ id: `m${i}`, timestamp: new Date(), attempts: 1, body })))
  const ctx = createExecutionContext()
  await handleQueue(batch, env)
  return getQueueResult(batch, ctx)
}

describe('web push for offline members', () => {
  it('delivers an RFC 8291 payload that the independent http_ece package decrypts', async ({ expect }) => {
    const { alice, conv, sub, a } = await offlineBob()
    a.send(textSend(conv.id, 'dinner at 8?'))
    await a.next('ack')
    const got = await waitFor(async () => {
      const r = await receivedPushes(sub)
      return r.received.length ? r : null
    })
    expect(got.rejected).toEqual([])
    expect(got.received).toHaveLength(1)
    expect(got.received[0]!.payload).toEqual({ conversationId: conv.id, seq: 1, title: alice.user.displayName, body: 'dinner at 8?' })
    expect(got.received[0]!.urgency).toBe('high')
    expect(Number(got.received[0]!.ttl)).toBeGreaterThan(0)
    a.close()
  })

  it('carries no sender and no text when the user chose private previews', async ({ expect }) => {
    const { bob, conv, sub, a } = await offlineBob()
    const res = await api('/api/me/settings', { method: 'PATCH', token: bob.accessToken, body: { pushPreviews: false } })
    expect(res.status).toBe(200)
    a.send(textSend(conv.id, 'the password is swordfish'))
    await a.next('ack')
    const got = await waitFor(async () => {
      const r = await receivedPushes(sub)
      return r.received.length ? r : null
    })
    expect(got.received[0]!.payload).toEqual({ conversationId: conv.id, seq: 1, title: 'echovalley', body: 'New message' })
    expect(JSON.stringify(got)).not.toContain('swordfish')
    a.close()
  })

  it('coalesces a burst into the first message at once and the newest after the window', async ({ expect }) => {
    const { bob, conv, sub, a } = await offlineBob()
    for (let i = 1; i <= 5; i++) await a.sendAndAck(textSend(conv.id, `burst ${i}`))
    const first = await waitFor(async () => {
      const r = await receivedPushes(sub)
      return r.received.length ? r : null
    })
    expect(first.received.map((p) => p.payload.body)).toEqual(['burst 1'])
    const hub = getUserHub(env, bob.user.id)
    // The room stopped calling Bob's hub after it said nobody is online; its next flush hands the hub the newest.
    await drainOutbox(conv.id)
    await expect.poll(() => runInDurableObject(hub, (h) => (h as unknown as { pushes: Map<string, { waitingSeq: number | null }> }).pushes.get(conv.id)?.waitingSeq ?? null)).toBe(5)
    await expect.poll(() => runInDurableObject(hub, (_h, state) => state.storage.getAlarm())).not.toBeNull()
    const later = Date.now() + PUSH_COALESCE_MS + 1
    await runInDurableObject<UserHub, void>(hub, (h) => {
      h.now = () => later
    })
    expect(await runDurableObjectAlarm(hub)).toBe(true)
    const both = await waitFor(async () => {
      const r = await receivedPushes(sub)
      return r.received.length === 2 ? r : null
    })
    expect(both.received.map((p) => p.payload.body)).toEqual(['burst 1', 'burst 5'])
    a.close()
  })

  it('a member with no device online costs the room one call per flush, not one per message; back online, calls resume at once', { timeout: 30_000 }, async ({ expect }) => {
    const { bob, conv, sub, a } = await offlineBob()
    const hub = getUserHub(env, bob.user.id)
    const calls = () => runInDurableObject(hub, (h: UserHub) => h.deliveries)
    const before = await calls()
    for (let i = 1; i <= 20; i++) await a.sendAndAck(textSend(conv.id, `while away ${i}`))
    await drainOutbox(conv.id)
    // The first call (answered "away", and pushed), then the newest at each flush: not twenty.
    const spent = (await calls()) - before
    expect(spent).toBeGreaterThanOrEqual(1)
    expect(spent).toBeLessThanOrEqual(3)
    await waitFor(async () => (await receivedPushes(sub)).received.length > 0)
    // Bob's phone comes online: his hub tells the room, which calls it for every event again.
    const room = getConversationRoom(env, conv.id)
    const marked = () => runInDurableObject(room, (r: ConversationRoom) => (r as unknown as { away: Map<string, unknown> }).away.has(bob.user.id))
    expect(await marked()).toBe(true)
    const b = await Device.connect(bob)
    await expect.poll(marked).toBe(false)
    await a.sendAndAck(textSend(conv.id, 'welcome back'))
    expect((await b.next((m) => m.type === 'event' && m.event.seq === 21)).type).toBe('event')
    a.close()
    b.close()
  })

  it('queues nothing for someone without an endpoint; adding one, or a job finding it gone, makes the hub look again', async ({ expect }) => {
    const bob = await register()
    const hub = getUserHub(env, bob.user.id)
    const pushable = () => runInDurableObject(hub, (_h, state) => state.storage.kv.get<boolean>('pushable') ?? null)
    // Each message from someone new, in a chat of its own (no coalescing window in between).
    const writeToBob = async (text: string) => {
      const someone = await register()
      const conv = await openChat(someone, bob)
      const d = await Device.connect(someone)
      await d.sendAndAck(textSend(conv.id, text))
      d.close()
    }
    await writeToBob('unheard 1')
    await writeToBob('unheard 2')
    await expect.poll(pushable, { timeout: 10_000 }).toBe(false)
    expect((await hub.stats()).pushJobs).toBe(0)

    // An endpoint added: the route tells the hub before it answers, and the next message is pushed.
    const sub = await newPushSubscription()
    await subscribe(bob, sub)
    expect(await pushable()).toBe(true)
    await writeToBob('heard')
    const got = await waitFor(async () => ((await receivedPushes(sub)).received.length ? await receivedPushes(sub) : null))
    expect(got.received.map((p) => p.payload.body)).toEqual(['heard'])
    expect((await hub.stats()).pushJobs).toBe(1)

    // Removed without the hub hearing of it: one job finds nothing and makes the hub look again, then no more jobs.
    expect((await api('/api/push/subscriptions', { method: 'DELETE', token: bob.accessToken, body: { endpoint: sub.endpoint } })).status).toBe(204)
    await writeToBob('to nobody')
    await expect.poll(pushable, { timeout: 10_000 }).toBe(null)
    expect((await hub.stats()).pushJobs).toBe(2)
    await writeToBob('to nobody again')
    await expect.poll(pushable, { timeout: 10_000 }).toBe(false)
    expect((await hub.stats()).pushJobs).toBe(2)
    expect((await receivedPushes(sub)).hits).toBe(1)
  })

  it('a duplicated job produces one notification', async ({ expect }) => {
    const { bob, conv, sub, a } = await offlineBob()
    a.send(textSend(conv.id, 'once'))
    await a.next('ack')
    await waitFor(async () => (await receivedPushes(sub)).received.length > 0)
    const job: PushJob = { type: 'push', userId: bob.user.id, conversationId: conv.id, seq: 1 }
    const result = await runBatch([job, job])
    expect(result.explicitAcks.sort()).toEqual(['m0', 'm1'])
    expect((await receivedPushes(sub)).received).toHaveLength(1)
    a.close()
  })

  it('stays silent for a muted conversation and speaks again after unmuting', async ({ expect }) => {
    const { bob, conv, sub, a } = await offlineBob()
    const muted = await api(`/api/conversations/${conv.id}/settings`, { method: 'PATCH', token: bob.accessToken, body: { mute: 'always' } })
    expect(muted.status).toBe(200)
    a.send(textSend(conv.id, 'muted news'))
    const first = await a.next('ack')
    // The job runs and is done, with nothing sent.
    const quiet = await runBatch([{ type: 'push', userId: bob.user.id, conversationId: conv.id, seq: first.seq }])
    expect(quiet.explicitAcks).toEqual(['m0'])
    expect((await receivedPushes(sub)).hits).toBe(0)
    await api(`/api/conversations/${conv.id}/settings`, { method: 'PATCH', token: bob.accessToken, body: { mute: 'off' } })
    const loud = await runBatch([{ type: 'push', userId: bob.user.id, conversationId: conv.id, seq: first.seq }])
    expect(loud.explicitAcks).toEqual(['m0'])
    expect((await receivedPushes(sub)).received.map((r) => r.payload)).toContainEqual(expect.objectContaining({ body: 'muted news' }))
    a.close()
  })

  it('sends nothing for a message recalled before its push went out', async ({ expect }) => {
    const alice = await register()
    const bob = await register()
    const conv = await openChat(alice, bob)
    const a = await Device.connect(alice)
    a.send(textSend(conv.id, 'regret'))
    await a.next('ack')
    // Subscribed only now, so the live job found no subscription; the replay below is the pending push.
    const sub = await newPushSubscription()
    await subscribe(bob, sub)
    a.send({ type: 'recall', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: 1 })
    await a.next('ack')
    const result = await runBatch([{ type: 'push', userId: bob.user.id, conversationId: conv.id, seq: 1 }])
    expect(result.explicitAcks).toEqual(['m0'])
    expect((await receivedPushes(sub)).hits).toBe(0)
    a.close()
  })

  it('removes a subscription the push service reports gone (410)', async ({ expect }) => {
    const { bob, conv, sub, a } = await offlineBob('gone')
    a.send(textSend(conv.id, 'anyone?'))
    await a.next('ack')
    await waitFor(async () => {
      const row = await env.DB.prepare('SELECT count(*) AS n FROM push_subscriptions WHERE user_id = ?').bind(bob.user.id).first<{ n: number }>()
      return row!.n === 0
    })
    expect((await receivedPushes(sub)).hits).toBe(1)
    a.close()
  })

  it('retries a failing endpoint, then dead-letters the job after exactly the configured attempts', { timeout: 45_000 }, async ({ expect }) => {
    const { bob, conv, sub, a } = await offlineBob('fail')
    a.send(textSend(conv.id, 'will not arrive'))
    await a.next('ack')
    const dead = await waitFor(async () => {
      const row = await env.DB.prepare('SELECT * FROM push_dead_letters WHERE user_id = ? AND conversation_id = ?').bind(bob.user.id, conv.id).first()
      return row
    }, 30_000)
    expect(dead).toMatchObject({ seq: 1 })
    // max_retries = 3 in wrangler.toml: the first delivery plus three retries.
    expect((await receivedPushes(sub)).hits).toBe(4)
    a.close()
  })

  it('drops a malformed job instead of retrying it forever', async ({ expect }) => {
    const result = await runBatch([{ type: 'push', userId: 'x', conversationId: '', seq: -1 } as unknown as PushJob])
    expect(result.explicitAcks).toEqual(['m0'])
    expect(result.retryMessages).toEqual([])
  })

  it('rejects a subscription that is not https or has malformed keys', async ({ expect }) => {
    const bob = await register()
    for (const body of [
      { endpoint: 'http://push.test/ep/x', keys: { p256dh: 'B'.repeat(87), auth: 'a'.repeat(22) } },
      { endpoint: 'https://push.test/ep/x', keys: { p256dh: 'short', auth: 'a'.repeat(22) } },
      { endpoint: 'not a url', keys: {} },
    ]) {
      const res = await api('/api/push/subscriptions', { token: bob.accessToken, body })
      expect(res.status).toBe(400)
    }
    const n = await env.DB.prepare('SELECT count(*) AS n FROM push_subscriptions WHERE user_id = ?').bind(bob.user.id).first<{ n: number }>()
    expect(n!.n).toBe(0)
  })
})
