/**
 * Voice-note containers recognised from their bytes, and their duration read from the file.
 * Every parser here treats its input as hostile: each step advances, nothing is allocated from a
 * declared size, reads stay inside the buffer, and garbage yields null rather than an exception.
 */
export type AudioType = 'audio/webm' | 'audio/ogg' | 'audio/mp4'

/** A loop rather than a spread, so a huge range cannot exceed the engine's argument limit. */
function ascii(b: Uint8Array, from: number, to: number): string {
  let s = ''
  for (let i = Math.max(0, from); i < Math.min(to, b.length); i++) s += String.fromCharCode(b[i]!)
  return s
}

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength)

/** Recognises a voice-note container from its first bytes (at least 64 bytes if available). */
export function sniffAudio(head: Uint8Array): AudioType | null {
  const b = head
  if (b.length >= 4 && b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3) return webmDocType(b) === 'webm' ? 'audio/webm' : null
  // Opus only: Vorbis in Ogg is not something a browser records.
  if (ascii(b, 0, 4) === 'OggS' && ascii(b, 28, 36) === 'OpusHead') return 'audio/ogg'
  if (ascii(b, 4, 8) === 'ftyp') return 'audio/mp4'
  return null
}

/** Duration in whole milliseconds read from the complete file, or null when it cannot be read. */
export function audioDurationMs(bytes: Uint8Array, type: AudioType): number | null {
  try {
    const ms = type === 'audio/webm' ? webmDuration(bytes) : type === 'audio/ogg' ? oggDuration(bytes) : type === 'audio/mp4' ? mp4Duration(bytes) : null
    return ms !== null && Number.isFinite(ms) && ms >= 0 ? Math.round(ms) : null
  } catch {
    // The parsers check their bounds; this only keeps a missed case from failing the upload with a 500.
    return null
  }
}

// ---- EBML (WebM) ----

interface Vint {
  value: number
  length: number
  /** All value bits set: "unknown size", which live recorders write for Segment and Cluster. */
  unknown: boolean
}

/** An EBML variable-length integer; IDs keep their length marker, sizes drop it. */
function vint(b: Uint8Array, at: number, keepMarker: boolean): Vint | null {
  const first = b[at]
  if (first === undefined || first === 0) return null
  const length = Math.clz32(first) - 23
  if (at + length > b.length) return null
  let value = keepMarker ? first : first & (0xff >> length)
  let allOnes = value === 0xff >> length
  for (let i = 1; i < length; i++) {
    const byte = b[at + i]!
    value = value * 256 + byte
    if (byte !== 0xff) allOnes = false
  }
  return { value, length, unknown: !keepMarker && allOnes }
}

const EBML = 0x1a45dfa3
const DOC_TYPE = 0x4282
const SEGMENT = 0x18538067
const INFO = 0x1549a966
const TIMECODE_SCALE = 0x2ad7b1
const DURATION = 0x4489
const CLUSTER = 0x1f43b675
const TIMECODE = 0xe7
const BLOCK_GROUP = 0xa0
const BLOCK = 0xa1
const SIMPLE_BLOCK = 0xa3
/** Masters whose children we read; their size may be unknown, so we read on instead of skipping. */
const DESCEND = new Set([SEGMENT, INFO, CLUSTER, BLOCK_GROUP])

/** Big-endian unsigned integer of 1..8 bytes; EBML allows no wider, so anything else is invalid. */
function uint(b: Uint8Array, at: number, size: number): number | null {
  if (size < 1 || size > 8 || at + size > b.length) return null
  let v = 0
  for (let i = 0; i < size; i++) v = v * 256 + b[at + i]!
  return v
}

