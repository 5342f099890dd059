import { z } from 'zod'
import type { ErrorCode } from './errors'

/** Bumped on any incompatible change to the frames below. */
export const PROTOCOL_VERSION = 1

export const MAX_TEXT_LENGTH = 4000
/** Largest WebSocket frame a client may send, in bytes. */
export const MAX_FRAME_BYTES = 16 * 1024
/** Most events one sync page carries. */
export const SYNC_PAGE_LIMIT = 200

export const Id = z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, 'not a valid id')
export const ClientMsgId = z.uuid()
export const Seq = z.number().int().nonnegative()

export const TextBody = z.object({
  kind: z.literal('text'),
  text: z
    .string()
    .max(MAX_TEXT_LENGTH, `at most ${MAX_TEXT_LENGTH} characters`)
    .refine((s) => s.trim().length > 0, 'message is empty'),
})
/** What a message carries; media kinds join this union later. */
export const MessageBody = z.discriminatedUnion('kind', [TextBody])
export type MessageBody = z.infer<typeof MessageBody>

/** Frames a device sends over its socket. */
export const ClientMessage = z.discriminatedUnion('type', [
  /** Send a message; retried with the same clientMsgId until acked. */
  z.object({
    type: z.literal('send'),
    conversationId: Id,
    clientMsgId: ClientMsgId,
    body: MessageBody,
  }),
  /** Ask for events after a cursor, in order, one page at a time. */
  z.object({
    type: z.literal('sync'),
    conversationId: Id,
    afterSeq: Seq,
    limit: z.number().int().min(1).max(SYNC_PAGE_LIMIT).optional(),
  }),
])
export type ClientMessage = z.infer<typeof ClientMessage>

export interface MessageEvent {
  type: 'message'
  conversationId: string
  seq: number
  senderId: string
  clientMsgId: string
  serverTs: number
  body: MessageBody
}
/** Everything that happens in a conversation, in seq order. */
export type ConversationEvent = MessageEvent

/** Frames the server sends to a device. */
export type ServerMessage =
  /** First frame after the socket opens. */
  | { type: 'hello'; protocol: number; userId: string; sessionId: string }
  /** The message is durably stored under seq. */
  | { type: 'ack'; conversationId: string; clientMsgId: string; seq: number; serverTs: number }
  /** One live event. */
  | { type: 'event'; event: ConversationEvent }
  /** A page of events answering a sync; ask again after the last seq while hasMore. */
  | { type: 'events'; conversationId: string; events: ConversationEvent[]; hasMore: boolean }
  /** A frame was rejected; ref is the clientMsgId it was about, when known. */
  | { type: 'error'; code: ErrorCode; message: string; ref?: string }

// ---- HTTP bodies ----

export const Handle = z
  .string()
  .trim()
  .toLowerCase()
  .regex(/^[a-z0-9_]{3,32}$/, '3–32 letters, digits or underscores')
export const Password = z.string().min(8, 'at least 8 characters').max(256)
export const DisplayName = z.string().trim().min(1, 'required').max(64)
export const DeviceName = z.string().trim().min(1).max(64)

export const RegisterBody = z.object({
  handle: Handle,
  password: Password,
  displayName: DisplayName,
  deviceName: DeviceName.optional(),
})
export const LoginBody = z.object({
  handle: Handle,
  password: z.string().min(1).max(256),
  deviceName: DeviceName.optional(),
})
export const RefreshBody = z.object({ refreshToken: z.string().min(20).max(200) })

export const CreateConversationBody = z.object({ peerHandle: Handle })

export const HistoryQuery = z.object({
  before: z.coerce.number().int().positive().optional(),
  limit: z.coerce.number().int().min(1).max(100).default(50),
})

// ---- HTTP responses ----

export interface PublicUser {
  id: string
  handle: string
  displayName: string
}
export interface AuthResult {
  user: PublicUser
  sessionId: string
  accessToken: string
  /** Seconds until accessToken expires. */
  expiresIn: number
  refreshToken: string
}
export interface ConversationSummary {
  id: string
  kind: 'direct'
  title: string
  members: PublicUser[]
  lastSeq: number
  lastActivityAt: number
}
export interface HistoryPage {
  messages: MessageEvent[]
  /** Pass as `before` for the next older page; null at the start. */
  nextBefore: number | null
}
