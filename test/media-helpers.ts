import { env } from 'cloudflare:workers'
import type { AuthResult, UploadedMedia } from '../worker/shared/protocol'
import { api } from './helpers'

export interface Voice {
  webmLive: Uint8Array
  webm: Uint8Array
  ogg: Uint8Array
  m4a: Uint8Array
  mp4Frag: Uint8Array
  durationMs: number
}

const fromBase64 = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0))

/** Speech recorded by test/support/voice-fixtures.ts when the test run started. */
export function voice(): Voice {
  const v = JSON.parse(env.TEST_VOICE!) as Record<'webmLive' | 'webm' | 'ogg' | 'm4a' | 'mp4Frag', string> & { durationMs: number }
  return { webmLive: fromBase64(v.webmLive), webm: fromBase64(v.webm), ogg: fromBase64(v.ogg), m4a: fromBase64(v.m4a), mp4Frag: fromBase64(v.mp4Frag), durationMs: v.durationMs }
}

const TUS = { 'tus-resumable': '1.0.0' }
const meta = (fields: Record<string, string>) =>
  Object.entries(fields)
    .map(([k, v]) => `${k} ${btoa(String.fromCharCode(...new TextEncoder().encode(v)))}`)
    .join(',')

/** tus creation; returns the upload path. */
export async function createUpload(a: AuthResult, kind: string, opts: { length?: number; filename?: string } = {}) {
  const res = await api('/api/uploads', {
    method: 'POST',
    token: a.accessToken,
    headers: {
      ...TUS,
      'upload-metadata': meta({ kind, ...(opts.filename ? { filename: opts.filename } : {}) }),
      ...(opts.length === undefined ? { 'upload-defer-length': '1' } : { 'upload-length': String(opts.length) }),
    },
  })
  return { res, path: res.status === 201 ? new URL(res.headers.get('location')!).pathname : '' }
}

export function patch(a: AuthResult, path: string, offset: number, bytes: Uint8Array | ReadableStream, length?: number) {
  return api(path, {
    method: 'PATCH',
    token: a.accessToken,
    headers: { ...TUS, 'content-type': 'application/offset+octet-stream', 'upload-offset': String(offset), ...(length !== undefined ? { 'upload-length': String(length) } : {}) },
    body: bytes as Uint8Array,
  })
}

export function head(a: AuthResult, path: string) {
  return api(path, { method: 'HEAD', token: a.accessToken, headers: TUS })
}

/** Uploads in chunks (the length declared with the last one when deferred) and returns what the server read. */
export async function upload(a: AuthResult, kind: string, bytes: Uint8Array, opts: { chunk?: number; deferred?: boolean; filename?: string } = {}): Promise<UploadedMedia> {
  const chunk = opts.chunk ?? 64 * 1024
  const { res, path } = await createUpload(a, kind, { length: opts.deferred ? undefined : bytes.length, filename: opts.filename })
  if (res.status !== 201) throw new Error(`create: ${res.status} ${await res.text()}`)
  let last: Response | null = null
  for (let at = 0; at < bytes.length; at += chunk) {
    const end = Math.min(at + chunk, bytes.length)
    last = await patch(a, path, at, bytes.subarray(at, end), opts.deferred && end === bytes.length ? bytes.length : undefined)
    if (last.status !== 204) throw new Error(`patch at ${at}: ${last.status} ${await last.text()}`)
  }
  return JSON.parse(last!.headers.get('echovalley-media')!) as UploadedMedia
}

export function randomBytes(n: number, seed = 1): Uint8Array {
  // Cheap deterministic bytes (xorshift), so large fixtures cost no entropy.
  const out = new Uint8Array(n)
  let x = seed >>> 0 || 1
  for (let i = 0; i < n; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    out[i] = x & 0xff
  }
  return out
}

export async function sha256(bytes: ArrayBuffer | Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest('SHA-256', bytes)
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('')
}

/** A PNG header with an IHDR chunk: enough for the server to sniff it and read its size. */
export function png(width: number, height: number): Uint8Array {
  const b = new Uint8Array(64)
  b.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52])
  new DataView(b.buffer).setUint32(16, width)
  new DataView(b.buffer).setUint32(20, height)
  return b
}
