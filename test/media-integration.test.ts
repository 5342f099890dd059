import { runDurableObjectAlarm } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import fc from 'fast-check'
import { describe, it } from 'vitest'
import { MAX_UPLOAD_CHUNK, UPLOAD_LIMITS, type ClientMessage, type MessageBody, type ServerMessage } from '../worker/shared/protocol'
import { api, createGroup, Device, json, openChat, register } from './helpers'
import { createUpload, head, patch, png, randomBytes, sha256, upload, voice } from './media-helpers'

const TUS = { 'tus-resumable': '1.0.0' }

function mediaSend(conversationId: string, body: { kind: MessageBody["kind"]; mediaId: string } & Record<string, unknown>, clientMsgId: string = crypto.randomUUID()): ClientMessage {
  return { type: 'send', conversationId, clientMsgId, body: body as MessageBody }
}

async function pair() {
  const a = await register()
  const b = await register()
  const conv = await openChat(a, b)
  return { a, b, conv }
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 5000) {
  const until = Date.now() + timeoutMs
  while (Date.now() < until) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

describe('tus uploads', () => {
  it('announces tus 1.0 and refuses requests without Tus-Resumable', async ({ expect }) => {
    const options = await api('/api/uploads', { method: 'OPTIONS' })
    expect(options.status).toBe(204)
    expect(options.headers.get('tus-version')).toBe('1.0.0')
    expect(options.headers.get('tus-extension')).toContain('creation-defer-length')
    const { a } = await pair()
    const res = await api('/api/uploads', { method: 'POST', token: a.accessToken, headers: { 'upload-length': '10' } })
    expect(res.status).toBe(412)
    expect((await json(res)).error.code).toBe('UNSUPPORTED_PROTOCOL')
  })

  it('streams a voice note with a deferred length, resumes after a cut connection and reads the duration from the bytes', async ({ expect }) => {
    const { a, b, conv } = await pair()
    const note = voice().webmLive
    const { res, path } = await createUpload(a, 'voice')
    expect(res.status).toBe(201)
    expect(res.headers.get('upload-defer-length')).toBe('1')

    const first = 3000
    expect((await patch(a, path, 0, note.subarray(0, first))).status).toBe(204)
    // The connection drops half way through the next chunk: nothing of it counts.
    let sent = 0
    const broken = new ReadableStream<Uint8Array>({
      pull(ctl) {
        if (sent === 0) {
          // A copy: enqueued chunks may be transferred, which would detach the note itself.
          ctl.enqueue(note.slice(first, first + 1000))
          sent++
        } else ctl.error(new Error('connection reset'))
      },
    })
    await patch(a, path, first, broken).catch(() => undefined)
    // tus lets a server keep what arrived before the cut; either way HEAD tells the truth.
    const after = await head(a, path)
    expect(after.status).toBe(200)
    expect(after.headers.get('cache-control')).toBe('no-store')
    const resumeAt = Number(after.headers.get('upload-offset'))
    expect(resumeAt).toBeGreaterThanOrEqual(first)
    expect(resumeAt).toBeLessThanOrEqual(first + 1000)
    // A client that thinks it got further is told where the upload really is, and nothing moves.
    const wrong = await patch(a, path, resumeAt + 500, note.subarray(resumeAt + 500))
    expect(wrong.status).toBe(409)
    expect((await head(a, path)).headers.get('upload-offset')).toBe(String(resumeAt))

    const done = await patch(a, path, resumeAt, note.subarray(resumeAt), note.length)
    expect(done.status).toBe(204)
    expect(done.headers.get('upload-offset')).toBe(String(note.length))
    const media = JSON.parse(done.headers.get('echovalley-media')!)
    expect(media.mime).toBe('audio/webm')
    expect(media.size).toBe(note.length)
    expect(Math.abs(media.durationMs - voice().durationMs)).toBeLessThanOrEqual(120)

    // The sender's claims about size and duration are replaced by the server's reading.
    const da = await Device.connect(a)
    const db = await Device.connect(b)
    const ack = await da.sendAndAck(mediaSend(conv.id, { kind: 'voice', mediaId: media.id, durationMs: 999_999, size: 1, mime: 'text/html', waveform: [0, 128, 255] }))
    const got = await db.next((m: ServerMessage) => m.type === 'event' && m.event.seq === ack.seq)
    expect(got.type === 'event' && got.event.type === 'message' && got.event.body).toEqual({
      kind: 'voice', mediaId: media.id, durationMs: media.durationMs, size: note.length, mime: 'audio/webm', waveform: [0, 128, 255],
    })
    const download = await api(`/api/media/${media.id}`, { token: b.accessToken })
    expect(download.status).toBe(200)
    expect(await sha256(await download.arrayBuffer())).toBe(await sha256(note))
    da.close()
    db.close()
  })

  it('reads durations of Ogg Opus, WebM with a Duration element, AAC in MP4 and fragmented MP4 (Safari)', async ({ expect }) => {
    const { a } = await pair()
    const v = voice()
    const kinds = [[v.ogg, 'audio/ogg'], [v.webm, 'audio/webm'], [v.m4a, 'audio/mp4'], [v.mp4Frag, 'audio/mp4']] as const
    for (const [bytes, mime] of kinds) {
      const media = await upload(a, 'voice', bytes, { chunk: 1500 })
      expect(media.mime).toBe(mime)
      // Encoders pad a frame or two (AAC priming is ~21 ms, Opus pre-skip 6.5 ms).
      expect(Math.abs(media.durationMs! - v.durationMs)).toBeLessThanOrEqual(120)
    }
    // Truncated or garbage audio is refused with a reason, not stored.
    const bad = await createUpload(a, 'voice', { length: 5000 })
    const head8 = v.webmLive.slice(0, 40)
    const garbage = new Uint8Array(5000)
    garbage.set(head8)
    const res = await patch(a, bad.path, 0, garbage, 5000)
    expect(res.status).toBe(415)
    expect((await json(res)).error.message).toMatch(/duration/)
  })

  it('assembles a file larger than an R2 part from small chunks (multipart, 5 MiB parts)', async ({ expect }) => {
    const { a, b, conv } = await pair()
    const bytes = randomBytes(11 * 1024 * 1024 + 123, 7)
    const media = await upload(a, 'file', bytes, { chunk: 1024 * 1024, filename: 'données 2026.bin' })
    expect(media).toMatchObject({ mime: 'application/octet-stream', size: bytes.length })
    const da = await Device.connect(a)
    await da.sendAndAck(mediaSend(conv.id, { kind: 'file', mediaId: media.id, name: 'données 2026.bin' }))
    const res = await api(`/api/media/${media.id}`, { token: b.accessToken })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-disposition')).toBe(`attachment; filename="donn_es 2026.bin"; filename*=UTF-8''donn%C3%A9es%202026.bin`)
    expect(res.headers.get('content-security-policy')).toContain('sandbox')
    expect(await sha256(await res.arrayBuffer())).toBe(await sha256(bytes))
    da.close()
  })

  it('forwards a file by a copy made on the server: the new chat reads it, an outsider cannot copy it, a recall of the original leaves the copy', async ({ expect }) => {
    const { a, b, conv } = await pair()
    const c = await register()
    const outsider = await register()
    const bc = await openChat(b, c)
    const bytes = randomBytes(300_000, 11)
    const media = await upload(a, 'file', bytes, { filename: 'plan.bin' })
    const da = await Device.connect(a)
    const sent = await da.sendAndAck(mediaSend(conv.id, { kind: 'file', mediaId: media.id, name: 'plan.bin' }))
    expect((await api(`/api/media/${media.id}/copy`, { method: 'POST', token: outsider.accessToken })).status).toBe(404)
    const copied = await api(`/api/media/${media.id}/copy`, { method: 'POST', token: b.accessToken })
    expect(copied.status).toBe(201)
    const { id } = await json<{ id: string }>(copied)
    expect(id).not.toBe(media.id)
    const dbDevice = await Device.connect(b)
    await dbDevice.sendAndAck(mediaSend(bc.id, { kind: 'file', mediaId: id, name: 'plan.bin', forwarded: true }))
    const got = await api(`/api/media/${id}`, { token: c.accessToken })
    expect(got.status).toBe(200)
    expect(await sha256(await got.arrayBuffer())).toBe(await sha256(bytes))
    // The copy is only B's to send, and only once claimed by one chat.
    expect((await api(`/api/media/${media.id}`, { token: c.accessToken })).status).toBe(404)
    await da.sendAndAck({ type: 'recall', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: sent.seq })
    await waitFor(async () => (await api(`/api/media/${media.id}`, { token: b.accessToken })).status === 404, 'original purged')
    expect((await api(`/api/media/${id}`, { token: c.accessToken })).status).toBe(200)
    da.close()
    dbDevice.close()
  })

  it('refuses bad input with a clear error and keeps nothing', async ({ expect }) => {
    const { a, b } = await pair()
    const big = await createUpload(a, 'voice', { length: UPLOAD_LIMITS.voice.maxBytes + 1 })
    expect(big.res.status).toBe(413)
    expect((await json(big.res)).error.code).toBe('PAYLOAD_TOO_LARGE')
    expect((await createUpload(a, 'video', { length: 10 })).res.status).toBe(400)
    expect((await createUpload(a, 'file', { length: 0 })).res.status).toBe(400)

    // A "voice note" that is a PNG: refused as soon as the bytes show it, and the upload is gone.
    const fake = await createUpload(a, 'voice', { length: 64 })
    const refused = await patch(a, fake.path, 0, png(10, 10))
    expect(refused.status).toBe(415)
    expect((await json(refused)).error.message).toMatch(/voice note must be/)
    expect((await head(a, fake.path)).status).toBe(404)

    // A body larger than one chunk may be, or larger than the declared length.
    const img = await createUpload(a, 'image', { length: 100 })
    expect((await patch(a, img.path, 0, new Uint8Array(101))).status).toBe(413)
    const huge = await createUpload(a, 'file', { length: MAX_UPLOAD_CHUNK + 10 })
    expect((await patch(a, huge.path, 0, new Uint8Array(MAX_UPLOAD_CHUNK + 1))).status).toBe(413)
    const hh = await head(a, huge.path)
    expect([hh.status, hh.headers.get('upload-offset'), huge.res.status]).toEqual([200, '0', 201])
    // Wrong content type, missing offset, someone else's upload.
    const wrongType = await api(img.path, { method: 'PATCH', token: a.accessToken, headers: { ...TUS, 'content-type': 'application/octet-stream', 'upload-offset': '0' }, body: new Uint8Array(4) })
    expect(wrongType.status).toBe(415)
    const noOffset = await api(img.path, { method: 'PATCH', token: a.accessToken, headers: { ...TUS, 'content-type': 'application/offset+octet-stream' }, body: new Uint8Array(4) })
    expect(noOffset.status).toBe(400)
    expect((await head(b, img.path)).status).toBe(404)
    expect((await patch(b, img.path, 0, png(1, 1))).status).toBe(404)
    expect((await head(a, img.path)).headers.get('upload-offset')).toBe('0')
    // An image whose header claims more pixels than any phone makes.
    const bomb = await createUpload(a, 'image', { length: 64 })
    const bombed = await patch(a, bomb.path, 0, png(100_000, 100_000), 64)
    expect(bombed.status).toBe(413)
    expect((await json(bombed)).error.message).toMatch(/megapixels/)
  })

  it('lets only the uploader use an upload, only in one conversation, and only as its kind', async ({ expect }) => {
    const { a, b, conv } = await pair()
    const c = await register()
    const other = await openChat(a, c)
    const media = await upload(a, 'image', png(640, 480))
    const db = await Device.connect(b)
    db.send(mediaSend(conv.id, { kind: 'image', mediaId: media.id }))
    expect((await db.next('error')).code).toBe('NOT_FOUND')

    const da = await Device.connect(a)
    da.send(mediaSend(conv.id, { kind: 'voice', mediaId: media.id }))
    expect((await da.next('error')).code).toBe('BAD_REQUEST')
    const ack = await da.sendAndAck(mediaSend(conv.id, { kind: 'image', mediaId: media.id, width: 1, height: 1 }))
    expect(ack.seq).toBeGreaterThan(0)
    const seen = await db.next((m) => m.type === 'event' && m.event.seq === ack.seq)
    expect(seen.type === 'event' && seen.event.type === 'message' && seen.event.body).toMatchObject({ width: 640, height: 480, mime: 'image/png' })
    // The same upload cannot be reposted into another conversation (its members could not read it).
    da.send(mediaSend(other.id, { kind: 'image', mediaId: media.id }))
    expect((await da.next('error')).code).toBe('NOT_FOUND')
    da.close()
    db.close()
  })
})

describe('hostile uploads', () => {
  it('arbitrary tus headers and bodies get a 4xx in the one error shape and never move an upload past what was accepted', { timeout: 120_000 }, async ({ expect }) => {
    const { a } = await pair()
    const { path } = await createUpload(a, 'file', { length: 1_000_000 })
    let accepted = 0
    const header = fc.oneof(fc.constant(undefined), fc.string({ maxLength: 30 }), fc.integer({ min: -5, max: 2_000_000 }).map(String), fc.constant('1e3'), fc.constant('0x10'))
    await fc.assert(
      fc.asyncProperty(
        header,
        header,
        fc.constantFrom('application/offset+octet-stream', 'application/json', 'text/plain', undefined),
        fc.uint8Array({ maxLength: 3000 }),
        fc.boolean(),
        async (offset, length, contentType, bytes, useCurrent) => {
          const headers: Record<string, string> = { ...TUS }
          const at = useCurrent ? String(accepted) : offset
          if (at !== undefined) headers['upload-offset'] = at
          if (length !== undefined) headers['upload-length'] = length
          if (contentType) headers['content-type'] = contentType
          const res = await api(path, { method: 'PATCH', token: a.accessToken, headers, body: bytes })
          if (res.status === 204) {
            expect(at).toBe(String(accepted))
            accepted += bytes.length
            expect(res.headers.get('upload-offset')).toBe(String(accepted))
            return
          }
          expect(res.status).toBeGreaterThanOrEqual(400)
          expect(res.status).toBeLessThan(500)
          const body = await json<{ error: { code: string; message: string } }>(res)
          expect(Object.keys(body)).toEqual(['error'])
          expect(body.error.message.length).toBeGreaterThan(0)
        },
      ),
      { numRuns: 150 },
    )
    expect((await head(a, path)).headers.get('upload-offset')).toBe(String(accepted))
    // Creation with garbage metadata or lengths is refused the same way.
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 60 }), header, async (metadata, length) => {
        const res = await api('/api/uploads', { method: 'POST', token: a.accessToken, headers: { ...TUS, 'upload-metadata': `kind ${metadata}`, ...(length ? { 'upload-length': length } : {}) } })
        if (res.status === 201) return
        expect(res.status).toBeGreaterThanOrEqual(400)
        expect(res.status).toBeLessThan(500)
        expect(Object.keys(await json(res))).toEqual(['error'])
      }),
      { numRuns: 100 },
    )
  })
})

