import * as z from 'zod'
import type { VoiceRoomSummary } from './voice'
import type { ErrorCode } from './errors'
import { KEEP_DAYS, MAX_CAPTION_LENGTH, MAX_TEXT_LENGTH, MAX_WAVEFORM_BARS, SYNC_PAGE_LIMIT, type KeepDays as KeepDaysValue } from './limits'

export * from './limits'

export const Id = z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, 'not a valid id')
export const ClientMsgId = z.uuid()
export const Seq = z.number().int().nonnegative()

/** Marks a message passed on from another chat ("Forwarded"); set by the forwarding client. */
const Forwarded = { forwarded: z.literal(true).optional() }

export const TextBody = z.object({
  kind: z.literal('text'),
  ...Forwarded,
  /** The message this one answers; shown as a quote. */
  replyTo: z.object({ seq: z.number().int().min(1) }).optional(),
  text: z
    .string()
    .max(MAX_TEXT_LENGTH, `at most ${MAX_TEXT_LENGTH} characters`)
    .refine((s) => s.trim().length > 0, 'message is empty'),
})
/*
 * Media bodies point at an upload by id. The client names the upload and adds what only it knows
 * (waveform, file name, caption); the room fills mime, size, duration and pixel size from the
 * server's own reading of the bytes, so those fields are never taken from the sender.
 */
const ServerFilled = {
  mime: z.string().max(100).optional(),
  size: z.number().int().nonnegative().optional(),
}
export const VoiceBody = z.object({
  kind: z.literal('voice'),
  ...Forwarded,
  mediaId: Id,
  ...ServerFilled,
  durationMs: z.number().int().nonnegative().optional(),
  /** Loudness bars for the player, 0–255 each; drawn, never trusted for anything else. */
  waveform: z.array(z.number().int().min(0).max(255)).max(MAX_WAVEFORM_BARS).default([]),
})
export const ImageBody = z.object({
  kind: z.literal('image'),
  ...Forwarded,
  mediaId: Id,
  /** A small version for the chat list, uploaded separately. */
  thumbId: Id.optional(),
  ...ServerFilled,
  width: z.number().int().positive().optional(),
  height: z.number().int().positive().optional(),
  caption: z.string().max(MAX_CAPTION_LENGTH).optional(),
})
export const FileBody = z.object({
  kind: z.literal('file'),
  ...Forwarded,
  mediaId: Id,
  ...ServerFilled,
  name: z
    .string()
    .min(1)
    .max(255)
    .refine((n) => !/[\u0000-\u001f/\\]/.test(n), 'file name has control characters or slashes'),
})
/** What a message carries. */
export const MessageBody = z.discriminatedUnion('kind', [TextBody, VoiceBody, ImageBody, FileBody])
export type MessageBody = z.infer<typeof MessageBody>
export type MediaBody = Exclude<MessageBody, { kind: 'text' }>

/** Every upload a body refers to. */
export function mediaIdsOf(body: MessageBody | null): string[] {
  if (!body || body.kind === 'text') return []
  return body.kind === 'image' && body.thumbId ? [body.mediaId, body.thumbId] : [body.mediaId]
}

/** Frames a device sends over its socket. */
export const CallId = z.uuid()
/** At most this many people in a call (full mesh); bigger groups use a voice room. */
export const CALL_MAX_PEOPLE = 4
export const CallSignal = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('offer'), sdp: z.string().min(1).max(30_000) }),
  z.object({ kind: z.literal('answer'), sdp: z.string().min(1).max(30_000) }),
  z.object({
    kind: z.literal('ice'),
    candidate: z.object({
      candidate: z.string().max(2_000),
      sdpMid: z.string().max(64).nullable().optional(),
      sdpMLineIndex: z.number().int().min(0).max(64).nullable().optional(),
      usernameFragment: z.string().max(256).nullable().optional(),
    }),
  }),
])
export type CallSignal = z.infer<typeof CallSignal>
export type CallPersonState = 'ringing' | 'joined' | 'declined' | 'left' | 'busy' | 'missed'
export interface CallInfo {
  callId: string
  conversationId: string
  video: boolean
  callerId: string
  startedAt: number
  /** When the first callee accepted; null while it rings. */
  answeredAt: number | null
  people: { userId: string; state: CallPersonState; sessionId: string | null; audio: boolean; video: boolean }[]
}
/** `removed`: this person left the conversation, or was removed from it, during the call. */
export type CallEndReason = 'hangup' | 'declined' | 'missed' | 'busy' | 'cancelled' | 'answered-elsewhere' | 'declined-elsewhere' | 'removed'
export type CallOutcome = 'answered' | 'missed' | 'declined' | 'busy' | 'cancelled'

