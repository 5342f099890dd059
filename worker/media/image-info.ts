/**
 * Pixel sizes read from image headers. The input is hostile: every read is bounds-checked, each
 * step of the JPEG walk advances, and anything truncated or invalid yields null.
 */
export type ImageType = 'image/png' | 'image/jpeg' | 'image/webp' | 'image/gif'

interface ImageSize {
  width: number
  height: number
}

const size = (width: number, height: number): ImageSize | null => (width > 0 && height > 0 ? { width, height } : null)

const ascii = (b: Uint8Array, from: number, to: number) => (to <= b.length ? String.fromCharCode(...b.subarray(from, to)) : '')

/** Pixel size read from the image header (the first 64 KiB is enough for the supported formats), or null. */
export function imageSize(head: Uint8Array, type: ImageType): { width: number; height: number } | null {
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength)
  try {
    switch (type) {
      case 'image/png':
        return pngSize(head, v)
      case 'image/gif':
        return head.length >= 10 && ascii(head, 0, 3) === 'GIF' ? size(v.getUint16(6, true), v.getUint16(8, true)) : null
      case 'image/webp':
        return webpSize(head, v)
      case 'image/jpeg':
        return jpegSize(head, v)
      default:
        return null
    }
  } catch {
    // Reads are checked; this only keeps a missed case from failing the upload with a 500.
    return null
  }
}

function pngSize(b: Uint8Array, v: DataView): ImageSize | null {
  // The signature, then IHDR is always the first chunk.
  if (b.length < 24 || b[0] !== 0x89 || ascii(b, 1, 4) !== 'PNG' || ascii(b, 12, 16) !== 'IHDR') return null
  return size(v.getUint32(16), v.getUint32(20))
}

/** Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not. */
const isSof = (m: number) => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc

function jpegSize(b: Uint8Array, v: DataView): ImageSize | null {
  if (b[0] !== 0xff || b[1] !== 0xd8) return null
  let at = 2
  while (at + 2 <= b.length) {
    if (b[at] !== 0xff) return null
    const marker = b[at + 1]!
    if (marker === 0xff) {
      at++ // fill byte before the real marker
      continue
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2 // standalone: no length follows
      continue
    }
    // Past SOS comes entropy-coded data, and EOI ends the image: no frame header was found.
    if (marker === 0xda || marker === 0xd9) return null
    if (at + 4 > b.length) return null
    const length = v.getUint16(at + 2)
    if (length < 2) return null
    if (isSof(marker)) return length >= 7 && at + 9 <= b.length ? size(v.getUint16(at + 7), v.getUint16(at + 5)) : null
    at += 2 + length
  }
  return null
}

function webpSize(b: Uint8Array, v: DataView): ImageSize | null {
  if (ascii(b, 0, 4) !== 'RIFF' || ascii(b, 8, 12) !== 'WEBP') return null
  const d = 20 // the first chunk's data: after "RIFF", size, "WEBP", fourcc and chunk size
  switch (ascii(b, 12, 16)) {
    case 'VP8 ':
      // Frame tag (3 bytes) then the key-frame start code 9D 01 2A, then 14-bit width and height.
      if (b.length < d + 10 || b[d + 3] !== 0x9d || b[d + 4] !== 0x01 || b[d + 5] !== 0x2a) return null
      return size(v.getUint16(d + 6, true) & 0x3fff, v.getUint16(d + 8, true) & 0x3fff)
    case 'VP8L': {
      if (b.length < d + 5 || b[d] !== 0x2f) return null
      const bits = v.getUint32(d + 1, true)
      return size((bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1)
    }
    case 'VP8X': {
      if (b.length < d + 10) return null
      const u24 = (at: number) => b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)
      return size(u24(d + 4) + 1, u24(d + 7) + 1)
    }
    default:
      return null
  }
}