describe('downloads', () => {
  it('serves members only, with ranges, validators and URL tokens', async ({ expect }) => {
    const { a, b, conv } = await pair()
    const outsider = await register()
    const note = voice().ogg
    const media = await upload(a, 'voice', note)
    // Before it is sent, only the uploader can read it.
    expect((await api(`/api/media/${media.id}`, { token: b.accessToken })).status).toBe(404)
    expect((await api(`/api/media/${media.id}`, { token: a.accessToken })).status).toBe(200)
    const da = await Device.connect(a)
    await da.sendAndAck(mediaSend(conv.id, { kind: 'voice', mediaId: media.id }))
    da.close()

    const range = await api(`/api/media/${media.id}`, { token: b.accessToken, headers: { range: 'bytes=100-199' } })
    expect(range.status).toBe(206)
    expect(range.headers.get('content-range')).toBe(`bytes 100-199/${note.length}`)
    expect(new Uint8Array(await range.arrayBuffer())).toEqual(note.subarray(100, 200))
    const suffix = await api(`/api/media/${media.id}`, { token: b.accessToken, headers: { range: 'bytes=-10' } })
    expect(new Uint8Array(await suffix.arrayBuffer())).toEqual(note.subarray(note.length - 10))
    const open = await api(`/api/media/${media.id}`, { token: b.accessToken, headers: { range: `bytes=${note.length - 5}-` } })
    expect(open.headers.get('content-length')).toBe('5')
    const beyond = await api(`/api/media/${media.id}`, { token: b.accessToken, headers: { range: `bytes=${note.length}-` } })
    expect(beyond.status).toBe(416)
    expect(beyond.headers.get('content-range')).toBe(`bytes */${note.length}`)

    const whole = await api(`/api/media/${media.id}`, { token: b.accessToken })
    expect(whole.headers.get('accept-ranges')).toBe('bytes')
    expect(whole.headers.get('cache-control')).toBe('private, no-cache')
    const etag = whole.headers.get('etag')!
    expect((await api(`/api/media/${media.id}`, { token: b.accessToken, headers: { 'if-none-match': etag } })).status).toBe(304)

    // <audio> and <img> cannot send headers: a media token in the URL, which opens nothing else.
    const { token } = await json<{ token: string }>(await api('/api/media/token', { token: b.accessToken }))
    expect((await api(`/api/media/${media.id}?t=${encodeURIComponent(token)}`)).status).toBe(200)
    expect((await api('/api/me', { token })).status).toBe(401)
    expect((await api(`/api/media/${media.id}?t=${encodeURIComponent(b.accessToken)}`)).status).toBe(401)
    // Outsiders get the same answer as for an id that does not exist.
    const { token: outsiderToken } = await json<{ token: string }>(await api('/api/media/token', { token: outsider.accessToken }))
    const denied = await api(`/api/media/${media.id}?t=${encodeURIComponent(outsiderToken)}`)
    expect(denied.status).toBe(404)
    expect((await api('/api/media/doesnotexist0001', { token: outsider.accessToken })).status).toBe(404)
    // A revoked device's media token stops working at once.
    expect((await api(`/api/auth/sessions/${b.sessionId}`, { method: 'DELETE', token: b.accessToken })).status).toBe(204)
    expect((await api(`/api/media/${media.id}?t=${encodeURIComponent(token)}`)).status).toBe(404)
  })
})

