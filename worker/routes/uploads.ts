import { Hono, type Context } from 'hono'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import type { RoomResult } from '../do-result'
import { getUploadSession } from '../durable-objects'
import type { AppEnv } from '../env'
import { fail, requireAuth } from '../http'
import { newId } from '../ids'
import type { UploadStatus } from '../media/UploadSession'
import { ErrorCode } from '../shared/errors'
import { MAX_UPLOAD_CHUNK, UPLOAD_LIMITS, type UploadKind } from '../shared/limits'
import { Id } from '../shared/protocol'

/*
 * tus 1.0 (https://tus.io/protocols/resumable-upload) with the creation, creation-defer-length,
 * termination and expiration extensions, so standard clients such as tus-js-client work.
 * Upload-Metadata carries `kind` (voice, image or file) and, for files, `filename`.
 */
const TUS_VERSION = '1.0.0'
const TUS_HEADERS = { 'Tus-Resumable': TUS_VERSION }
const KINDS = new Set<string>(['voice', 'image', 'file'])

const statusFor: Partial<Record<ErrorCode, ContentfulStatusCode>> = {
  NOT_FOUND: 404,
  CONFLICT: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_TYPE: 415,
  BAD_REQUEST: 400,
  INTERNAL: 500,
}

function unwrap<T>(result: RoomResult<T>): T {
  if (!result.ok) fail(statusFor[result.code] ?? 400, result.code, result.message)
  return result.value
}

function uploadId(raw: string): string {
  const id = Id.safeParse(raw)
  if (!id.success) fail(404, ErrorCode.NOT_FOUND, 'no such upload')
  return id.data
}

/** "key base64,key2 base64" → map; values are UTF-8. */
function parseMetadata(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>()
  if (!header) return out
  for (const pair of header.split(',')) {
    const [key, value = ''] = pair.trim().split(' ')
    if (!key) continue
    try {
      const bytes = Uint8Array.from(atob(value), (ch) => ch.charCodeAt(0))
      out.set(key, new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes))
    } catch {
      fail(400, ErrorCode.BAD_REQUEST, `Upload-Metadata: ${key} is not base64 UTF-8`)
    }
  }
  return out
}

function nonNegativeInt(value: string | undefined, header: string): number | null {
  if (value === undefined) return null
  if (!/^\d{1,15}$/.test(value)) fail(400, ErrorCode.BAD_REQUEST, `${header} must be a non-negative integer`)
  return Number(value)
}

function progressHeaders(s: UploadStatus): Record<string, string> {
  return {
    ...TUS_HEADERS,
    'Upload-Offset': String(s.offset),
    'Upload-Expires': new Date(s.expiresAt).toUTCString(),
    'Cache-Control': 'no-store',
    ...(s.length === null ? { 'Upload-Defer-Length': '1' } : { 'Upload-Length': String(s.length) }),
  }
}

/** Reads at most `max` bytes, refusing more without buffering them. */
async function readBody(c: Context<AppEnv>, max: number): Promise<Uint8Array> {
  const declared = nonNegativeInt(c.req.header('content-length'), 'Content-Length')
  if (declared !== null && declared > max) fail(413, ErrorCode.PAYLOAD_TOO_LARGE, `send at most ${max} bytes per PATCH`)
  const body = c.req.raw.body
  if (!body) return new Uint8Array()
  const chunks: Uint8Array[] = []
  let total = 0
  const reader = body.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    total += value.byteLength
    if (total > max) {
      await reader.cancel()
      fail(413, ErrorCode.PAYLOAD_TOO_LARGE, `send at most ${max} bytes per PATCH`)
    }
    chunks.push(value)
  }
  const out = new Uint8Array(total)
  let at = 0
  for (const ch of chunks) {
    out.set(ch, at)
    at += ch.byteLength
  }
  return out
}

export const uploadRoutes = new Hono<AppEnv>()
  .options('/*', (c) =>
    c.body(null, 204, {
      ...TUS_HEADERS,
      'Tus-Version': TUS_VERSION,
      'Tus-Extension': 'creation,creation-defer-length,termination,expiration',
      'Tus-Max-Size': String(UPLOAD_LIMITS.file.maxBytes),
    }),
  )
  .use(async (c, next) => {
    if (c.req.header('tus-resumable') !== TUS_VERSION) {
      c.header('Tus-Version', TUS_VERSION)
      fail(412, ErrorCode.UNSUPPORTED_PROTOCOL, `send Tus-Resumable: ${TUS_VERSION}`)
    }
    await next()
    c.header('Tus-Resumable', TUS_VERSION)
  })
  .use(requireAuth)
  .post('/', async (c) => {
    const meta = parseMetadata(c.req.header('upload-metadata'))
    const kind = meta.get('kind') ?? 'file'
    if (!KINDS.has(kind)) fail(400, ErrorCode.BAD_REQUEST, 'Upload-Metadata kind must be voice, image or file')
    const length = nonNegativeInt(c.req.header('upload-length'), 'Upload-Length')
    const deferred = c.req.header('upload-defer-length') === '1'
    if (length === null && !deferred) fail(400, ErrorCode.BAD_REQUEST, 'send Upload-Length, or Upload-Defer-Length: 1')
    const max = UPLOAD_LIMITS[kind as UploadKind].maxBytes
    if (length !== null && length > max) fail(413, ErrorCode.PAYLOAD_TOO_LARGE, `${kind} uploads are at most ${max} bytes`)
    if (length === 0) fail(400, ErrorCode.BAD_REQUEST, 'an upload cannot be empty')
    const name = (meta.get('filename') ?? '').replace(/[\u0000-\u001f/\\]/g, '_').slice(0, 255) || null
    const id = newId()
    const status = unwrap(await getUploadSession(c.env, id).create({ id, ownerId: c.get('auth').userId, kind: kind as UploadKind, name, length }))
    const { 'Upload-Offset': _offset, ...headers } = progressHeaders(status)
    return c.body(null, 201, { ...headers, Location: new URL(`/api/uploads/${id}`, c.req.url).toString() })
  })
  // Hono answers HEAD with the GET route minus the body.
  .get('/:id', async (c) => {
    const status = unwrap(await getUploadSession(c.env, uploadId(c.req.param('id'))).status(c.get('auth').userId))
    return c.body(null, 200, progressHeaders(status))
  })
  .patch('/:id', async (c) => {
    const id = uploadId(c.req.param('id'))
    if (c.req.header('content-type') !== 'application/offset+octet-stream') fail(415, ErrorCode.UNSUPPORTED_TYPE, 'PATCH bodies must be application/offset+octet-stream')
    const offset = nonNegativeInt(c.req.header('upload-offset'), 'Upload-Offset')
    if (offset === null) fail(400, ErrorCode.BAD_REQUEST, 'send Upload-Offset')
    const length = nonNegativeInt(c.req.header('upload-length'), 'Upload-Length')
    const bytes = await readBody(c, MAX_UPLOAD_CHUNK)
    const status = unwrap(await getUploadSession(c.env, id).append(c.get('auth').userId, offset, bytes, length))
    const headers: Record<string, string> = progressHeaders(status)
    // Not part of tus: lets our client show what the server read without another request.
    if (status.media) headers['Echovalley-Media'] = JSON.stringify({ id, ...status.media })
    return c.body(null, 204, headers)
  })
  .delete('/:id', async (c) => {
    unwrap(await getUploadSession(c.env, uploadId(c.req.param('id'))).terminate(c.get('auth').userId))
    return c.body(null, 204, TUS_HEADERS)
  })
