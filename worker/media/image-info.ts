/** Pixel sizes read from image headers; the first 64 KiB is enough for every supported format. */
export type ImageType = 'image/png' | 'image/jpeg' | 'image/webp' | 'image/gif'

const size = (width: number, height: number) => (width > 0 && height > 0 ? { width, height } : null)

export function imageSize(b: Uint8Array, type: ImageType): { width: number; height: number } | null {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength)
  try {
    switch (type) {
      case 'image/png':
        return b.length >= 24 ? size(v.getUint32(16), v.getUint32(20)) : null
      case 'image/gif':
        return b.length >= 10 ? size(v.getUint16(6, true), v.getUint16(8, true)) : null
      case 'image/webp':
        return webpSize(b, v)
      case 'image/jpeg':
        return jpegSize(b, v)
    }
  } catch {
    return null
  }
}

function jpegSize(b: Uint8Array, v: DataView) {
  let at = 2
  while (at + 4 <= b.length) {
    if (b[at] !== 0xff) return null
    const marker = b[at + 1]!
    if (marker === 0xff) {
      at++ // fill byte
      continue
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2
      continue
    }
    if (marker === 0xda || marker === 0xd9) return null
    const length = v.getUint16(at + 2)
    const sof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc
    if (sof) return at + 9 <= b.length ? size(v.getUint16(at + 7), v.getUint16(at + 5)) : null
    if (length < 2) return null
    at += 2 + length
  }
  return null
}

function webpSize(b: Uint8Array, v: DataView) {
  if (b.length < 30) return null
  const chunk = String.fromCharCode(...b.subarray(12, 16))
  const d = 20 // chunk data starts after "RIFF" size "WEBP" fourcc size
  if (chunk === 'VP8 ') return size(v.getUint16(d + 6, true) & 0x3fff, v.getUint16(d + 8, true) & 0x3fff)
  if (chunk === 'VP8L') {
    if (b[d] !== 0x2f) return null
    const bits = v.getUint32(d + 1, true)
    return size((bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1)
  }
  if (chunk === 'VP8X') {
    const u24 = (at: number) => b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)
    return size(u24(d + 4) + 1, u24(d + 7) + 1)
  }
  return null
}
