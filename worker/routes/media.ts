import { Hono, type Context } from 'hono'
import { signMediaToken, verifyMediaToken } from '../auth/tokens'
import { memberIds, notifyUsers } from '../conversation/member-notify'
import type { AppEnv } from '../env'
import { fail, getAuth, requireAuth } from '../http'
import { mediaKey } from '../media/UploadSession'
import { transcriberFor } from '../media/transcriber'
import { ErrorCode } from '../shared/errors'
import { newId } from '../ids'
import { Id, type MediaTokenResult } from '../shared/protocol'
import { countInWorker } from '../ops/metrics'
import { Counter } from '../shared/metrics'

interface MediaRow {
  id: string
  owner_id: string
  kind: 'voice' | 'image' | 'file'
  mime: string
  size: number
  name: string | null
  transcript: string | null
  conversation_id: string | null
  created_at: number
}

/**
 * The media row if this user may read it: its uploader, or a member of the conversation whose
 * message claimed it who was there when it was sent (as history holds them to their joining
 * point), on a session that is not revoked. Everyone else gets the same 404 as for a
 * missing id, so ids cannot be probed.
 */
async function readable(c: Context<AppEnv>, userId: string, sessionId: string, rawId: string): Promise<MediaRow> {
  const id = Id.safeParse(rawId)
  if (!id.success) fail(404, ErrorCode.NOT_FOUND, 'no such media')
  const row = await c.env.DB.prepare(
    `SELECT m.id, m.owner_id, m.kind, m.mime, m.size, m.name, m.transcript, m.conversation_id, m.created_at FROM media m
     WHERE m.id = ?1 AND m.status = 'ready'
       AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = ?3 AND s.user_id = ?2 AND s.revoked_at IS NULL)
       AND (m.owner_id = ?2 OR EXISTS (SELECT 1 FROM members mem WHERE mem.conversation_id = m.conversation_id AND mem.user_id = ?2
             AND coalesce(m.seq, m.min_seq, 0) >= mem.joined_seq))`,
  )
    .bind(id.data, userId, sessionId)
    .first<MediaRow>()
  if (!row) fail(404, ErrorCode.NOT_FOUND, 'no such media')
  return row
}

/** One byte range ("bytes=a-b", "bytes=a-", "bytes=-n"); several ranges get the whole file, as RFC 9110 allows. */
export function parseRange(header: string | undefined, size: number): { offset: number; length: number } | 'whole' | 'unsatisfiable' {
  const m = header?.match(/^bytes=(\d*)-(\d*)$/)
  if (!m || (m[1] === '' && m[2] === '')) return 'whole'
  if (m[1] === '') {
    const n = Math.min(Number(m[2]), size)
    return n === 0 ? 'unsatisfiable' : { offset: size - n, length: n }
  }
  const start = Number(m[1])
  if (start >= size) return 'unsatisfiable'
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)
  if (end < start) return 'whole'
  return { offset: start, length: end - start + 1 }
}