/** Send a message; retried with the same clientMsgId until acked. */
const SendFrame = z.object({
  type: z.literal('send'),
  conversationId: Id,
  clientMsgId: ClientMsgId,
  body: MessageBody,
})
/** Replace the text of one's own text message. */
const EditFrame = z.object({
  type: z.literal('edit'),
  conversationId: Id,
  clientMsgId: ClientMsgId,
  targetSeq: Seq.min(1),
  body: TextBody,
})
/** Erase a message everywhere: the sender within RECALL_WINDOW_MS, or a group admin. */
const RecallFrame = z.object({
  type: z.literal('recall'),
  conversationId: Id,
  clientMsgId: ClientMsgId,
  targetSeq: Seq.min(1),
})
/** Add or take back an emoji reaction to a message. */
const ReactFrame = z.object({
  type: z.literal('react'),
  conversationId: Id,
  clientMsgId: ClientMsgId,
  targetSeq: Seq.min(1),
  emoji: z.string().min(1).max(16).refine((e) => /\p{Extended_Pictographic}/u.test(e), 'not an emoji'),
  on: z.boolean(),
})

/** This device holds every event of the conversation up to seq. */
const DeliveredFrame = z.object({ type: z.literal('delivered'), conversationId: Id, seq: Seq })

/**
 * What a writer socket takes (`/api/conversations/:id/ws`, straight to the conversation's room):
 * a conversation's writes, answered there with `ack` or `error`, and confirmations of the events
 * the room sent on it (it does when the chat is open in every tab of the person). Read cursors,
 * typing, sync and calls stay on the device's chat socket.
 */
export const WriterMessage = z.discriminatedUnion('type', [SendFrame, EditFrame, RecallFrame, ReactFrame, DeliveredFrame])
export type WriterMessage = z.infer<typeof WriterMessage>

export const ClientMessage = z.discriminatedUnion('type', [
  SendFrame,
  EditFrame,
  RecallFrame,
  ReactFrame,
  DeliveredFrame,
  /** The user has seen every event up to seq. */
  z.object({ type: z.literal('read'), conversationId: Id, seq: Seq }),
  /** The user is typing; send at most every few seconds, never stored. */
  z.object({ type: z.literal('typing'), conversationId: Id }),
  /** Ask for events after a cursor, in order, one page at a time. */
  z.object({
    type: z.literal('sync'),
    conversationId: Id,
    afterSeq: Seq,
    limit: z.number().int().min(1).max(SYNC_PAGE_LIMIT).optional(),
  }),
  /** Ring the other members of a conversation (1:1, or a group of up to CALL_MAX_PEOPLE). */
  z.object({ type: z.literal('call-start'), conversationId: Id, callId: CallId, video: z.boolean() }),
  /** This device takes the call (the user's other devices stop ringing). */
  z.object({ type: z.literal('call-accept'), callId: CallId }),
  z.object({ type: z.literal('call-decline'), callId: CallId }),
  /** Leave the call; the caller hanging up before anyone answered cancels it. */
  z.object({ type: z.literal('call-hangup'), callId: CallId }),
  /** Own microphone and camera state, for the others' screens. */
  z.object({ type: z.literal('call-media'), callId: CallId, audio: z.boolean(), video: z.boolean() }),
  /** WebRTC offer, answer or ICE candidate for one device in the call. */
  z.object({ type: z.literal('call-signal'), callId: CallId, toSession: z.string().min(1).max(64), data: CallSignal }),
])
export type ClientMessage = z.infer<typeof ClientMessage>

