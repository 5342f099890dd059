import { describe, expect, it } from 'vitest'
import { audioDurationMs, sniffAudio, type AudioType } from '../worker/media/audio-info'
import { imageSize, type ImageType } from '../worker/media/image-info'
import { sniffFor } from '../worker/media/inspect'

// ---- byte helpers: every input is built here, byte by byte ----

type Part = Uint8Array | number[] | string

const bytes = (...parts: Part[]): Uint8Array => {
  const arrays = parts.map((p) => (typeof p === 'string' ? Uint8Array.from(p, (c) => c.charCodeAt(0)) : Uint8Array.from(p)))
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0))
  let at = 0
  for (const a of arrays) {
    out.set(a, at)
    at += a.length
  }
  return out
}
const u16be = (n: number) => [(n >>> 8) & 0xff, n & 0xff]
const u16le = (n: number) => [n & 0xff, (n >>> 8) & 0xff]
const u24le = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff]
const u32be = (n: number) => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff]
const u32le = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff]
const u64be = (n: bigint) => [...u32be(Number(n >> 32n)), ...u32be(Number(n & 0xffffffffn))]
const i64le = (n: bigint) => {
  const v = BigInt.asUintN(64, n)
  return [...u32le(Number(v & 0xffffffffn)), ...u32le(Number(v >> 32n))]
}
const zeros = (n: number) => new Array<number>(n).fill(0)

