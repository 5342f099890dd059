import { getCallRoom, getConversationRoom, getUserHub } from '../durable-objects'
import type { Env } from '../env'
import { QueueMessage, type CallPushJob, type PushJob } from '../shared/jobs'
import { callPreview } from '../shared/limits'
import { previewOf, type CallPushPayload, type PushPayload } from '../shared/protocol'
import { sendWebPush, type SendOutcome } from './web-push'
import { Metrics } from '../ops/metrics'
import { Counter } from '../shared/metrics'

export const PUSH_QUEUE = 'echovalley-push'
export const PUSH_DLQ = 'echovalley-push-dlq'
const PREVIEW_CHARS = 120

interface SubscriptionRow {
  endpoint: string
  p256dh: string
  auth: string
}

/** Retry delay doubles with each attempt from PUSH_RETRY_BASE_S (2, 4, 8 … seconds), capped at a minute. */
export function retryDelaySeconds(env: Env, attempts: number): number {
  const base = Number(env.PUSH_RETRY_BASE_S ?? 2)
  return Math.min(60, base * 2 ** Math.max(0, attempts - 1))
}

function pushPayload(job: PushJob, sender: string | null, text: string | null, previews: boolean): PushPayload {
  const base = { conversationId: job.conversationId, seq: job.seq }
  if (!previews || !sender) return { ...base, title: 'echovalley', body: 'New message' }
  return { ...base, title: sender, body: text ? text.slice(0, PREVIEW_CHARS) : 'New message' }
}

/** Returns false when some endpoint failed and the job should be retried. */
async function deliverPush(env: Env, job: PushJob, metrics: Metrics): Promise<boolean> {
  // One D1 read; the room is woken only for someone with an endpoint.
  // A muted conversation stays silent (the list still counts it unread).
  const sub = await env.DB.prepare(
    `SELECT EXISTS (SELECT 1 FROM push_subscriptions WHERE user_id = ?1) AS subscribed,
            EXISTS (SELECT 1 FROM members WHERE conversation_id = ?2 AND user_id = ?1 AND muted_until > ?3) AS muted`,
  )
    .bind(job.userId, job.conversationId, Date.now())
    .first<{ subscribed: number; muted: number }>()
  // No endpoint left (removed, moved to another account, gone): the hub looks again before queueing more.
  if (!sub?.subscribed) {
    await getUserHub(env, job.userId).pushChanged(null)
    return true
  }
  if (sub.muted) return true
  const found = await getConversationRoom(env, job.conversationId).eventFor(job.conversationId, job.userId, job.seq)
  // Not a member any more, already seen on some device, or recalled: nothing to say.
  if (!found.ok || !found.value.event || found.value.receipt.deliveredSeq >= job.seq) return true
  const event = found.value.event
  // A call ended: "Missed voice call" pushes like a message.
  if (event.type === 'call' && event.senderId !== job.userId) return sendPushes(env, job, event.senderId, callPreview(event), metrics)
  if (event.type !== 'message' || event.body === null || event.senderId === job.userId) return true
  return sendPushes(env, job, event.senderId, previewOf(event.body, false), metrics)
}

/** Sends one notification to each of the user's endpoints, once per (endpoint, message). */
async function sendPushes(env: Env, job: PushJob, senderId: string, text: string, metrics: Metrics): Promise<boolean> {
  const [subs, people, blocked] = await env.DB.batch<Record<string, unknown>>([
    env.DB.prepare('SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE user_id = ?').bind(job.userId),
    env.DB.prepare('SELECT id, display_name, push_previews FROM users WHERE id IN (?, ?)').bind(job.userId, senderId),
    env.DB.prepare('SELECT 1 FROM blocks WHERE blocker_id = ? AND blocked_id = ?').bind(job.userId, senderId),
  ])
  const subscriptions = subs!.results as unknown as SubscriptionRow[]
  // Someone the recipient blocked still writes in a group they share: no notification for it.
  if (subscriptions.length === 0 || blocked!.results.length > 0) return true
  const users = people!.results as { id: string; display_name: string; push_previews: number }[]
  const recipient = users.find((u) => u.id === job.userId)
  const sender = users.find((u) => u.id === senderId)?.display_name ?? null
  const payload = pushPayload(job, sender, text, !!recipient?.push_previews)

  let allDone = true
  for (const sub of subscriptions) {
    // Claim first: a duplicated job finds the claim and stays silent.
    const claim = await env.DB.prepare('INSERT INTO push_deliveries (endpoint, conversation_id, seq) VALUES (?, ?, ?) ON CONFLICT DO NOTHING')
      .bind(sub.endpoint, job.conversationId, job.seq)
      .run()
    if (claim.meta.changes === 0) continue
    if ((await sendTo(env, sub, payload, metrics)) === 'failed') {
      await env.DB.prepare('DELETE FROM push_deliveries WHERE endpoint = ? AND conversation_id = ? AND seq = ?')
        .bind(sub.endpoint, job.conversationId, job.seq)
        .run()
      allDone = false
    }
  }
  return allDone
}

