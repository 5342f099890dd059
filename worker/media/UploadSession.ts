import { DurableObject } from 'cloudflare:workers'
import type { Env } from '../env'
import { ErrorCode } from '../shared/errors'
import { R2_MIN_PART, UPLOAD_LIMITS, UPLOAD_TTL_MS, type UploadKind } from '../shared/limits'
import { fail, ok, type RoomResult } from '../do-result'
import { inspectMedia, SNIFF_BYTES, sniffFor, type MediaInfo } from './inspect'
import { Metrics } from '../ops/metrics'
import { Counter } from '../shared/metrics'

/** SQLite rows are capped at 2 MB, so staged bytes are kept in slices of this size. */
const SLICE = 1024 * 1024

interface Meta {
  id: string
  ownerId: string
  kind: UploadKind
  name: string | null
  /** null while the length is deferred (a voice note still being recorded). */
  length: number | null
  offset: number
  expiresAt: number
  state: 'open' | 'done' | 'failed'
  /** Set once the first bytes have been sniffed. */
  mime: string | null
  multipartId: string | null
  parts: R2UploadedPart[]
}

export interface UploadStatus {
  offset: number
  length: number | null
  expiresAt: number
  media?: MediaInfo
}

export const mediaKey = (id: string) => `media/${id}`

/**
 * One resumable upload (tus 1.0). Requests for it are serialised here, so the offset check and
 * the append are one step. Small PATCH bodies are staged in this object's SQLite until they add
 * up to an R2 multipart part (at least 5 MiB), so any chunk size works; a byte is confirmed to
 * the client only once it is stored. An alarm deletes what an abandoned upload left behind.
 */
