// Voice rooms: the binary frame and the limits, shared by the room's Durable Object, the PWA and
// the benchmark. No zod here: the PWA bundles this, and zod probes eval (refused by its CSP).

/** Unmuted speakers at once (the host counts). */
export const VOICE_MAX_SPEAKERS = 8
/** Listeners in a room: four times the 50 the seeds ask for (speakers come on top). */
export const VOICE_MAX_LISTENERS = 200
/** A dropped participant keeps their place (and role) this long. */
export const VOICE_REJOIN_GRACE_MS = 30_000
/** Opus's largest packet (RFC 6716) plus the header. */
export const VOICE_MAX_FRAME = 12 + 1275
/**
 * Audio frames a listener may have outstanding (sent to it, not yet reported as received) before
 * the room stops sending it more: four seconds of one speaker, half a second of eight. Workers'
 * sockets do not expose their buffered amount, so listeners report what they got (`got`, every
 * VOICE_GOT_EVERY_MS while frames arrive).
 */
export const VOICE_MAX_OUTSTANDING = 200
export const VOICE_GOT_EVERY_MS = 250

/**
 * Binary audio frame, both ways (little-endian):
 *   0  u8  kind (1 = Opus packet)
 *   1  u8  audio level 0–255 of the frame, for speaking indicators
 *   2  u16 speaker slot: ignored from the client, written by the room
 *   4  u32 sequence number per speaker
 *   8  u32 capture time, ms since the epoch mod 2^32 (relay latency is measurable)
 *  12  …   one Opus packet, 20 ms at 48 kHz mono
 */
export const VOICE_HEADER = 12
export const VOICE_KIND_OPUS = 1

export interface VoiceFrame {
  level: number
  slot: number
  seq: number
  captureMs: number
  packet: Uint8Array
}

export function encodeVoiceFrame(f: Omit<VoiceFrame, 'slot'> & { slot?: number }): Uint8Array {
  const out = new Uint8Array(VOICE_HEADER + f.packet.byteLength)
  const v = new DataView(out.buffer)
  v.setUint8(0, VOICE_KIND_OPUS)
  v.setUint8(1, Math.max(0, Math.min(255, Math.round(f.level))))
  v.setUint16(2, f.slot ?? 0, true)
  v.setUint32(4, f.seq >>> 0, true)
  v.setUint32(8, f.captureMs >>> 0, true)
  out.set(f.packet, VOICE_HEADER)
  return out
}

export function decodeVoiceFrame(data: ArrayBuffer | Uint8Array): VoiceFrame | null {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data)
  if (bytes.byteLength <= VOICE_HEADER || bytes.byteLength > VOICE_MAX_FRAME || bytes[0] !== VOICE_KIND_OPUS) return null
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  return { level: v.getUint8(1), slot: v.getUint16(2, true), seq: v.getUint32(4, true), captureMs: v.getUint32(8, true), packet: bytes.subarray(VOICE_HEADER) }
}

/** Milliseconds since the epoch, as a frame carries it. */
export const captureClock = (now = Date.now()) => now % 2 ** 32
