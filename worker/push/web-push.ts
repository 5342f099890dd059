import { buildPushPayload, type PushSubscription } from '@block65/webcrypto-web-push'
import type { Env } from '../env'
import type { CallPushPayload, PushPayload } from '../shared/protocol'

export type SendOutcome = 'sent' | 'gone' | 'failed'

/** Encrypts (RFC 8291 aes128gcm) and signs (VAPID) one notification, then posts it. */
export async function sendWebPush(env: Env, sub: PushSubscription, payload: PushPayload | CallPushPayload): Promise<SendOutcome> {
  const request = await buildPushPayload(
    { data: JSON.parse(JSON.stringify(payload)), options: { ttl: 'callId' in payload ? 45 : 24 * 3600, urgency: 'high', topic: ('callId' in payload ? `k${payload.callId.replace(/-/g, '')}` : `c${payload.conversationId}`).slice(0, 32) } },
    sub,
    { subject: env.VAPID_SUBJECT, publicKey: env.VAPID_PUBLIC_KEY, privateKey: env.VAPID_PRIVATE_KEY },
  )
  const res = await fetch(sub.endpoint, request)
  // 404 and 410 mean the browser dropped the subscription for good.
  if (res.status === 404 || res.status === 410) return 'gone'
  return res.ok ? 'sent' : 'failed'
}
