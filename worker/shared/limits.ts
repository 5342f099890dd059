// Runtime-free limits shared by worker and web: importing them pulls in no schema code.
import type { CallEvent } from './protocol'

/** How long a conversation may keep history: forever (0), a year, 90 days or 7 days. */
export const KEEP_DAYS = [0, 365, 90, 7] as const
export type KeepDays = (typeof KEEP_DAYS)[number]

/** Bumped on any incompatible change to the frames below. */
export const PROTOCOL_VERSION = 1
export const MAX_TEXT_LENGTH = 4000
/** Largest WebSocket frame a client may send, in bytes. */
export const MAX_FRAME_BYTES = 16 * 1024
/** Most events one sync page carries... */
export const SYNC_PAGE_LIMIT = 1000
/** ...and about how many bytes of them: a page stops after the event that crosses this. */
export const SYNC_PAGE_BYTES = 256 * 1024
/** The sender may recall a message this long after its server timestamp. */
export const RECALL_WINDOW_MS = 120_000
/** How long a typing indicator shows after the last typing frame. */
export const TYPING_TTL_MS = 6_000
/** The sender may edit a text message this long after sending it. */
export const EDIT_WINDOW_MS = 48 * 3600 * 1000

/** Bars in a voice note's waveform. */
export const MAX_WAVEFORM_BARS = 100
export const MAX_CAPTION_LENGTH = 1000

/** What each kind of upload may be; the type is sniffed from the bytes, never taken from the client. */
export const UPLOAD_LIMITS = {
  voice: { maxBytes: 16 * 1024 * 1024, maxDurationMs: 15 * 60 * 1000 },
  image: { maxBytes: 20 * 1024 * 1024, maxPixels: 50_000_000 },
  file: { maxBytes: 100 * 1024 * 1024 },
} as const
export type UploadKind = keyof typeof UPLOAD_LIMITS
/** Largest body of one tus PATCH; clients send files in chunks of at most this. */
export const MAX_UPLOAD_CHUNK = 8 * 1024 * 1024
/** R2 multipart parts must be at least 5 MiB, except the last. */
export const R2_MIN_PART = 5 * 1024 * 1024
/** An upload not finished within this long is deleted with everything staged for it. */
export const UPLOAD_TTL_MS = 24 * 3600 * 1000

/** One line for lists and notifications. */
export function previewOf(body: { kind: string; text?: string; name?: string; caption?: string; durationMs?: number } | null, recalled: boolean): string {
  if (recalled || !body) return 'Message recalled'
  switch (body.kind) {
    case 'text':
      return (body.text ?? '').slice(0, 120)
    case 'voice':
      return `🎤 Voice message${body.durationMs ? ` (${Math.round(body.durationMs / 1000)} s)` : ''}`
    case 'image':
      return body.caption ? `📷 ${body.caption.slice(0, 100)}` : '📷 Photo'
    case 'file':
      return `📎 ${(body.name ?? 'File').slice(0, 100)}`
    default:
      return 'Message'
  }
}

/** A mute "always" lasts until this (ms since epoch): far past any real date. */
export const MUTED_FOREVER = Number.MAX_SAFE_INTEGER

/** "Missed voice call", "Video call · 3:24": a call in the list, in push and in search. */
export function callPreview(c: Pick<CallEvent, 'video' | 'outcome' | 'durationMs'>): string {
  const kind = c.video ? 'video call' : 'voice call'
  if (c.outcome !== 'answered') return `${c.outcome === 'missed' ? 'Missed' : c.outcome === 'declined' ? 'Declined' : c.outcome === 'busy' ? 'Busy:' : 'Cancelled'} ${kind}`
  const s = Math.round(c.durationMs / 1000)
  return `${kind[0]!.toUpperCase()}${kind.slice(1)} · ${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`
}