interface EventBase {
  conversationId: string
  seq: number
  senderId: string
  clientMsgId: string
  serverTs: number
}
/** A message; body is null once recalled, and reflects the latest edit. */
export interface MessageEvent extends EventBase {
  type: 'message'
  body: MessageBody | null
  editedAt?: number
  /** Who recalled it: the sender, or an admin when byAdmin; byModerator when the service's moderators removed it. */
  recalled?: { by: string; byAdmin: boolean; byModerator?: boolean }
}
export interface EditEvent extends EventBase {
  type: 'edit'
  targetSeq: number
  /** null once the target is recalled. */
  body: z.infer<typeof TextBody> | null
}
export interface RecallEvent extends EventBase {
  type: 'recall'
  targetSeq: number
  byAdmin: boolean
  /** Removed by a moderator of the service (after a report), not by anyone in the chat. */
  byModerator?: boolean
}
export const Role = z.enum(['owner', 'admin', 'member'])
export type Role = z.infer<typeof Role>
/** Membership changed; senderId is who did it. */
export interface MemberEvent extends EventBase {
  type: 'member'
  action: 'added' | 'removed' | 'left' | 'role'
  userIds: string[]
  /** The new role, for action 'role'. */
  role?: Role
}
export interface RenameEvent extends EventBase {
  type: 'renamed'
  title: string
}
/** How long history is kept changed; senderId is who changed it. */
export interface RetentionEvent extends EventBase {
  type: 'retention'
  /** Days (0: forever); null: back to the service's default. */
  keepDays: KeepDays | null
}
/** A call ended: "missed voice call", "video call · 3:24". senderId is the caller. */
export interface CallEvent extends EventBase {
  type: 'call'
  video: boolean
  outcome: CallOutcome
  /** From the first answer to the end; 0 when nobody answered. */
  durationMs: number
}
/** A voice room ended; senderId is whoever started it. */
export interface VoiceEvent extends EventBase {
  type: 'voice'
  startedAt: number
  durationMs: number
  /** Everyone who was in it at some point. */
  people: number
}
export interface ReactionEvent extends EventBase {
  type: 'reaction'
  targetSeq: number
  emoji: string
  on: boolean
}
/** Everything that happens in a conversation, in seq order. */
export type ConversationEvent = MessageEvent | EditEvent | RecallEvent | MemberEvent | RenameEvent | RetentionEvent | ReactionEvent | VoiceEvent | CallEvent

/** Whether an event is worth a push to `userId`: a message or a call from someone else. */
export function worthPush(event: Pick<ConversationEvent, 'type' | 'senderId'>, userId: string): boolean {
  return (event.type === 'message' || event.type === 'call') && event.senderId !== userId
}

/** A member's receipt cursors; ticks and unread counts derive from them. */
export interface Receipt {
  userId: string
  deliveredSeq: number
  readSeq: number
}

/** Frames the server sends to a device. */
export type ServerMessage =
  /** First frame after the socket opens. */
  | { type: 'hello'; protocol: number; userId: string; sessionId: string }
  /** The send, edit, recall or reaction is durably stored under seq. */
  | { type: 'ack'; conversationId: string; clientMsgId: string; seq: number; serverTs: number }
  /** One live event; answer with a delivered cursor. */
  | { type: 'event'; event: ConversationEvent }
  /** A page of events answering a sync; ask again after the last seq while hasMore. historyFrom: the oldest seq still kept (retention). */
  | { type: 'events'; conversationId: string; events: ConversationEvent[]; hasMore: boolean; lastSeq: number; receipts: Receipt[]; historyFrom?: number }
  /** A member's cursors moved. */
  | { type: 'receipt'; conversationId: string; receipt: Receipt }
  /** Several members' cursors moved (a group's confirmations, gathered). */
  | { type: 'receipts'; conversationId: string; receipts: Receipt[] }
  /** Someone in the conversation is typing; show it for TYPING_TTL_MS unless repeated. */
  | { type: 'typing'; conversationId: string; userId: string }
  /** A contact came online or went offline. */
  | { type: 'presence'; userId: string; online: boolean; lastSeenAt: number | null }
  /** The user's conversation list changed (new chat, added to or removed from a group). */
  | { type: 'conversations-changed' }
  /** Friend requests or the friend list changed. */
  | { type: 'friends-changed' }
  /** Someone calls: ring (every device of the callee gets it). */
  | { type: 'call-ring'; call: CallInfo }
  /** Who joined, left or changed their microphone or camera. */
  | { type: 'call-update'; call: CallInfo }
  /** The call is over for this device (or was taken or declined on another of the user's devices). */
  | { type: 'call-ended'; callId: string; reason: CallEndReason }
  /** A WebRTC offer, answer or candidate from one device in the call to this one. */
  | { type: 'call-signal'; callId: string; fromUser: string; fromSession: string; data: CallSignal }
  /** A voice room of the conversation started, changed who speaks or how many listen, or ended. */
  | { type: 'voice-room'; summary: VoiceRoomSummary }
  /** A voice note in the conversation got its transcript (computed once, for everyone). */
  | { type: 'transcript'; conversationId: string; mediaId: string; text: string }
  /** A frame was rejected; ref is the clientMsgId it was about, when known. */
  | { type: 'error'; code: ErrorCode; message: string; ref?: string }

