// A stand-in for a browser vendor's push service at https://push.test, run in Node as the
// workerd tests' outbound network. It checks what a real one checks (VAPID signature) and
// decrypts with the independent http_ece package, so a payload that passes is standard RFC 8291.
import { createECDH, createPublicKey, generateKeyPairSync, randomBytes, verify } from 'node:crypto'
import ece from 'http_ece'

export const PUSH_HOST = 'push.test'

interface FakeSubscription {
  ecdh: ReturnType<typeof createECDH>
  auth: string
  mode: 'ok' | 'gone' | 'fail'
  hits: number
  received: { payload: unknown; ttl: string | null; urgency: string | null; topic: string | null }[]
  rejected: string[]
}

export function generateVapidKeys() {
  const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' })
  const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')])
  return { publicKey: point.toString('base64url'), privateKey: jwk.d! }
}

function checkVapid(header: string | null, vapidPublicKey: string): string | null {
  const m = header?.match(/^vapid t=([^,]+),\s*k=(.+)$/)
  if (!m) return 'missing vapid authorization'
  const [, jwt, k] = m
  if (k !== vapidPublicKey) return 'unexpected VAPID key'
  const [h, p, s] = jwt!.split('.')
  const raw = Buffer.from(k!, 'base64url')
  const key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: raw.subarray(1, 33).toString('base64url'), y: raw.subarray(33, 65).toString('base64url') }, format: 'jwk' })
  const ok = verify('sha256', Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(s!, 'base64url'))
  if (!ok) return 'bad VAPID signature'
  const claims = JSON.parse(Buffer.from(p!, 'base64url').toString())
  if (claims.aud !== `https://${PUSH_HOST}`) return 'wrong audience'
  if (!(claims.exp > Date.now() / 1000)) return 'expired'
  return null
}

export function createPushService(vapidPublicKey: string) {
  const subs = new Map<string, FakeSubscription>()
  return async function pushService(request: Request): Promise<Response> {
    const url = new URL(request.url)
    if (url.hostname !== PUSH_HOST) return new Response(`no network in tests: ${url.hostname}`, { status: 502 })
    const parts = url.pathname.split('/').filter(Boolean)
    if (request.method === 'POST' && parts[0] === 'new') {
      const id = randomBytes(8).toString('hex')
      const ecdh = createECDH('prime256v1')
      ecdh.generateKeys()
      const auth = randomBytes(16).toString('base64url')
      const mode = (url.searchParams.get('mode') ?? 'ok') as FakeSubscription['mode']
      subs.set(id, { ecdh, auth, mode, hits: 0, received: [], rejected: [] })
      return Response.json({ endpoint: `https://${PUSH_HOST}/ep/${id}`, keys: { p256dh: ecdh.getPublicKey().toString('base64url'), auth } })
    }
    const sub = parts[0] === 'ep' ? subs.get(parts[1] ?? '') : undefined
    if (!sub) return new Response('unknown subscription', { status: 404 })
    if (request.method === 'GET' && parts[2] === 'received') {
      return Response.json({ hits: sub.hits, received: sub.received, rejected: sub.rejected })
    }
    sub.hits++
    const problem = checkVapid(request.headers.get('authorization'), vapidPublicKey)
    if (problem) {
      sub.rejected.push(problem)
      return new Response(problem, { status: 403 })
    }
    if (request.headers.get('content-encoding') !== 'aes128gcm') {
      sub.rejected.push('not aes128gcm')
      return new Response('bad encoding', { status: 400 })
    }
    if (sub.mode === 'gone') return new Response('gone', { status: 410 })
    if (sub.mode === 'fail') return new Response('try later', { status: 503 })
    const body = Buffer.from(await request.arrayBuffer())
    const plain = ece.decrypt(body, { version: 'aes128gcm', privateKey: sub.ecdh, authSecret: sub.auth })
    sub.received.push({
      payload: JSON.parse(plain.toString('utf8')),
      ttl: request.headers.get('ttl'),
      urgency: request.headers.get('urgency'),
      topic: request.headers.get('topic'),
    })
    return new Response(null, { status: 201 })
  }
}
