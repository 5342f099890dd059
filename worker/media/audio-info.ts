/**
 * Voice-note containers recognised from their bytes, and their duration read from the file.
 * Every parser here treats its input as hostile: each step advances, nothing is allocated from a
 * declared size, and garbage yields null rather than an exception.
 */
export type AudioType = 'audio/webm' | 'audio/ogg' | 'audio/mp4'

const ascii = (b: Uint8Array, from: number, to: number) => String.fromCharCode(...b.subarray(from, Math.min(to, b.length)))

export function sniffAudio(b: Uint8Array): AudioType | null {
  if (b.length >= 4 && b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3) return webmDocType(b) === 'webm' ? 'audio/webm' : null
  if (ascii(b, 0, 4) === 'OggS' && ascii(b, 28, 36) === 'OpusHead') return 'audio/ogg'
  if (ascii(b, 4, 8) === 'ftyp') return 'audio/mp4'
  return null
}

export function audioDurationMs(b: Uint8Array, type: AudioType): number | null {
  try {
    const ms = type === 'audio/webm' ? webmDuration(b) : type === 'audio/ogg' ? oggDuration(b) : mp4Duration(b)
    return ms !== null && Number.isFinite(ms) && ms >= 0 ? Math.round(ms) : null
  } catch {
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

function vint(b: Uint8Array, at: number, keepMarker: boolean): Vint | null {
  const first = b[at]
  if (first === undefined || first === 0) return null
  const length = Math.clz32(first) - 23
  if (length > 8 || at + length > b.length) return null
  let value = keepMarker ? first : first & (0xff >> length)
  let allOnes = value === 0xff >> length
  for (let i = 1; i < length; i++) {
    value = value * 256 + b[at + i]!
    if (b[at + i] !== 0xff) allOnes = false
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

function uint(b: Uint8Array, at: number, size: number): number {
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
    if (cid.value === DOC_TYPE) return ascii(b, data, data + csize.value).replace(/\0+$/, '')
    at = data + csize.value
  }
  return null
}

function webmDuration(b: Uint8Array): number | null {
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
    } else if (id.value === TIMECODE) cluster = uint(b, data, size.value)
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

function oggDuration(b: Uint8Array): number | null {
  if (ascii(b, 0, 4) !== 'OggS' || ascii(b, 28, 36) !== 'OpusHead' || b.length < 40) return null
  const preSkip = b[38]! | (b[39]! << 8)
  const from = Math.max(0, b.length - 65_536)
  for (let at = b.length - 27; at >= from; at--) {
    if (b[at] !== 0x4f || ascii(b, at, at + 4) !== 'OggS' || b[at + 4] !== 0) continue
    const granule = new DataView(b.buffer, b.byteOffset + at + 6, 8).getBigInt64(0, true)
    if (granule < 0n) continue
    return Math.max(0, ((Number(granule) - preSkip) / 48_000) * 1000)
  }
  return null
}

// ---- MP4 / M4A ----

interface Box {
  type: string
  start: number
  end: number
}

function* boxes(b: Uint8Array, from: number, to: number): Generator<Box> {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength)
  for (let at = from; at + 8 <= to; ) {
    let size = v.getUint32(at)
    let header = 8
    if (size === 1) {
      if (at + 16 > to) return
      size = Number(v.getBigUint64(at + 8))
      header = 16
    } else if (size === 0) size = to - at
    if (size < header) return
    yield { type: ascii(b, at + 4, at + 8), start: at + header, end: Math.min(to, at + size) }
    at += size
  }
}

const child = (b: Uint8Array, box: Box | undefined, type: string) => (box ? [...boxes(b, box.start, box.end)].find((x) => x.type === type) : undefined)

function mp4Duration(b: Uint8Array): number | null {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength)
  const top = [...boxes(b, 0, b.length)]
  const moov = top.find((x) => x.type === 'moov')
  const mvhd = child(b, moov, 'mvhd')
  if (mvhd) {
    const version = b[mvhd.start]
    const timescale = v.getUint32(mvhd.start + (version === 1 ? 20 : 12))
    const duration = version === 1 ? Number(v.getBigUint64(mvhd.start + 24)) : v.getUint32(mvhd.start + 16)
    if (timescale > 0 && duration > 0) return (duration / timescale) * 1000
  }
  // Fragmented MP4 (Safari's MediaRecorder): add up the sample durations of every fragment.
  const mdhd = child(b, child(b, child(b, moov, 'trak'), 'mdia'), 'mdhd')
  if (!mdhd) return null
  const timescale = v.getUint32(mdhd.start + (b[mdhd.start] === 1 ? 20 : 12))
  if (!timescale) return null
  const trex = child(b, child(b, moov, 'mvex'), 'trex')
  const trexDefault = trex ? v.getUint32(trex.start + 12) : 0
  let total = 0
  let fragments = 0
  for (const moof of top.filter((x) => x.type === 'moof')) {
    for (const traf of [...boxes(b, moof.start, moof.end)].filter((x) => x.type === 'traf')) {
      let fallback = trexDefault
      for (const box of boxes(b, traf.start, traf.end)) {
        const flags = v.getUint32(box.start) & 0xffffff
        if (box.type === 'tfhd') {
          // base-data-offset (0x01) and sample-description-index (0x02) come before the default duration.
          const at = box.start + 8 + (flags & 0x01 ? 8 : 0) + (flags & 0x02 ? 4 : 0)
          if (flags & 0x08) fallback = v.getUint32(at)
        } else if (box.type === 'trun') {
          const count = v.getUint32(box.start + 4)
          let at = box.start + 8 + (flags & 0x01 ? 4 : 0) + (flags & 0x04 ? 4 : 0)
          const per = (flags & 0x100 ? 4 : 0) + (flags & 0x200 ? 4 : 0) + (flags & 0x400 ? 4 : 0) + (flags & 0x800 ? 4 : 0)
          if (!(flags & 0x100)) total += count * fallback
          else {
            for (let i = 0; i < count && at + 4 <= box.end; i++, at += per) total += v.getUint32(at)
          }
          fragments++
        }
      }
    }
  }
  return fragments ? (total / timescale) * 1000 : null
}
