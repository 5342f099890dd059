// Renders the app icons (PNG) from one shape function, so no image tool is needed.
// Run: node scripts/make-icons.mjs  (writes web/public/icons/*.png; the outputs are committed)
import { writeFileSync } from 'node:fs'
import { deflateSync } from 'node:zlib'

const TEAL = [15, 118, 110]
const WHITE = [255, 255, 255]

function crc32(buf) {
  let c
  const table = []
  for (let n = 0; n < 256; n++) {
    c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  let crc = 0xffffffff
  for (const b of buf) crc = table[(crc ^ b) & 0xff] ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

function chunk(type, data) {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const body = Buffer.concat([Buffer.from(type), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(body))
  return Buffer.concat([len, body, crc])
}

function png(size, pixel) {
  const rows = []
  for (let y = 0; y < size; y++) {
    const row = Buffer.alloc(1 + size * 4)
    for (let x = 0; x < size; x++) row.set(pixel((x + 0.5) / size, (y + 0.5) / size), 1 + x * 4)
    rows.push(row)
  }
  const header = Buffer.alloc(13)
  header.writeUInt32BE(size, 0)
  header.writeUInt32BE(size, 4)
  header.set([8, 6, 0, 0, 0], 8)
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', header), chunk('IDAT', deflateSync(Buffer.concat(rows))), chunk('IEND', Buffer.alloc(0))])
}

/** A speech bubble with three dots, in unit coordinates scaled by `k` around the centre. */
function bubble(u, v, k) {
  const x = (u - 0.5) / k + 0.5
  const y = (v - 0.5) / k + 0.5
  const inBody = ((x - 0.5) / 0.3) ** 2 + ((y - 0.46) / 0.22) ** 2 <= 1
  const inTail = y > 0.6 && y < 0.78 && x > 0.3 && x < 0.42 && x - 0.3 < (0.78 - y) * 0.7
  if (!inBody && !inTail) return null
  for (const dx of [0.38, 0.5, 0.62]) if ((x - dx) ** 2 + (y - 0.46) ** 2 <= 0.035 ** 2) return TEAL
  return WHITE
}

function roundedSquare(u, v, r) {
  const cx = Math.min(Math.max(u, r), 1 - r)
  const cy = Math.min(Math.max(v, r), 1 - r)
  return (u - cx) ** 2 + (v - cy) ** 2 <= r * r
}

const any = (u, v) => (roundedSquare(u, v, 0.19) ? [...(bubble(u, v, 1) ?? TEAL), 255] : [0, 0, 0, 0])
// Maskable icons must keep their content inside the central 80% safe zone and fill the square.
const maskable = (u, v) => [...(bubble(u, v, 0.78) ?? TEAL), 255]

writeFileSync('web/public/icons/icon-192.png', png(192, any))
writeFileSync('web/public/icons/icon-512.png', png(512, any))
writeFileSync('web/public/icons/maskable-512.png', png(512, maskable))
writeFileSync('web/public/icons/apple-touch-icon.png', png(180, maskable))
console.log('icons written')
