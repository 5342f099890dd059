// Voice rooms: the control protocol (zod, worker side) and the shapes both sides see. The binary
// frame and the limits are in voice-frames.ts, which the PWA bundles.
import * as z from 'zod'
import { Id } from './protocol'
export * from './voice-frames'

export const VoiceRole = z.enum(['host', 'speaker', 'listener'])
export type VoiceRole = z.infer<typeof VoiceRole>

/** Control frames from a participant (JSON text). Host-only ones are refused from others. */
export const VoiceClientMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('mute'), muted: z.boolean() }),
  z.object({ type: z.literal('hand'), raised: z.boolean() }),
  z.object({ type: z.literal('promote'), userId: Id }),
  z.object({ type: z.literal('demote'), userId: Id }),
  z.object({ type: z.literal('force-mute'), userId: Id }),
  z.object({ type: z.literal('remove'), userId: Id }),
  z.object({ type: z.literal('handover'), userId: Id }),
  z.object({ type: z.literal('end') }),
  z.object({ type: z.literal('leave') }),
  /** Audio frames received on this socket so far: the room's measure of a listener falling behind. */
  z.object({ type: z.literal('got'), n: z.number().int().nonnegative() }),
])
export type VoiceClientMessage = z.infer<typeof VoiceClientMessage>

export interface VoiceParticipant {
  userId: string
  /** Names this person's audio frames. */
  slot: number
  role: VoiceRole
  muted: boolean
  hand: boolean
  /** False while a dropped participant may still rejoin. */
  connected: boolean
}

export interface VoiceRoomState {
  conversationId: string
  startedAt: number
  hostId: string
  participants: VoiceParticipant[]
}

/** What the chat's live card and the conversation list show. */
export interface VoiceRoomSummary {
  conversationId: string
  live: boolean
  startedAt: number | null
  hostId: string | null
  speakers: string[]
  listeners: number
}

export type VoiceServerMessage =
  | { type: 'welcome'; userId: string; state: VoiceRoomState }
  | { type: 'state'; state: VoiceRoomState }
  | { type: 'ended'; reason: 'host-ended' | 'empty' | 'removed' | 'not-member' }
  | { type: 'error'; code: string; message: string }