function contentDisposition(row: MediaRow): string {
  if (row.kind !== 'file') return 'inline'
  const name = row.name ?? 'file'
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_')
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`
}

export const mediaRoutes = new Hono<AppEnv>()
  /** A token for media URLs: <img> and <audio> cannot send an Authorization header. */
  .get('/token', requireAuth, async (c) => {
    const auth = c.get('auth')
    const result: MediaTokenResult = { token: await signMediaToken(c.env, auth), expiresInS: 3600 }
    return c.json(result)
  })
  .on(['GET', 'HEAD'], '/:id', async (c) => {
    const token = c.req.query('t')
    const auth = token ? await verifyMediaToken(c.env, token) : await getAuth(c)
    if (!auth) fail(401, ErrorCode.UNAUTHORIZED, 'missing or invalid access token')
    const row = await readable(c, auth.userId, auth.sessionId, c.req.param('id'))
    const etag = `"${row.id}"`
    const headers: Record<string, string> = {
      'Content-Type': row.mime,
      'Accept-Ranges': 'bytes',
      ETag: etag,
      'Last-Modified': new Date(row.created_at).toUTCString(),
      // Content never changes under an id, but a recall must win over any cached copy: revalidate.
      'Cache-Control': 'private, no-cache',
      'Content-Disposition': contentDisposition(row),
      // Whatever the bytes are, they never run as a page of this origin.
      'Content-Security-Policy': "default-src 'none'; media-src 'self'; img-src 'self'; sandbox",
      'Cross-Origin-Resource-Policy': 'same-origin',
    }
    if (c.req.header('if-none-match') === etag) return c.body(null, 304, headers)
    const range = parseRange(c.req.header('range'), row.size)
    if (range === 'unsatisfiable') return c.body(null, 416, { ...headers, 'Content-Range': `bytes */${row.size}` })
    if (c.req.method === 'HEAD') return c.body(null, 200, { ...headers, 'Content-Length': String(row.size) })
    const object = await c.env.MEDIA.get(mediaKey(row.id), range === 'whole' ? {} : { range })
    if (!object) fail(404, ErrorCode.NOT_FOUND, 'no such media')
    if (range === 'whole') return c.body(object.body, 200, { ...headers, 'Content-Length': String(row.size) })
    return c.body(object.body, 206, {
      ...headers,
      'Content-Length': String(range.length),
      'Content-Range': `bytes ${range.offset}-${range.offset + range.length - 1}/${row.size}`,
    })
  })
  /**
   * Forwarding: a copy of media this user may read, owned by them and ready to go into another
   * conversation, made inside R2; the client never downloads and uploads it again. Recalling the
   * original later does not take the forwarded copy with it, as in every messenger.
   */
  .post('/:id/copy', requireAuth, async (c) => {
    const auth = c.get('auth')
    const row = await readable(c, auth.userId, auth.sessionId, c.req.param('id'))
    const full = await c.env.DB.prepare('SELECT duration_ms, width, height FROM media WHERE id = ?').bind(row.id).first<{ duration_ms: number | null; width: number | null; height: number | null }>()
    const object = await c.env.MEDIA.get(mediaKey(row.id))
    if (!object) fail(404, ErrorCode.NOT_FOUND, 'no such media')
    const id = newId()
    await c.env.MEDIA.put(mediaKey(id), object.body, { httpMetadata: object.httpMetadata })
    await c.env.DB.prepare(
      `INSERT INTO media (id, owner_id, kind, mime, size, name, duration_ms, width, height, transcript, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    )
      .bind(id, auth.userId, row.kind, row.mime, row.size, row.name, full?.duration_ms ?? null, full?.width ?? null, full?.height ?? null, row.transcript, Date.now())
      .run()
    return c.json({ id }, 201)
  })
  /** Speech to text of a voice note, stored so it is computed once and shown on every device. */
  .post('/:id/transcript', requireAuth, async (c) => {
    const auth = c.get('auth')
    const row = await readable(c, auth.userId, auth.sessionId, c.req.param('id'))
    if (row.kind !== 'voice') fail(400, ErrorCode.BAD_REQUEST, 'only voice notes can be transcribed')
    if (row.transcript !== null) return c.json({ text: row.transcript })
    const transcriber = transcriberFor(c.env)
    if (!transcriber) fail(503, ErrorCode.UNAVAILABLE, 'speech to text is not configured on this server')
    const object = await c.env.MEDIA.get(mediaKey(row.id))
    if (!object) fail(404, ErrorCode.NOT_FOUND, 'no such media')
    let text: string
    try {
      text = await transcriber.transcribe(new Uint8Array(await object.arrayBuffer()), row.mime)
      countInWorker(c.env, c.executionCtx, Counter.transcriptions, 'ok')
    } catch (e) {
      console.error('transcription failed', String(e))
      countInWorker(c.env, c.executionCtx, Counter.transcriptions, 'failed')
      fail(502, ErrorCode.UNAVAILABLE, 'speech to text failed; try again')
    }
    // A recall may have run meanwhile: only a note still there keeps its transcript.
    const stored = await c.env.DB.prepare(`UPDATE media SET transcript = ? WHERE id = ? AND status = 'ready'`).bind(text, row.id).run()
    // Every member's devices show it at once, not only the one that asked.
    if (stored.meta.changes > 0 && row.conversation_id) {
      const conversationId = row.conversation_id
      c.executionCtx.waitUntil(memberIds(c.env, conversationId).then((ids) => notifyUsers(c.env, ids, { type: 'transcript', conversationId, mediaId: row.id, text })))
    }
    return c.json({ text })
  })
  .get('/:id/transcript', requireAuth, async (c) => {
    const auth = c.get('auth')
    const row = await readable(c, auth.userId, auth.sessionId, c.req.param('id'))
    return c.json({ text: row.transcript })
  })