// EBML: IDs are written with their marker bits, sizes as the shortest vint (or "unknown").
const ebmlId = (id: number) => (id > 0xffffff ? u32be(id) : id > 0xffff ? u32be(id).slice(1) : id > 0xff ? u16be(id) : [id])
const vsize = (n: number) => (n < 0x7f ? [0x80 | n] : n < 0x3fff ? [0x40 | (n >> 8), n & 0xff] : [0x10, ...u24le(n).reverse()])
const UNKNOWN_SIZE = [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
const el = (id: number, ...payload: Part[]) => {
  const data = bytes(...payload)
  return bytes(ebmlId(id), vsize(data.length), data)
}
const unknownEl = (id: number, ...children: Part[]) => bytes(ebmlId(id), UNKNOWN_SIZE, ...children)
const uintEl = (id: number, n: number) => el(id, n > 0xffffff ? u32be(n) : n > 0xffff ? u32be(n).slice(1) : n > 0xff ? u16be(n) : [n])
const float64El = (id: number, f: number) => {
  const d = new DataView(new ArrayBuffer(8))
  d.setFloat64(0, f)
  return el(id, new Uint8Array(d.buffer))
}
const float32El = (id: number, f: number) => {
  const d = new DataView(new ArrayBuffer(4))
  d.setFloat32(0, f)
  return el(id, new Uint8Array(d.buffer))
}
/** Track 1, relative timecode, keyframe flag, then a few bytes standing in for an Opus packet. */
const simpleBlock = (rel: number) => el(0xa3, [0x81, ...u16be(rel & 0xffff), 0x80, 0xfc, 0xff, 0xfe])
const blockGroup = (rel: number) => el(0xa0, el(0xa1, [0x81, ...u16be(rel & 0xffff), 0x00, 0xfc]), uintEl(0x9b, 20))
const ebmlHeader = (docType: string) => el(0x1a45dfa3, uintEl(0x4286, 1), uintEl(0x42f7, 1), uintEl(0x42f2, 4), uintEl(0x42f3, 8), el(0x4282, docType), uintEl(0x4287, 4), uintEl(0x4285, 2))
const tracks = () => el(0x1654ae6b, el(0xae, uintEl(0xd7, 1), uintEl(0x83, 2), el(0x86, 'A_OPUS'), el(0xe1, float64El(0xb5, 48000), uintEl(0x9f, 1))))
const info = (...children: Part[]) => el(0x1549a966, ...children, el(0x4d80, 'echovalley-test'), el(0x5741, 'echovalley-test'))

/** What Chrome's MediaRecorder writes: unknown-size Segment and Clusters, no Duration. */
function liveWebm(clusters: Array<{ timecode: number; blocks: number[] }>, scale = 1_000_000) {
  return bytes(
    ebmlHeader('webm'),
    unknownEl(
      0x18538067,
      info(uintEl(0x2ad7b1, scale)),
      tracks(),
      ...clusters.map((c) => unknownEl(0x1f43b675, uintEl(0xe7, c.timecode), ...c.blocks.map(simpleBlock))),
    ),
  )
}

// Ogg: a page of one packet (under 255 bytes, so one lacing value); the CRC is not checked by the parser.
const oggPage = (granule: bigint, seq: number, packet: Uint8Array, type = 0, serial = 0x1234abcd) =>
  bytes('OggS', [0, type], i64le(granule), u32le(serial), u32le(seq), u32le(0), [1, packet.length], packet)
const opusHead = (preSkip: number) => bytes('OpusHead', [1, 1], u16le(preSkip), u32le(48000), u16le(0), [0])
const opusTags = () => bytes('OpusTags', u32le(4), 'test', u32le(0))

function oggOpus(preSkip: number, granules: bigint[]) {
  return bytes(
    oggPage(0n, 0, opusHead(preSkip), 0x02),
    oggPage(0n, 1, opusTags()),
    ...granules.map((g, i) => oggPage(g, i + 2, bytes([0xfc, 0xff, 0xfe, i & 0xff]), i === granules.length - 1 ? 0x04 : 0)),
  )
}

// MP4: plain and full boxes.
const box = (type: string, ...payload: Part[]) => {
  const data = bytes(...payload)
  return bytes(u32be(8 + data.length), type, data)
}
const fullBox = (type: string, version: number, flags: number, ...payload: Part[]) => box(type, [version, ...u32be(flags).slice(1)], ...payload)
const ftyp = (brand: string) => box('ftyp', brand, u32be(0), brand, 'isom')
const mvhd0 = (timescale: number, duration: number) => fullBox('mvhd', 0, 0, u32be(0), u32be(0), u32be(timescale), u32be(duration), zeros(80))
const mvhd1 = (timescale: number, duration: bigint) => fullBox('mvhd', 1, 0, u64be(0n), u64be(0n), u32be(timescale), u64be(duration), zeros(80))
const tkhd0 = (trackId: number) => fullBox('tkhd', 0, 7, u32be(0), u32be(0), u32be(trackId), zeros(68))
const mdhd0 = (timescale: number) => fullBox('mdhd', 0, 0, u32be(0), u32be(0), u32be(timescale), u32be(0), [0x55, 0xc4, 0, 0])
const trak = (trackId: number, timescale: number) => box('trak', tkhd0(trackId), box('mdia', mdhd0(timescale), fullBox('hdlr', 0, 0, zeros(8), 'soun', zeros(12), [0])))
const trex = (trackId: number, defaultDuration: number) => fullBox('trex', 0, 0, u32be(trackId), u32be(1), u32be(defaultDuration), u32be(0), u32be(0))
const mdat = (n: number) => box('mdat', zeros(n))

/** A fragment whose samples take the default duration (from tfhd when given, else from trex). */
const moofDefault = (seq: number, count: number, tfhdDuration?: number, trackId = 1) =>
  box(
    'moof',
    fullBox('mfhd', 0, 0, u32be(seq)),
    box(
      'traf',
      fullBox('tfhd', 0, 0x020000 | (tfhdDuration === undefined ? 0 : 0x08), u32be(trackId), tfhdDuration === undefined ? [] : u32be(tfhdDuration)),
      fullBox('tfdt', 0, 0, u32be(0)),
      fullBox('trun', 0, 0x01 | 0x200, u32be(count), u32be(0), ...new Array<number[]>(count).fill(u32be(6))),
    ),
  )
/** A fragment listing each sample's duration (and size), after a tfhd with base-data-offset and description index. */
const moofPerSample = (seq: number, durations: number[]) =>
  box(
    'moof',
    fullBox('mfhd', 0, 0, u32be(seq)),
    box(
      'traf',
      fullBox('tfhd', 0, 0x01 | 0x02 | 0x08, u32be(1), u64be(0n), u32be(1), u32be(1)),
      fullBox('trun', 0, 0x01 | 0x04 | 0x100 | 0x200, u32be(durations.length), u32be(0), u32be(0), ...durations.map((d) => [...u32be(d), ...u32be(6)])),
    ),
  )

// Images.
const png = (w: number, h: number) => bytes([0x89], 'PNG', [0x0d, 0x0a, 0x1a, 0x0a], u32be(13), 'IHDR', u32be(w), u32be(h), [8, 6, 0, 0, 0], u32be(0), u32be(0), 'IEND', u32be(0))
const gif = (w: number, h: number) => bytes('GIF89a', u16le(w), u16le(h), [0xf7, 0, 0], zeros(24), [0x3b])
const jpegSegment = (marker: number, payload: Part) => {
  const data = bytes(payload)
  return bytes([0xff, marker], u16be(data.length + 2), data)
}
const sof = (marker: number, w: number, h: number) => jpegSegment(marker, bytes([8], u16be(h), u16be(w), [3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]))
const app0 = () => jpegSegment(0xe0, bytes('JFIF', [0, 1, 1, 0], u16be(72), u16be(72), [0, 0]))
const dqt = () => jpegSegment(0xdb, bytes([0], new Array<number>(64).fill(1)))
const sos = () => jpegSegment(0xda, [1, 1, 0, 0, 0x3f, 0])
const riff = (chunk: string, data: Uint8Array) => bytes('RIFF', u32le(4 + 8 + data.length), 'WEBP', chunk, u32le(data.length), data)
// Top two bits of each VP8 dimension are a scale, not part of the size.
const webpLossy = (w: number, h: number) => riff('VP8 ', bytes([0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a], u16le(w | 0x4000), u16le(h | 0x8000), zeros(10)))
const webpLossless = (w: number, h: number) => riff('VP8L', bytes([0x2f], u32le(((w - 1) | ((h - 1) << 14) | (1 << 28)) >>> 0), zeros(8)))
const webpExtended = (w: number, h: number) => riff('VP8X', bytes([0x10, 0, 0, 0], u24le(w - 1), u24le(h - 1)))

/** Deterministic PRNG (mulberry32), so a failing fuzz case is reproducible. */
function prng(seed: number) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const randomBytes = (rand: () => number, n: number) => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256))