export class UploadSession extends DurableObject<Env> {
  private sql: SqlStorage
  private meta: Meta | null = null
  /** Appends wait for each other: R2 calls open the input gate, so a second PATCH could interleave. */
  private queue: Promise<unknown> = Promise.resolve()
  now: () => number = () => Date.now()

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    void ctx.blockConcurrencyWhile(async () => {
      this.sql.exec(`
        CREATE TABLE IF NOT EXISTS meta (k INTEGER PRIMARY KEY CHECK (k = 1), json TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS staged (offset INTEGER PRIMARY KEY, data BLOB NOT NULL);
      `)
      const row = this.sql.exec<{ json: string }>('SELECT json FROM meta').toArray()[0]
      this.meta = row ? (JSON.parse(row.json) as Meta) : null
    })
  }

  private save(meta: Meta) {
    this.meta = meta
    this.sql.exec('INSERT OR REPLACE INTO meta (k, json) VALUES (1, ?)', JSON.stringify(meta))
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => undefined)
    return run
  }

  async create(init: { id: string; ownerId: string; kind: UploadKind; name: string | null; length: number | null }): Promise<RoomResult<UploadStatus>> {
    if (this.meta) return fail(ErrorCode.CONFLICT, 'upload already exists')
    const expiresAt = this.now() + UPLOAD_TTL_MS
    this.save({ ...init, offset: 0, expiresAt, state: 'open', mime: null, multipartId: null, parts: [] })
    await this.ctx.storage.setAlarm(expiresAt)
    return ok({ offset: 0, length: init.length, expiresAt })
  }

  private owned(userId: string): RoomResult<Meta> {
    // Someone else's upload id answers exactly like one that does not exist.
    if (!this.meta || this.meta.ownerId !== userId || this.meta.state === 'failed') return fail(ErrorCode.NOT_FOUND, 'no such upload')
    if (this.meta.state === 'open' && this.meta.expiresAt <= this.now()) return fail(ErrorCode.NOT_FOUND, 'the upload expired')
    return ok(this.meta)
  }

  async status(userId: string): Promise<RoomResult<UploadStatus>> {
    const m = this.owned(userId)
    if (!m.ok) return m
    return ok({ offset: m.value.offset, length: m.value.length, expiresAt: m.value.expiresAt })
  }

  /** Appends bytes at `offset`; `length` declares the total when it was deferred at creation. */
  append(userId: string, offset: number, bytes: Uint8Array, length: number | null): Promise<RoomResult<UploadStatus>> {
    return this.serial(async () => {
      const m = this.owned(userId)
      if (!m.ok) return m
      const meta = { ...m.value }
      if (meta.state === 'done') return fail(ErrorCode.CONFLICT, 'the upload is already complete')
      if (offset !== meta.offset) return fail(ErrorCode.CONFLICT, `Upload-Offset is ${offset} but the upload is at ${meta.offset}`)
      if (length !== null) {
        if (meta.length !== null && meta.length !== length) return fail(ErrorCode.BAD_REQUEST, 'Upload-Length cannot change')
        if (length < offset + bytes.byteLength) return fail(ErrorCode.BAD_REQUEST, 'Upload-Length is less than the bytes sent')
        if (length > UPLOAD_LIMITS[meta.kind].maxBytes) return fail(ErrorCode.PAYLOAD_TOO_LARGE, `${meta.kind} uploads are at most ${UPLOAD_LIMITS[meta.kind].maxBytes} bytes`)
        meta.length = length
      }
      const end = offset + bytes.byteLength
      const cap = meta.length ?? UPLOAD_LIMITS[meta.kind].maxBytes
      if (end > cap) return fail(ErrorCode.PAYLOAD_TOO_LARGE, meta.length === null ? `${meta.kind} uploads are at most ${cap} bytes` : 'more bytes than Upload-Length')

      this.ctx.storage.transactionSync(() => {
        for (let i = 0; i < bytes.byteLength; i += SLICE) this.sql.exec('INSERT INTO staged (offset, data) VALUES (?, ?)', offset + i, bytes.subarray(i, i + SLICE))
        meta.offset = end
        this.save(meta)
      })
      const complete = meta.length !== null && meta.offset === meta.length

      if (meta.mime === null && (meta.offset >= SNIFF_BYTES || complete)) {
        const head = this.stagedBytes().subarray(0, SNIFF_BYTES)
        const sniffed = sniffFor(meta.kind, head)
        if (!sniffed.ok) return this.reject(sniffed)
        this.save({ ...this.meta!, mime: sniffed.value })
      }
      if (complete) return this.finish()
      // Confirmed bytes are safe in SQLite; moving them to R2 may fail and is retried next time.
      if (this.stagedSize() >= R2_MIN_PART) await this.flushPart().catch((e) => console.warn('upload part not flushed yet', String(e)))
      return ok({ offset: this.meta!.offset, length: this.meta!.length, expiresAt: this.meta!.expiresAt })
    })
  }

  private stagedSize(): number {
    return this.sql.exec<{ n: number | null }>('SELECT sum(length(data)) AS n FROM staged').one().n ?? 0
  }

  private stagedBytes(): Uint8Array {
    const rows = this.sql.exec<{ data: ArrayBuffer }>('SELECT data FROM staged ORDER BY offset').toArray()
    const out = new Uint8Array(rows.reduce((n, r) => n + r.data.byteLength, 0))
    let at = 0
    for (const r of rows) {
      out.set(new Uint8Array(r.data), at)
      at += r.data.byteLength
    }
    return out
  }

  private async flushPart() {
    const meta = this.meta!
    const key = mediaKey(meta.id)
    const upload = meta.multipartId ? this.env.MEDIA.resumeMultipartUpload(key, meta.multipartId) : await this.env.MEDIA.createMultipartUpload(key)
    if (!meta.multipartId) this.save({ ...meta, multipartId: upload.uploadId })
    const partNumber = this.meta!.parts.length + 1
    const part = await upload.uploadPart(partNumber, this.stagedBytes())
    this.ctx.storage.transactionSync(() => {
      this.sql.exec('DELETE FROM staged')
      this.save({ ...this.meta!, parts: [...this.meta!.parts, part] })
    })
  }

  private async finish(): Promise<RoomResult<UploadStatus>> {
    const meta = this.meta!
    const key = mediaKey(meta.id)
    let whole: Uint8Array | null = null
    try {
      if (meta.multipartId) {
        if (this.stagedSize() > 0) await this.flushPart()
        await this.env.MEDIA.resumeMultipartUpload(key, meta.multipartId).complete(this.meta!.parts)
      } else {
        whole = this.stagedBytes()
        await this.env.MEDIA.put(key, whole)
      }
    } catch (e) {
      console.error('upload not assembled', String(e))
      await this.countUpload('failed')
      return fail(ErrorCode.INTERNAL, 'the upload could not be stored; send the last chunk again')
    }
    // Voice durations need the whole file; image sizes only the header.
    const bytes = whole ?? new Uint8Array(await (await this.env.MEDIA.get(key, meta.kind === 'voice' ? {} : { range: { offset: 0, length: 64 * 1024 } }))!.arrayBuffer())
    const info = inspectMedia(meta.kind, meta.mime!, bytes, meta.length!)
    if (!info.ok) {
      await this.env.MEDIA.delete(key)
      await this.countUpload('failed')
      return this.reject(info)
    }
    await this.env.DB.prepare(
      `INSERT INTO media (id, owner_id, kind, mime, size, name, duration_ms, width, height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO NOTHING`,
    )
      .bind(meta.id, meta.ownerId, meta.kind, info.value.mime, info.value.size, meta.name, info.value.durationMs ?? null, info.value.width ?? null, info.value.height ?? null)
      .run()
    this.ctx.storage.transactionSync(() => {
      this.sql.exec('DELETE FROM staged')
      this.save({ ...this.meta!, state: 'done', parts: [] })
    })
    await this.countUpload('ok', info.value.size)
    return ok({ offset: meta.length!, length: meta.length, expiresAt: meta.expiresAt, media: info.value })
  }

  /** An upload ends once: its counts go to the shard now, since this object is done. */
  private async countUpload(outcome: 'ok' | 'failed', bytes = 0) {
    const metrics = new Metrics(this.env, `upload:${this.ctx.id.toString()}`)
    metrics.count(Counter.uploads, outcome)
    metrics.count(Counter.uploadBytes, undefined, bytes)
    await metrics.flush()
  }

  /** Bad bytes end the upload: nothing of it is kept. */
  private async reject<T>(err: RoomResult<T> & { ok: false }): Promise<RoomResult<never>> {
    await this.discard('failed')
    return err
  }

  private async discard(state: 'failed' | null) {
    const meta = this.meta
    if (meta?.multipartId) await this.env.MEDIA.resumeMultipartUpload(mediaKey(meta.id), meta.multipartId).abort().catch(() => undefined)
    this.ctx.storage.transactionSync(() => {
      this.sql.exec('DELETE FROM staged')
      if (meta && state) this.save({ ...meta, state, multipartId: null, parts: [] })
    })
  }

  /** tus termination: the uploader gives up; a finished upload is deleted by recall instead. */
  terminate(userId: string): Promise<RoomResult<null>> {
    return this.serial(async () => {
      const m = this.owned(userId)
      if (!m.ok) return m
      if (m.value.state === 'done') return fail(ErrorCode.CONFLICT, 'a finished upload is removed by recalling its message')
      await this.discard('failed')
      return ok(null)
    })
  }

  /** Expiry: an upload still open is abandoned; its staged bytes and R2 parts go. */
  override async alarm() {
    await this.serial(async () => {
      if (this.meta?.state === 'open') await this.discard('failed')
    })
  }
}