describe('recall and cleanup', () => {
  it('recalling a voice note deletes its blob from R2 and its download everywhere', async ({ expect }) => {
    const { a, b, conv } = await pair()
    const media = await upload(a, 'voice', voice().webmLive, { deferred: true, chunk: 2000 })
    expect(await env.MEDIA.head(`media/${media.id}`)).not.toBeNull()
    const da = await Device.connect(a)
    const ack = await da.sendAndAck(mediaSend(conv.id, { kind: 'voice', mediaId: media.id }))
    await da.sendAndAck({ type: 'recall', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: ack.seq })
    await waitFor(async () => (await env.MEDIA.head(`media/${media.id}`)) === null, 'the blob to be deleted')
    expect((await api(`/api/media/${media.id}`, { token: b.accessToken })).status).toBe(404)
    expect((await api(`/api/media/${media.id}`, { token: a.accessToken })).status).toBe(404)
    const row = await env.DB.prepare('SELECT status, transcript FROM media WHERE id = ?').bind(media.id).first()
    expect(row).toEqual({ status: 'deleted', transcript: null })
    da.close()
  })

  it('an image recalled by a group admin takes its thumbnail along', async ({ expect }) => {
    const owner = await register()
    const member = await register()
    const g = await createGroup(owner, [member])
    const full = await upload(member, 'image', png(2000, 1000))
    const thumb = await upload(member, 'image', png(200, 100))
    const dm = await Device.connect(member)
    const ack = await dm.sendAndAck(mediaSend(g.id, { kind: 'image', mediaId: full.id, thumbId: thumb.id, caption: 'sunset' }))
    const dOwner = await Device.connect(owner)
    await dOwner.sendAndAck({ type: 'recall', conversationId: g.id, clientMsgId: crypto.randomUUID(), targetSeq: ack.seq })
    await waitFor(async () => (await env.MEDIA.head(`media/${full.id}`)) === null && (await env.MEDIA.head(`media/${thumb.id}`)) === null, 'both blobs to go')
    dm.close()
    dOwner.close()
  })

  it('an abandoned upload is deleted when it expires, staged bytes and R2 parts alike', async ({ expect }) => {
    const { a } = await pair()
    const { path } = await createUpload(a, 'file', { length: 12 * 1024 * 1024 })
    const six = randomBytes(6 * 1024 * 1024, 3)
    expect((await patch(a, path, 0, six)).status).toBe(204)
    const id = path.split('/').pop()!
    const stub = env.UPLOAD.get(env.UPLOAD.idFromName(id))
    expect(await runDurableObjectAlarm(stub)).toBe(true)
    expect((await head(a, path)).status).toBe(404)
    expect((await patch(a, path, six.length, new Uint8Array(10))).status).toBe(404)
    expect(await env.MEDIA.head(`media/${id}`)).toBeNull()
  })
})