function webmDocType(b: Uint8Array): string | null {
  const id = vint(b, 0, true)
  const size = id && vint(b, id.length, false)
  if (!id || !size || id.value !== EBML) return null
  const end = Math.min(b.length, id.length + size.length + size.value)
  for (let at = id.length + size.length; at < end; ) {
    const cid = vint(b, at, true)
    const csize = cid && vint(b, at + cid.length, false)
    if (!cid || !csize) return null
    const data = at + cid.length + csize.length
    // Doc types are short words; reading at most 16 bytes keeps a huge declared size harmless.
    if (cid.value === DOC_TYPE) return ascii(b, data, data + Math.min(csize.value, 16)).replace(/\0+$/, '')
    at = data + csize.value
  }
  return null
}

/**
 * Walks the file as a flat run of elements: the masters that matter are entered (their children
 * follow directly, which also works when their size is unknown), everything else is skipped by size.
 */
function webmDuration(b: Uint8Array): number | null {
  if (!(b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3)) return null
  let scale = 1_000_000
  let declared: number | null = null
  let cluster = 0
  let latest: number | null = null
  for (let at = 0; at < b.length; ) {
    const id = vint(b, at, true)
    const size = id && vint(b, at + id.length, false)
    if (!id || !size) break
    const data = at + id.length + size.length
    if (DESCEND.has(id.value)) {
      at = data
      continue
    }
    if (size.unknown || data + size.value > b.length) break // truncated: keep what was read
    if (id.value === TIMECODE_SCALE) scale = uint(b, data, size.value) || scale
    else if (id.value === DURATION) {
      const v = new DataView(b.buffer, b.byteOffset + data, size.value)
      declared = size.value === 4 ? v.getFloat32(0) : size.value === 8 ? v.getFloat64(0) : null
    } else if (id.value === TIMECODE) cluster = uint(b, data, size.value) ?? cluster
    else if (id.value === SIMPLE_BLOCK || id.value === BLOCK) {
      const track = vint(b, data, false)
      if (track && track.length + 2 <= size.value) {
        const rel = new DataView(b.buffer, b.byteOffset + data + track.length, 2).getInt16(0)
        latest = Math.max(latest ?? 0, cluster + rel)
      }
    }
    at = data + size.value
  }
  if (declared !== null && declared > 0) return (declared * scale) / 1e6
  return latest === null ? null : (latest * scale) / 1e6
}

// ---- Ogg Opus ----

/** Opus granule positions always count 48 kHz samples, whatever the input rate was. */
const OPUS_RATE = 48_000

function oggDuration(b: Uint8Array): number | null {
  if (b.length < 40 || ascii(b, 0, 4) !== 'OggS' || ascii(b, 28, 36) !== 'OpusHead') return null
  const v = view(b)
  const serial = v.getUint32(14, true)
  const preSkip = v.getUint16(38, true)
  const from = Math.max(0, b.length - 65_536)
  for (let at = b.length - 27; at >= from; at--) {
    if (b[at] !== 0x4f || ascii(b, at, at + 4) !== 'OggS' || b[at + 4] !== 0) continue
    // A real page, not "OggS" inside audio data: same stream, and its segments fit in the file.
    if (v.getUint32(at + 14, true) !== serial) continue
    const segments = b[at + 26]!
    let end = at + 27 + segments
    if (end > b.length) continue
    for (let i = 0; i < segments; i++) end += b[at + 27 + i]!
    if (end > b.length) continue
    const granule = v.getBigInt64(at + 6, true)
    if (granule < 0n) continue // -1: no packet ends on this page
    return Math.max(0, ((Number(granule) - preSkip) / OPUS_RATE) * 1000)
  }
  return null
}

// ---- MP4 / M4A ----

interface Box {
  type: string
  /** First byte of the content, after size and type. */
  start: number
  /** Clamped to the parent, so a read checked against it stays inside the buffer. */
  end: number
}

function* boxes(b: Uint8Array, from: number, to: number): Generator<Box> {
  const v = view(b)
  for (let at = from; at + 8 <= to; ) {
    let size = v.getUint32(at)
    let header = 8
    if (size === 1) {
      if (at + 16 > to) return
      size = Number(v.getBigUint64(at + 8))
      header = 16
    } else if (size === 0) size = to - at
    if (size < header) return // also guarantees progress
    yield { type: ascii(b, at + 4, at + 8), start: at + header, end: Math.min(to, at + size) }
    at += size
  }
}