const AUDIO_TYPES: AudioType[] = ['audio/webm', 'audio/ogg', 'audio/mp4']
const IMAGE_TYPES: ImageType[] = ['image/png', 'image/jpeg', 'image/webp', 'image/gif']

const clusters3 = [0, 1000, 2000].map((timecode) => ({ timecode, blocks: [0, 500, 980] }))

// ---- tests ----

describe('sniffAudio', () => {
  it('recognises WebM by its EBML doc type, and refuses Matroska', () => {
    expect(sniffAudio(ebmlHeader('webm'))).toBe('audio/webm')
    expect(sniffAudio(liveWebm(clusters3).subarray(0, 64))).toBe('audio/webm')
    expect(sniffAudio(ebmlHeader('matroska'))).toBeNull()
    expect(sniffAudio(bytes([0x1a, 0x45, 0xdf, 0xa3]))).toBeNull()
    expect(sniffAudio(bytes([0x1a, 0x45, 0xdf, 0xa3, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))).toBeNull()
  })

  it('recognises Ogg Opus and refuses Ogg Vorbis', () => {
    expect(sniffAudio(oggOpus(312, [960n]))).toBe('audio/ogg')
    expect(sniffAudio(oggPage(0n, 0, bytes([1], 'vorbis', zeros(23)), 0x02))).toBeNull()
    expect(sniffAudio(bytes('OggS'))).toBeNull()
  })

  it('recognises MP4 whatever the major brand', () => {
    for (const brand of ['M4A ', 'isom', 'mp42', 'iso5', 'iso6']) expect(sniffAudio(ftyp(brand))).toBe('audio/mp4')
    expect(sniffAudio(bytes(u32be(16), 'ftip', zeros(8)))).toBeNull()
  })

  it('refuses images, text and empty input', () => {
    expect(sniffAudio(png(1, 1))).toBeNull()
    expect(sniffAudio(bytes('ID3\x04'))).toBeNull()
    expect(sniffAudio(bytes('hello, this is plainly not audio at all'))).toBeNull()
    expect(sniffAudio(new Uint8Array(0))).toBeNull()
  })
})

describe('sniffFor file uploads', () => {
  const label = (head: Uint8Array) => {
    const r = sniffFor('file', head)
    return r.ok ? r.value : r.code
  }
  it('labels an MP4 by its brand: video unless it is an M4A', () => {
    expect(label(bytes(u32be(24), 'ftypisom', zeros(12)))).toBe('video/mp4')
    expect(label(bytes(u32be(24), 'ftypM4A ', zeros(12)))).toBe('audio/mp4')
  })
  it('labels PDF, zip and text, and falls back to an octet stream', () => {
    expect(label(bytes('%PDF-1.7\n'))).toBe('application/pdf')
    expect(label(bytes([0x50, 0x4b, 0x03, 0x04], zeros(20)))).toBe('application/zip')
    expect(label(bytes('h\xe9llo w\xf6rld'))).toBe('application/octet-stream') // Latin-1, not UTF-8
    expect(label(new TextEncoder().encode('plain text, 中文'))).toBe('text/plain')
    expect(label(bytes([0xff, 0xfe, 0x00, 0x01]))).toBe('application/octet-stream')
  })
  it('refuses a voice note that is not audio', () => {
    expect(label(bytes('%PDF-1.7'))).toBe('application/pdf')
    const r = sniffFor('voice', bytes('%PDF-1.7'))
    expect(r.ok ? r.value : r.code).toBe('UNSUPPORTED_TYPE')
  })
})

describe('WebM duration', () => {
  it('reads unknown-size Segment and Clusters without a Duration element (MediaRecorder)', () => {
    expect(audioDurationMs(liveWebm(clusters3), 'audio/webm')).toBe(2980)
  })

  it('applies a TimecodeScale other than the default', () => {
    // 500 µs per tick: 2980 ticks are 1490 ms.
    expect(audioDurationMs(liveWebm(clusters3, 500_000), 'audio/webm')).toBe(1490)
  })

  it('defaults the TimecodeScale to 1 ms when Info has none', () => {
    const file = bytes(ebmlHeader('webm'), unknownEl(0x18538067, info(), unknownEl(0x1f43b675, uintEl(0xe7, 700), simpleBlock(20))))
    expect(audioDurationMs(file, 'audio/webm')).toBe(720)
  })

  it('reads Blocks inside BlockGroups and known-size Clusters', () => {
    const cluster = (timecode: number, ...children: Uint8Array[]) => el(0x1f43b675, uintEl(0xe7, timecode), ...children)
    const file = bytes(
      ebmlHeader('webm'),
      el(0x18538067, info(uintEl(0x2ad7b1, 1_000_000)), tracks(), cluster(0, simpleBlock(0), simpleBlock(20)), cluster(40, simpleBlock(0), blockGroup(1210))),
    )
    expect(audioDurationMs(file, 'audio/webm')).toBe(1250)
  })

  it('takes the largest block time, even when a negative relative time comes last', () => {
    const file = liveWebm([{ timecode: 5000, blocks: [100, -200] }])
    expect(audioDurationMs(file, 'audio/webm')).toBe(5100)
  })

  it('prefers an explicit Duration (float64, float32)', () => {
    const withDuration = (d: Uint8Array, scale = 1_000_000) =>
      bytes(ebmlHeader('webm'), el(0x18538067, info(uintEl(0x2ad7b1, scale), d), tracks(), el(0x1f43b675, uintEl(0xe7, 0), simpleBlock(0), simpleBlock(20))))
    expect(audioDurationMs(withDuration(float64El(0x4489, 4321.4)), 'audio/webm')).toBe(4321)
    expect(audioDurationMs(withDuration(float32El(0x4489, 2500)), 'audio/webm')).toBe(2500)
    // Duration counts TimecodeScale ticks: 3000 ticks of 2 ms.
    expect(audioDurationMs(withDuration(float64El(0x4489, 3000), 2_000_000), 'audio/webm')).toBe(6000)
    // A zero Duration is ignored in favour of the blocks.
    expect(audioDurationMs(withDuration(float64El(0x4489, 0)), 'audio/webm')).toBe(20)
  })

  it('gives the last complete block of a truncated file', () => {
    const file = liveWebm(clusters3)
    const lastBlock = simpleBlock(980)
    // Cut inside the final SimpleBlock: the one before it (2000 + 500) is the last complete one.
    expect(audioDurationMs(file.subarray(0, file.length - lastBlock.length + 3), 'audio/webm')).toBe(2500)
    expect(audioDurationMs(file.subarray(0, file.length - 1), 'audio/webm')).toBe(2500)
    expect(audioDurationMs(file.subarray(0, file.length - lastBlock.length), 'audio/webm')).toBe(2500)
  })

  it('returns null with no blocks, for a header alone, and for the wrong magic', () => {
    expect(audioDurationMs(ebmlHeader('webm'), 'audio/webm')).toBeNull()
    expect(audioDurationMs(bytes(ebmlHeader('webm'), unknownEl(0x18538067, info(uintEl(0x2ad7b1, 1_000_000)), tracks())), 'audio/webm')).toBeNull()
    expect(audioDurationMs(liveWebm(clusters3).subarray(4), 'audio/webm')).toBeNull()
  })

  it('reads from a view into a larger buffer', () => {
    const file = liveWebm(clusters3)
    const outer = bytes(zeros(13), file, zeros(7))
    expect(audioDurationMs(outer.subarray(13, 13 + file.length), 'audio/webm')).toBe(2980)
  })
})

describe('Ogg Opus duration', () => {
  it('subtracts the pre-skip from the last granule position', () => {
    expect(audioDurationMs(oggOpus(312, [960n * 50n, 48000n * 2n, 48000n * 3n + 312n]), 'audio/ogg')).toBe(3000)
  })

  it('skips a trailing page on which no packet ends (granule -1)', () => {
    const file = bytes(oggOpus(312, [48000n + 312n]), oggPage(-1n, 9, bytes([0xfc, 1, 2, 3])))
    expect(audioDurationMs(file, 'audio/ogg')).toBe(1000)
  })

  it('ignores a truncated final page and pages of another stream', () => {
    const good = oggOpus(0, [24000n])
    expect(audioDurationMs(bytes(good, oggPage(96000n, 9, bytes(zeros(40)))).subarray(0, good.length + 40), 'audio/ogg')).toBe(500)
    expect(audioDurationMs(bytes(good, oggPage(96000n, 9, bytes([1]), 0, 0x99)), 'audio/ogg')).toBe(500)
  })

  it('returns null for a head without pages or the wrong codec', () => {
    expect(audioDurationMs(bytes('OggS'), 'audio/ogg')).toBeNull()
    expect(audioDurationMs(oggPage(48000n, 0, bytes([1], 'vorbis', zeros(23)), 0x02), 'audio/ogg')).toBeNull()
  })
})

describe('MP4 duration', () => {
  it('reads mvhd version 0', () => {
    expect(audioDurationMs(bytes(ftyp('M4A '), box('moov', mvhd0(1000, 4500), trak(1, 44100)), mdat(32)), 'audio/mp4')).toBe(4500)
  })

  it('reads mvhd version 1 after a 64-bit largesize mdat, and a size-0 last box', () => {
    const bigMdat = bytes(u32be(1), 'mdat', u64be(16n + 20n), zeros(20))
    const file = bytes(ftyp('mp42'), bigMdat, box('free', zeros(3)), u32be(0), 'moov', mvhd1(48000, 48000n * 7n + 24000n))
    expect(audioDurationMs(file, 'audio/mp4')).toBe(7500)
  })

  it('adds up the fragments when mvhd says 0 (Safari MediaRecorder)', () => {
    const moov = box('moov', mvhd0(1000, 0), trak(1, 48000), box('mvex', trex(1, 1024)))
    // 50 samples x 960 (tfhd default) = 1000 ms, then 24 x 960 + 480 (per sample) = 490 ms.
    const perSample = [...new Array<number>(24).fill(960), 480]
    const file = bytes(ftyp('iso5'), moov, moofDefault(1, 50, 960), mdat(300), moofPerSample(2, perSample), mdat(150))
    expect(audioDurationMs(file, 'audio/mp4')).toBe(1490)
  })

  it('falls back to the trex default duration, and counts only the first trak', () => {
    const moov = box('moov', mvhd0(1000, 0), trak(1, 48000), trak(2, 90000), box('mvex', trex(1, 1200), trex(2, 3000)))
    // 40 x 1200 = 48000 samples of track 1; track 2's fragment is in another timescale and ignored.
    const file = bytes(ftyp('iso6'), moov, moofDefault(1, 40), mdat(240), moofDefault(2, 30, 3000, 2), mdat(180))
    expect(audioDurationMs(file, 'audio/mp4')).toBe(1000)
  })

  it('returns null without moov, without fragments, or with a zero timescale', () => {
    expect(audioDurationMs(ftyp('isom'), 'audio/mp4')).toBeNull()
    expect(audioDurationMs(bytes(ftyp('isom'), box('moov', mvhd0(1000, 0), trak(1, 48000))), 'audio/mp4')).toBeNull()
    expect(audioDurationMs(bytes(ftyp('isom'), box('moov', mvhd0(0, 4500))), 'audio/mp4')).toBeNull()
    expect(audioDurationMs(bytes(ftyp('isom'), box('moov', mvhd0(1000, 0), trak(1, 0)), moofDefault(1, 10, 960)), 'audio/mp4')).toBeNull()
  })

  it('does not read past a truncated mvhd', () => {
    const file = bytes(ftyp('M4A '), box('moov', mvhd0(1000, 4500)))
    expect(audioDurationMs(file.subarray(0, file.length - 90), 'audio/mp4')).toBeNull()
  })
})

describe('imageSize', () => {
  it('reads PNG', () => {
    expect(imageSize(png(640, 480), 'image/png')).toEqual({ width: 640, height: 480 })
    expect(imageSize(png(0, 480), 'image/png')).toBeNull()
    expect(imageSize(png(640, 480).subarray(0, 23), 'image/png')).toBeNull()
  })

  it('reads GIF', () => {
    expect(imageSize(gif(320, 200), 'image/gif')).toEqual({ width: 320, height: 200 })
    expect(imageSize(gif(320, 0), 'image/gif')).toBeNull()
    expect(imageSize(gif(320, 200).subarray(0, 9), 'image/gif')).toBeNull()
  })

  it('reads JPEG after APP0 and DQT segments and fill bytes', () => {
    const jpeg = bytes([0xff, 0xd8], app0(), dqt(), [0xff, 0xff], sof(0xc0, 1920, 1080), sos(), [0x12, 0x34, 0xff, 0xd9])
    expect(imageSize(jpeg, 'image/jpeg')).toEqual({ width: 1920, height: 1080 })
  })

  it('reads progressive and other SOF markers, but not DHT', () => {
    for (const m of [0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]) {
      expect(imageSize(bytes([0xff, 0xd8], sof(m, 33, 44), sos()), 'image/jpeg')).toEqual({ width: 33, height: 44 })
    }
    // DHT (C4) is skipped by its length, then the real SOF0 follows; a standalone RST needs no length.
    const dht = jpegSegment(0xc4, bytes([0], zeros(16)))
    expect(imageSize(bytes([0xff, 0xd8], dht, [0xff, 0xd0], sof(0xc0, 8, 9)), 'image/jpeg')).toEqual({ width: 8, height: 9 })
  })

  it('stops at SOS or EOI and on truncation', () => {
    expect(imageSize(bytes([0xff, 0xd8], app0(), sos(), sof(0xc0, 10, 10)), 'image/jpeg')).toBeNull()
    expect(imageSize(bytes([0xff, 0xd8, 0xff, 0xd9], sof(0xc0, 10, 10)), 'image/jpeg')).toBeNull()
    const full = bytes([0xff, 0xd8], app0(), sof(0xc0, 10, 10))
    expect(imageSize(full.subarray(0, full.length - 12), 'image/jpeg')).toBeNull()
    expect(imageSize(bytes([0xff, 0xd8], app0(), [0x00, 0x00]), 'image/jpeg')).toBeNull()
  })

  it('reads all three WebP variants', () => {
    expect(imageSize(webpLossy(1024, 768), 'image/webp')).toEqual({ width: 1024, height: 768 })
    expect(imageSize(webpLossless(16383, 1), 'image/webp')).toEqual({ width: 16383, height: 1 })
    expect(imageSize(webpLossless(300, 16384), 'image/webp')).toEqual({ width: 300, height: 16384 })
    expect(imageSize(webpExtended(16777216, 5000), 'image/webp')).toEqual({ width: 16777216, height: 5000 })
  })

  it('refuses a WebP with an unknown chunk, a bad signature, or cut short', () => {
    expect(imageSize(riff('ALPH', bytes(zeros(20))), 'image/webp')).toBeNull()
    const lossless = webpLossless(10, 10)
    lossless[20] = 0x2e
    expect(imageSize(lossless, 'image/webp')).toBeNull()
    expect(imageSize(webpLossy(10, 10).subarray(0, 28), 'image/webp')).toBeNull()
    expect(imageSize(webpExtended(10, 10).subarray(0, 29), 'image/webp')).toBeNull()
  })

  it('refuses a header of another format', () => {
    expect(imageSize(gif(10, 10), 'image/png')).toBeNull()
    expect(imageSize(png(10, 10), 'image/jpeg')).toBeNull()
    expect(imageSize(png(10, 10), 'image/webp')).toBeNull()
    expect(imageSize(png(10, 10), 'image/gif')).toBeNull()
  })
})

describe('hostile input', () => {
  const everything = (b: Uint8Array) => {
    const audio = AUDIO_TYPES.map((t) => audioDurationMs(b, t))
    const images = IMAGE_TYPES.map((t) => imageSize(b, t))
    return { sniffed: sniffAudio(b), audio, images }
  }
  const wellFormed = (r: ReturnType<typeof everything>) => {
    for (const ms of r.audio) if (ms !== null) expect(Number.isSafeInteger(ms) && ms >= 0).toBe(true)
    for (const s of r.images) if (s !== null) expect(Number.isSafeInteger(s.width) && s.width > 0 && Number.isSafeInteger(s.height) && s.height > 0).toBe(true)
  }

  it('returns null for empty and tiny input', () => {
    for (const b of [new Uint8Array(0), bytes([0]), bytes([0x1a, 0x45, 0xdf]), bytes('Ogg'), bytes([0xff, 0xd8]), bytes('RIFF'), bytes([0x89], 'PNG')]) {
      expect(everything(b)).toEqual({ sniffed: null, audio: [null, null, null], images: [null, null, null, null] })
    }
  })

  it('returns null for ~200 pseudo-random buffers', () => {
    const rand = prng(0x5eed)
    for (let i = 0; i < 200; i++) {
      const b = randomBytes(rand, Math.floor(rand() * (i < 100 ? 64 : 4096)))
      expect(everything(b)).toEqual({ sniffed: null, audio: [null, null, null], images: [null, null, null, null] })
    }
  })

  it('never throws on random bytes behind a valid magic, or on mutated and truncated real headers', () => {
    const rand = prng(42)
    const magics = [ebmlHeader('webm'), bytes('OggS', zeros(24), 'OpusHead'), ftyp('isom'), bytes([0x89], 'PNG', [0x0d, 0x0a, 0x1a, 0x0a], u32be(13), 'IHDR'), bytes([0xff, 0xd8, 0xff]), bytes('RIFF', zeros(4), 'WEBPVP8'), bytes('GIF89a')]
    const valid = [
      liveWebm(clusters3),
      oggOpus(312, [48000n * 3n + 312n]),
      bytes(ftyp('iso5'), box('moov', mvhd0(1000, 0), trak(1, 48000), box('mvex', trex(1, 1024))), moofDefault(1, 5, 960), moofPerSample(2, [960, 480])),
      bytes(ftyp('M4A '), box('moov', mvhd1(1000, 4500n))),
      png(5, 5),
      gif(5, 5),
      bytes([0xff, 0xd8], app0(), sof(0xc2, 5, 5), sos()),
      webpLossy(5, 5),
      webpLossless(5, 5),
      webpExtended(5, 5),
    ]
    for (let i = 0; i < 200; i++) {
      const magic = magics[i % magics.length]!
      wellFormed(everything(bytes(magic, randomBytes(rand, Math.floor(rand() * 512)))))
      const mutated = Uint8Array.from(valid[i % valid.length]!)
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) mutated[Math.floor(rand() * mutated.length)] = Math.floor(rand() * 256)
      wellFormed(everything(mutated.subarray(0, Math.floor(rand() * (mutated.length + 1)))))
    }
  })

  it('does not loop or allocate on huge declared sizes and counts', () => {
    // EBML: a Void of 2^56 bytes, an unknown-size element that is not a master, nested unknown Segments.
    expect(audioDurationMs(bytes(ebmlHeader('webm'), [0xec, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]), 'audio/webm')).toBeNull()
    expect(audioDurationMs(bytes(ebmlHeader('webm'), [0xec], UNKNOWN_SIZE, zeros(16)), 'audio/webm')).toBeNull()
    expect(audioDurationMs(bytes(ebmlHeader('webm'), ...new Array<Uint8Array>(1000).fill(unknownEl(0x18538067))), 'audio/webm')).toBeNull()
    expect(sniffAudio(bytes([0x1a, 0x45, 0xdf, 0xa3, 0x88], ebmlId(0x4282), [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe], 'webm'))).toBe('audio/webm')
    // MP4: a trun claiming 4 billion samples with per-sample durations, and a box of size 2^64 - 1.
    const moov = box('moov', mvhd0(1000, 0), trak(1, 1000))
    const greedy = box('moof', box('traf', fullBox('tfhd', 0, 0, u32be(1)), fullBox('trun', 0, 0x100, u32be(0xffffffff), u32be(250), u32be(250))))
    expect(audioDurationMs(bytes(ftyp('isom'), moov, greedy), 'audio/mp4')).toBe(500)
    expect(audioDurationMs(bytes(ftyp('isom'), u32be(1), 'moov', [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], mvhd0(1000, 100)), 'audio/mp4')).toBe(100)
    // JPEG: a long run of fill bytes, then nothing.
    expect(imageSize(bytes([0xff, 0xd8], new Array<number>(10_000).fill(0xff)), 'image/jpeg')).toBeNull()
  })
})