/** A link's card: what the page says about itself (`GET /api/link-preview?url=`). */
export interface LinkPreview {
  url: string
  title: string
  description: string | null
  siteName: string | null
  /** Served by this Worker (the page's own picture, fetched once), or null. */
  image: string | null
}

/** What this deployment can do, so the PWA offers only what works (`GET /api/capabilities`). */
export interface Capabilities {
  /** Speech to text of voice notes (Workers AI, or the local transcriber). */
  transcribe: boolean
  /** Web Push (VAPID keys configured). */
  push: boolean
}

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
  /** From an earlier sign-in on this device: it is counted apart from strangers guessing the handle. */
  deviceToken: z.string().min(20).max(200).optional(),
})
export const RefreshBody = z.object({
  refreshToken: z.string().min(20).max(200),
  /** Random, chosen by the device for this refresh and sent again only when its answer was lost. */
  retryKey: z.string().min(16).max(100).optional(),
})
/** The password again, for what a stolen access token alone must not do. */
export const ReauthBody = z.object({ password: z.string().min(1).max(256) })
export const ChangePasswordBody = z.object({ currentPassword: z.string().min(1).max(256), newPassword: Password })

/** How long a mute lasts; 'off' ends one. */
export const MUTE_CHOICES = ['1h', '8h', 'always', 'off'] as const
export const ConversationSettingsBody = z
  .object({ mute: z.enum(MUTE_CHOICES).optional(), pinned: z.boolean().optional(), archived: z.boolean().optional() })
  .refine((b) => b.mute !== undefined || b.pinned !== undefined || b.archived !== undefined, 'nothing to change')

/** One signed-in device, as the Devices list shows it. */
export interface DeviceSession {
  id: string
  deviceName: string
  createdAt: number
  lastSeenAt: number
  /** "Lisbon, PT" where Cloudflare knows it; null locally. */
  place: string | null
  current: boolean
}

export const CreateConversationBody = z.object({ peerHandle: Handle })
export const CreateGroupBody = z.object({
  title: z.string().trim().min(1, 'a group needs a name').max(80),
  memberIds: z.array(Id).max(49, 'a group holds at most 50 people').default([]),
})
export const AddMembersBody = z.object({ userIds: z.array(Id).min(1).max(49) })
export const RenameBody = z.object({ title: z.string().trim().min(1).max(80) })
/** How long a conversation keeps history (KEEP_DAYS in limits.ts). */
export const KeepDays = z.literal(KEEP_DAYS)
export type KeepDays = KeepDaysValue
/** null: follow the service's default. */
export const RetentionBody = z.object({ keepDays: KeepDays.nullable() })
export const RoleBody = z.object({ role: z.enum(['admin', 'member']) })
export const TransferBody = z.object({ userId: Id })

export const SearchUsersQuery = z.object({
  q: z.string().trim().min(1, 'type at least one character').max(64),
  cursor: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(50).default(20),
})
export const ProfileBody = z
  .object({
    displayName: DisplayName.optional(),
    statusLine: z.string().trim().max(140).optional(),
    presenceVisibility: z.enum(['everyone', 'friends', 'nobody']).optional(),
  })
  .refine((b) => Object.keys(b).length > 0, 'nothing to change')
export const FriendRequestBody = z.object({ handle: Handle, note: z.string().trim().max(200).default('') })
export const BlockBody = z.object({ userId: Id })