const child = (b: Uint8Array, box: Box | undefined, type: string): Box | undefined => {
  if (!box) return undefined
  for (const x of boxes(b, box.start, box.end)) if (x.type === type) return x
  return undefined
}

/** Readers that return null past the end of their box instead of reading a neighbour's bytes. */
const u32 = (v: DataView, box: Box, offset: number) => (box.start + offset + 4 <= box.end ? v.getUint32(box.start + offset) : null)
const u64 = (v: DataView, box: Box, offset: number) => (box.start + offset + 8 <= box.end ? Number(v.getBigUint64(box.start + offset)) : null)

function mp4Duration(b: Uint8Array): number | null {
  const v = view(b)
  const top = [...boxes(b, 0, b.length)]
  const moov = top.find((x) => x.type === 'moov')
  const mvhd = child(b, moov, 'mvhd')
  if (mvhd) {
    const v1 = b[mvhd.start] === 1
    const timescale = u32(v, mvhd, v1 ? 20 : 12)
    const duration = v1 ? u64(v, mvhd, 24) : u32(v, mvhd, 16)
    // All ones means "unknown" (and a u64 that large is not exact anyway): look at the fragments then.
    const known = duration !== null && duration > 0 && (v1 || duration !== 0xffffffff) && duration < 2 ** 53
    if (timescale && known) return (duration / timescale) * 1000
  }
  return fragmentedDuration(b, v, top, moov)
}

/** Fragmented MP4 (Safari's MediaRecorder): the moov is empty, so add up the samples of every fragment. */
function fragmentedDuration(b: Uint8Array, v: DataView, top: Box[], moov: Box | undefined): number | null {
  const trak = child(b, moov, 'trak')
  const mdhd = child(b, child(b, trak, 'mdia'), 'mdhd')
  if (!mdhd) return null
  const timescale = u32(v, mdhd, b[mdhd.start] === 1 ? 20 : 12)
  if (!timescale) return null
  // Only that trak's fragments are counted, since its timescale is the one we have.
  const tkhd = child(b, trak, 'tkhd')
  const trackId = tkhd ? u32(v, tkhd, b[tkhd.start] === 1 ? 20 : 12) : null
  const trex = child(b, child(b, moov, 'mvex'), 'trex')
  const trexDefault = (trex && u32(v, trex, 12)) ?? 0
  let total = 0
  let runs = 0
  for (const moof of top) {
    if (moof.type !== 'moof') continue
    for (const traf of boxes(b, moof.start, moof.end)) {
      if (traf.type !== 'traf') continue
      let fallback = trexDefault
      let ours = true
      for (const box of boxes(b, traf.start, traf.end)) {
        const flags = (u32(v, box, 0) ?? 0) & 0xffffff
        if (box.type === 'tfhd') {
          const id = u32(v, box, 4)
          ours = trackId === null || id === null || id === trackId
          // base-data-offset (0x01) and sample-description-index (0x02) come before the default duration.
          const offset = 8 + (flags & 0x01 ? 8 : 0) + (flags & 0x02 ? 4 : 0)
          if (flags & 0x08) fallback = u32(v, box, offset) ?? fallback
        } else if (box.type === 'trun' && ours) {
          const count = u32(v, box, 4)
          if (count === null) continue
          runs++
          if (!(flags & 0x100)) {
            total += count * fallback
            continue
          }
          let offset = 8 + (flags & 0x01 ? 4 : 0) + (flags & 0x04 ? 4 : 0)
          const stride = 4 + (flags & 0x200 ? 4 : 0) + (flags & 0x400 ? 4 : 0) + (flags & 0x800 ? 4 : 0)
          // The declared count is capped by what the box holds, so a huge count costs nothing.
          for (let i = 0; i < count; i++, offset += stride) {
            const d = u32(v, box, offset)
            if (d === null) break
            total += d
          }
        }
      }
    }
  }
  return runs ? (total / timescale) * 1000 : null
}
