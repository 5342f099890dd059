import type { UploadedMedia } from '../../worker/shared/protocol'
import { MAX_UPLOAD_CHUNK, type UploadKind } from '../../worker/shared/limits'
import { ApiError, authedFetch, errorOf } from './api'

/*
 * A small tus 1.0 client for our uploads. Bytes are appended strictly in order; after any failure
 * the client asks the server (HEAD) where the upload stands and continues from there, so a cut
 * connection costs at most the chunk in flight.
 */
const TUS = { 'Tus-Resumable': '1.0.0' }
/** Chunks are at most this; smaller ones cost a request each, larger ones more to redo. */
const CHUNK = Math.min(2 * 1024 * 1024, MAX_UPLOAD_CHUNK)

const b64 = (s: string) => btoa(String.fromCharCode(...new TextEncoder().encode(s)))

/** Creates an upload; without `length` it is deferred (a recording still running). Returns its URL path. */
export async function createUpload(kind: UploadKind, opts: { length?: number; filename?: string } = {}): Promise<string> {
  const metadata = [`kind ${b64(kind)}`, ...(opts.filename ? [`filename ${b64(opts.filename)}`] : [])].join(',')
  const res = await authedFetch('/api/uploads', {
    method: 'POST',
    headers: { ...TUS, 'Upload-Metadata': metadata, ...(opts.length === undefined ? { 'Upload-Defer-Length': '1' } : { 'Upload-Length': String(opts.length) }) },
  })
  if (res.status !== 201) throw await errorOf(res)
  return new URL(res.headers.get('location')!, location.href).pathname
}

/** Where the server says the upload stands. */
export async function uploadOffset(url: string): Promise<number> {
  const res = await authedFetch(url, { method: 'HEAD', headers: TUS })
  if (!res.ok) throw new ApiError(res.status, res.status === 404 ? 'NOT_FOUND' : 'INTERNAL', 'the upload is gone')
  return Number(res.headers.get('upload-offset'))
}

/** Appends bytes at `offset`; `total` declares the length (deferred uploads, last chunk). */
export async function appendChunk(url: string, offset: number, bytes: Blob, total?: number): Promise<{ offset: number; media: UploadedMedia | null }> {
  const res = await authedFetch(url, {
    method: 'PATCH',
    headers: { ...TUS, 'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': String(offset), ...(total !== undefined ? { 'Upload-Length': String(total) } : {}) },
    body: bytes,
  })
  if (res.status !== 204) throw await errorOf(res)
  const media = res.headers.get('echovalley-media')
  return { offset: Number(res.headers.get('upload-offset')), media: media ? (JSON.parse(media) as UploadedMedia) : null }
}

/** Errors after which retrying the same upload cannot help. */
export function finalUploadError(e: unknown): boolean {
  return e instanceof ApiError && [400, 403, 404, 413, 415].includes(e.status)
}

/**
 * Sends whatever of `blob` the server does not have yet and declares its length with the last
 * chunk; resumes from the server's offset. Resolves with what the server read from the bytes.
 */
export async function completeUpload(url: string, blob: Blob, onProgress?: (sent: number) => void): Promise<UploadedMedia> {
  let offset = await uploadOffset(url)
  for (let attempt = 0; ; ) {
    try {
      for (;;) {
        const end = Math.min(offset + CHUNK, blob.size)
        const { offset: next, media } = await appendChunk(url, offset, blob.slice(offset, end), end === blob.size ? blob.size : undefined)
        offset = next
        onProgress?.(offset)
        if (media) return media
        if (offset >= blob.size) throw new ApiError(409, 'CONFLICT', 'the server has every byte but did not finish the upload')
      }
    } catch (e) {
      if (finalUploadError(e) || ++attempt > 5) throw e
      await new Promise((r) => setTimeout(r, Math.min(8000, 500 * 2 ** attempt)))
      offset = await uploadOffset(url)
    }
  }
}

/**
 * Streams a recording while it is made: chunks are appended in order as they arrive, without a
 * length. A failure just stops streaming; completeUpload later resumes from the server's offset.
 */
export class LiveUpload {
  url: Promise<string>
  #offset = 0
  #chain: Promise<void>
  #broken = false

  constructor(kind: UploadKind) {
    this.url = createUpload(kind)
    this.#chain = this.url.then(() => undefined)
    // A failed creation is picked up when the recording is sent.
    this.#chain.catch(() => (this.#broken = true))
  }

  push(chunk: Blob) {
    if (chunk.size === 0) return
    this.#chain = this.#chain.then(async () => {
      if (this.#broken) return
      try {
        this.#offset = (await appendChunk(await this.url, this.#offset, chunk)).offset
      } catch {
        this.#broken = true
      }
    })
  }

  /** Waits for chunks in flight, so completion starts from where streaming got to. */
  async settled(): Promise<void> {
    await this.#chain.catch(() => undefined)
  }
}