export const MessageSearchQuery = z.object({
  q: z.string().trim().min(1).max(100),
  conversationId: Id.optional(),
  limit: z.coerce.number().int().min(1).max(50).default(20),
  /** Page backwards: results after this one in the order given ("serverTs.conversationId.seq" of the last result). */
  cursor: z
    .string()
    .regex(/^[0-9]{1,15}\.[A-Za-z0-9_-]{8,64}\.[0-9]{1,10}$/, 'not a search cursor')
    .transform((c) => {
      const [ts, conversationId, seq] = c.split('.') as [string, string, string]
      return { serverTs: Number(ts), conversationId, seq: Number(seq) }
    })
    .optional(),
})

export const HistoryQuery = z
  .object({
    before: z.coerce.number().int().positive().optional(),
    limit: z.coerce.number().int().min(1).max(100).default(50),
    /** Time range in ms since the epoch, inclusive. */
    from: z.coerce.number().int().nonnegative().optional(),
    to: z.coerce.number().int().nonnegative().optional(),
  })
  .refine((q) => q.from === undefined || q.to === undefined || q.from <= q.to, 'from must not be after to')

// ---- HTTP responses ----

export interface PublicUser {
  id: string
  handle: string
  displayName: string
  /** Changes when the picture does (`/api/users/:id/avatar?v=…`); null without one. */
  avatar: string | null
}
export interface Profile extends PublicUser {
  statusLine: string
  hasAvatar: boolean
}
export type Relationship = 'self' | 'friend' | 'request-sent' | 'request-received' | 'blocked' | 'none'
export interface Presence {
  online: boolean
  lastSeenAt: number | null
}
export interface FriendRequest {
  id: string
  from: PublicUser
  to: PublicUser
  note: string
  createdAt: number
}
export interface SearchHit {
  conversationId: string
  seq: number
  senderId: string
  text: string
  serverTs: number
}
export interface AuthResult {
  user: PublicUser
  sessionId: string
  accessToken: string
  /** Seconds until accessToken expires. */
  expiresIn: number
  refreshToken: string
  /** Marks this device as known to the account (register and login answer it; send it back with later logins). */
  deviceToken?: string
}
export interface ConversationMember extends PublicUser {
  role: Role
}
export interface ConversationSummary {
  id: string
  kind: 'direct' | 'group'
  title: string
  members: ConversationMember[]
  lastSeq: number
  lastActivityAt: number
  unread: number
  /** The viewer's read cursor: a recall above it takes an unread message away. */
  readSeq: number
  /** The viewer's own settings: no push until then (ms since epoch), pinned and archived. */
  mutedUntil: number | null
  pinned: boolean
  archived: boolean
  /** When a live voice room started, while one is on. */
  voiceLiveSince: number | null
  /** The newest message, for the list preview; null when there is none. */
  preview: { seq: number; senderId: string; text: string; serverTs: number } | null
  /** Its own retention setting (null: the service's default), and the days in force (0: forever). */
  keepDays: KeepDays | null
  retentionDays: number
}
export interface HistoryPage {
  /** Events in ascending seq; messages already reflect later edits and recalls. */
  events: ConversationEvent[]
  /** People these events name who are no longer members, so "Ann removed Cy" and Cy's old messages keep Cy's name. */
  people: PublicUser[]
  /** Pass as `before` for the next older page; null at the start. */
  nextBefore: number | null
}

// ---- Push ----

export const PushSubscriptionBody = z.object({
  endpoint: z.url({ protocol: /^https$/ }).max(2048),
  keys: z.object({
    p256dh: z.string().regex(/^[A-Za-z0-9_-]{80,100}$/, 'not a P-256 public key'),
    auth: z.string().regex(/^[A-Za-z0-9_-]{16,32}$/, 'not an auth secret'),
  }),
})
export const UnsubscribeBody = z.object({ endpoint: z.url().max(2048) })
export const SettingsBody = z.object({ pushPreviews: z.boolean() })

/** What a Web Push notification carries; with private previews, no sender and no text. */
export interface PushPayload {
  conversationId: string
  seq: number
  title: string
  body: string
}
/** A call's push: ring (the notification opens the app into the ringing call), or stop ringing. */
export interface CallPushPayload {
  type: 'call'
  callId: string
  conversationId: string
  ringing: boolean
  title: string
  body: string
}

export interface MediaTokenResult {
  token: string
  expiresInS: number
}
/** What the server read from a finished upload (the Echovalley-Media header of the last PATCH). */
export interface UploadedMedia {
  id: string
  mime: string
  size: number
  durationMs?: number
  width?: number
  height?: number
}