/** "Incoming video call" to every subscribed device of the callee, or the end of that ringing. */
async function deliverCallPush(env: Env, job: CallPushJob, metrics: Metrics): Promise<void> {
  const { results: subs } = await env.DB.prepare('SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE user_id = ?').bind(job.userId).all<SubscriptionRow>()
  if (subs.length === 0) return
  const info = await getCallRoom(env, job.callId).infoFor(job.userId)
  if (!info) return
  // Still ringing for this user when the job runs, or it is a stop.
  const ringing = job.ringing && info.people.some((p) => p.userId === job.userId && p.state === 'ringing')
  if (job.ringing && !ringing) return
  const caller = await env.DB.prepare('SELECT display_name FROM users WHERE id = ?').bind(info.callerId).first<{ display_name: string }>()
  const missed = !job.ringing && info.people.some((p) => p.userId === job.userId && p.state === 'missed')
  const payload: CallPushPayload = {
    type: 'call',
    callId: job.callId,
    conversationId: job.conversationId,
    ringing,
    title: caller?.display_name ?? 'echovalley',
    body: ringing ? (info.video ? 'Incoming video call' : 'Incoming voice call') : missed ? (info.video ? 'Missed video call' : 'Missed voice call') : '',
  }
  for (const sub of subs) await sendTo(env, sub, payload, metrics)
}

/** One notification to one endpoint; an endpoint the push service says is gone is forgotten. */
async function sendTo(env: Env, sub: SubscriptionRow, payload: PushPayload | CallPushPayload, metrics: Metrics): Promise<SendOutcome> {
  let outcome: SendOutcome
  try {
    outcome = await sendWebPush(env, { endpoint: sub.endpoint, expirationTime: null, keys: { p256dh: sub.p256dh, auth: sub.auth } }, payload)
  } catch (e) {
    console.warn('push send threw', String(e))
    outcome = 'failed'
  }
  metrics.count(Counter.pushes, outcome)
  if (outcome === 'gone') await env.DB.prepare('DELETE FROM push_subscriptions WHERE endpoint = ?').bind(sub.endpoint).run()
  return outcome
}

export async function handleQueue(batch: MessageBatch<unknown>, env: Env): Promise<void> {
  const metrics = new Metrics(env, 'queue')
  try {
    await handleJobs(batch, env, metrics)
  } finally {
    await metrics.flush()
  }
}

async function handleJobs(batch: MessageBatch<unknown>, env: Env, metrics: Metrics): Promise<void> {
  for (const msg of batch.messages) {
    const parsed = QueueMessage.safeParse(msg.body)
    if (!parsed.success) {
      // A malformed job can never succeed; retrying it would only fill the dead-letter queue.
      console.warn('dropping malformed queue message', msg.id)
      msg.ack()
      continue
    }
    const job = parsed.data
    if (job.type === 'ping') {
      msg.ack()
      continue
    }
    if (job.type === 'call-push') {
      // A call rings for 45 s: a retry later than that is worthless, so one try.
      await deliverCallPush(env, job, metrics).catch((e: unknown) => console.warn('call push failed', String(e)))
      msg.ack()
      continue
    }
    if (batch.queue === PUSH_DLQ) {
      await env.DB.prepare('INSERT INTO push_dead_letters (user_id, conversation_id, seq, attempts) VALUES (?, ?, ?, ?)')
        .bind(job.userId, job.conversationId, job.seq, msg.attempts)
        .run()
      metrics.count(Counter.pushes, 'dead_letter')
      msg.ack()
      continue
    }
    try {
      if (await deliverPush(env, job, metrics)) msg.ack()
      else msg.retry({ delaySeconds: retryDelaySeconds(env, msg.attempts) })
    } catch (e) {
      console.warn('push job failed', String(e))
      msg.retry({ delaySeconds: retryDelaySeconds(env, msg.attempts) })
    }
  }
}
