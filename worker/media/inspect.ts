import { fail, ok, type RoomResult } from '../do-result'
import { ErrorCode } from '../shared/errors'
import { UPLOAD_LIMITS, type UploadKind } from '../shared/limits'
import { audioDurationMs, sniffAudio, type AudioType } from './audio-info'
import { imageSize, type ImageType } from './image-info'
import { sniffImage } from './sniff'

/** Enough of the head to tell every supported container apart. */
export const SNIFF_BYTES = 4096

/** What the server read from the bytes; stored in D1 and copied into the message body. */
export interface MediaInfo {
  mime: string
  size: number
  durationMs?: number
  width?: number
  height?: number
}

const ascii = (b: Uint8Array, from: number, to: number) => String.fromCharCode(...b.subarray(from, to))

/** Common document types, so a download is labelled; anything else is a plain octet stream. */
function sniffFile(b: Uint8Array): string {
  const image = sniffImage(b)
  if (image) return image
  // A file upload may be a video: only the M4A brands say the MP4 holds sound alone.
  if (ascii(b, 4, 8) === 'ftyp') return ['M4A ', 'M4B '].includes(ascii(b, 8, 12)) ? 'audio/mp4' : 'video/mp4'
  const audio = sniffAudio(b)
  if (audio) return audio
  if (ascii(b, 0, 5) === '%PDF-') return 'application/pdf'
  if (b[0] === 0x50 && b[1] === 0x4b && b[2] === 0x03 && b[3] === 0x04) return 'application/zip'
  if (b[0] === 0x1f && b[1] === 0x8b) return 'application/gzip'
  if (b[0] === 0x49 && b[1] === 0x44 && b[2] === 0x33) return 'audio/mpeg'
  // Valid UTF-8 without NULs reads as text; served as an attachment either way.
  if (!b.includes(0)) {
    try {
      new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(b.subarray(0, Math.min(b.length, SNIFF_BYTES - 4)))
      return 'text/plain'
    } catch {
      // not text
    }
  }
  return 'application/octet-stream'
}

/** The type the bytes show, or a clear refusal when it does not fit the kind of upload. */
export function sniffFor(kind: UploadKind, head: Uint8Array): RoomResult<string> {
  switch (kind) {
    case 'voice': {
      const t = sniffAudio(head)
      return t ? ok(t) : fail(ErrorCode.UNSUPPORTED_TYPE, 'a voice note must be Opus in WebM or Ogg, or AAC in MP4')
    }
    case 'image': {
      const t = sniffImage(head)
      return t ? ok(t) : fail(ErrorCode.UNSUPPORTED_TYPE, 'an image must be PNG, JPEG, WebP or GIF')
    }
    case 'file':
      return ok(sniffFile(head))
  }
}

/** Reads duration or pixel size from the finished upload and applies the limits of its kind. */
export function inspectMedia(kind: UploadKind, mime: string, bytes: Uint8Array, size: number): RoomResult<MediaInfo> {
  if (kind === 'voice') {
    const durationMs = audioDurationMs(bytes, mime as AudioType)
    if (durationMs === null || durationMs <= 0) return fail(ErrorCode.UNSUPPORTED_TYPE, 'the duration of the voice note cannot be read')
    if (durationMs > UPLOAD_LIMITS.voice.maxDurationMs) return fail(ErrorCode.PAYLOAD_TOO_LARGE, `voice notes are at most ${UPLOAD_LIMITS.voice.maxDurationMs / 60_000} minutes`)
    return ok({ mime, size, durationMs })
  }
  if (kind === 'image') {
    const dims = imageSize(bytes, mime as ImageType)
    if (!dims) return fail(ErrorCode.UNSUPPORTED_TYPE, 'the size of the image cannot be read')
    if (dims.width * dims.height > UPLOAD_LIMITS.image.maxPixels) return fail(ErrorCode.PAYLOAD_TOO_LARGE, `images are at most ${UPLOAD_LIMITS.image.maxPixels / 1e6} megapixels`)
    return ok({ mime, size, width: dims.width, height: dims.height })
  }
  return ok({ mime, size })
}
