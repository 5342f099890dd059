import { z } from 'zod'
import { Id, Seq } from './protocol'

/** Messages on the push queue; content is looked up at send time, so a recall reaches pending pushes. */
export const PushJob = z.object({
  type: z.literal('push'),
  userId: Id,
  conversationId: Id,
  seq: Seq.min(1),
})
export type PushJob = z.infer<typeof PushJob>
export const QueueMessage = z.discriminatedUnion('type', [PushJob])
export type QueueMessage = z.infer<typeof QueueMessage>
