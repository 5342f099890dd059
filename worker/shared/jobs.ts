import * as z from 'zod'
import { Id, Seq } from './protocol'

/** Messages on the push queue; content is looked up at send time, so a recall reaches pending pushes. */
export const PushJob = z.object({
  type: z.literal('push'),
  userId: Id,
  conversationId: Id,
  seq: Seq.min(1),
})
export type PushJob = z.infer<typeof PushJob>
/** An incoming call for a user's devices (`ringing`), or the end of its ringing (answered, declined, missed). */
export const CallPushJob = z.object({
  type: z.literal('call-push'),
  userId: Id,
  conversationId: Id,
  callId: z.uuid(),
  ringing: z.boolean(),
})
export type CallPushJob = z.infer<typeof CallPushJob>
/** GET /api/health proves the producer works; the consumer drops it. */
export const HealthPing = z.object({ type: z.literal('ping') })
export const QueueMessage = z.discriminatedUnion('type', [PushJob, CallPushJob, HealthPing])
export type QueueMessage = z.infer<typeof QueueMessage>