describe('speech to text', () => {
  it('transcribes a voice note with the real recogniser, stores the text, and refuses what is not a voice note', { timeout: 60_000 }, async ({ expect }) => {
    const { a, b, conv } = await pair()
    const outsider = await register()
    const media = await upload(a, 'voice', voice().webmLive)
    const da = await Device.connect(a)
    await da.sendAndAck(mediaSend(conv.id, { kind: 'voice', mediaId: media.id }))
    const res = await api(`/api/media/${media.id}/transcript`, { method: 'POST', token: b.accessToken })
    expect(res.status).toBe(200)
    const { text } = await json<{ text: string }>(res)
    // The sender's connected device hears of it without asking.
    expect(await da.next((m) => m.type === 'transcript' && m.mediaId === media.id)).toEqual({ type: 'transcript', conversationId: conv.id, mediaId: media.id, text })
    da.close()
    // pocketsphinx hears espeak's "hello world"; no text is canned anywhere.
    expect(text.toLowerCase()).toMatch(/hello|world/)
    const stored = await env.DB.prepare('SELECT transcript FROM media WHERE id = ?').bind(media.id).first<{ transcript: string }>()
    expect(stored?.transcript).toBe(text)
    expect(await json(await api(`/api/media/${media.id}/transcript`, { token: a.accessToken }))).toEqual({ text })
    expect((await api(`/api/media/${media.id}/transcript`, { method: 'POST', token: outsider.accessToken })).status).toBe(404)
    const image = await upload(a, 'image', png(10, 10))
    expect((await api(`/api/media/${image.id}/transcript`, { method: 'POST', token: a.accessToken })).status).toBe(400)
  })
})
