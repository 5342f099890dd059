import { runDurableObjectAlarm } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { getConversationRoom } from '../worker/durable-objects'
import type { AuthResult } from '../worker/shared/protocol'
import { api, Device, openChat, register } from './helpers'

export interface FakeSubscription {
  endpoint: string
  keys: { p256dh: string; auth: string }
}

/** A subscription at the Node push service (test/support/push-service.ts). */
export async function newPushSubscription(mode: 'ok' | 'gone' | 'fail' = 'ok'): Promise<FakeSubscription> {
  const res = await fetch(`https://push.test/new?mode=${mode}`, { method: 'POST' })
  return (await res.json()) as FakeSubscription
}

export async function subscribe(user: AuthResult, sub: FakeSubscription) {
  const res = await api('/api/push/subscriptions', { token: user.accessToken, body: sub })
  if (res.status !== 201) throw new Error(`subscribe failed: ${res.status} ${await res.text()}`)
}

export async function receivedPushes(sub: FakeSubscription) {
  const res = await fetch(`${sub.endpoint}/received`)
  return (await res.json()) as { hits: number; received: { payload: any; ttl: string | null; urgency: string | null; topic: string | null }[]; rejected: string[] }
}

/** What the push service got for this subscription, once it has got at least one push. */
export function firstPushes(sub: FakeSubscription) {
  return waitFor(async () => {
    const r = await receivedPushes(sub)
    return r.received.length > 0 ? r : null
  })
}

export async function waitFor<T>(probe: () => Promise<T | null | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await probe()
    if (v) return v
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Waits until D1 has everything the room holds, the way production gets there: its flush tick, or its alarm. */
export async function drainOutbox(conversationId: string) {
  const room = getConversationRoom(env, conversationId)
  for (let i = 0; i < 100; i++) {
    if ((await room.stats()).outbox === 0) return
    if (!(await runDurableObjectAlarm(room))) await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error('outbox did not drain')
}

/** Alice writes to Bob, who has no device online, so every message becomes a push job. */
export async function offlineRecipient(mode: 'ok' | 'gone' | 'fail' = 'ok') {
  const alice = await register()
  const bob = await register()
  const conv = await openChat(alice, bob)
  const sub = await newPushSubscription(mode)
  await subscribe(bob, sub)
  const a = await Device.connect(alice)
  return { alice, bob, conv, sub, a }
}
