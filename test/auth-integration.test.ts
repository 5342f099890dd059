import { env } from 'cloudflare:workers'
import { SignJWT } from 'jose'
import { describe, it } from 'vitest'
import { REFRESH_RETRY_WINDOW_MS, rotateRefreshToken } from '../worker/auth/sessions'
import { getDb } from '../worker/db/client'
import { sha256 } from '../worker/ids'
import type { AuthResult } from '../worker/shared/protocol'
import { api, json, register, uniqueHandle } from './helpers'

describe('register and login', () => {
  it('registers, returns tokens and never the hash', async ({ expect }) => {
    const handle = uniqueHandle()
    const res = await api('/api/auth/register', { body: { handle, password: 'hunter2hunter2', displayName: 'Ada' } })
    expect(res.status).toBe(201)
    const body = await json<AuthResult>(res)
    expect(body.user).toEqual({ id: expect.any(String), handle, displayName: 'Ada', avatar: null })
    expect(JSON.stringify(body)).not.toMatch(/pbkdf2|password/i)
    const me = await api('/api/me', { token: body.accessToken })
    expect(await json(me)).toMatchObject({ user: body.user, profile: { ...body.user, statusLine: '', hasAvatar: false }, settings: { pushPreviews: true, presenceVisibility: 'everyone' } })
  })

  it('stores a PBKDF2 hash within the production Workers cap of 100,000 iterations', async ({ expect }) => {
    const a = await register()
    const row = await env.DB.prepare('SELECT password_hash FROM users WHERE id = ?').bind(a.user.id).first<{ password_hash: string }>()
    const [scheme, iterations] = row!.password_hash.split('$')
    expect(scheme).toBe('pbkdf2-sha256')
    expect(Number(iterations)).toBeGreaterThanOrEqual(100_000)
    expect(Number(iterations)).toBeLessThanOrEqual(100_000)
  })

  it('normalises the handle and refuses a taken one', async ({ expect }) => {
    const handle = uniqueHandle()
    await register(handle)
    const res = await api('/api/auth/register', { body: { handle: handle.toUpperCase(), password: 'whatever-123', displayName: 'X' } })
    expect(res.status).toBe(409)
    expect(await json(res)).toEqual({ error: { code: 'HANDLE_TAKEN', message: expect.any(String) } })
  })

  it.for([
    ['missing fields', {}],
    ['short password', { handle: 'valid_name', password: 'short', displayName: 'X' }],
    ['bad handle', { handle: 'no spaces!', password: 'long-enough-1', displayName: 'X' }],
    ['empty display name', { handle: 'valid_name2', password: 'long-enough-1', displayName: '   ' }],
    ['wrong types', { handle: 42, password: ['x'], displayName: null }],
  ] as const)('rejects %s with 400 and creates nothing', async ([, body], { expect }) => {
    const before = await env.DB.prepare('SELECT count(*) AS n FROM users').first<{ n: number }>()
    const res = await api('/api/auth/register', { body })
    expect(res.status).toBe(400)
    expect(await json(res)).toEqual({ error: { code: 'BAD_REQUEST', message: expect.any(String) } })
    const after = await env.DB.prepare('SELECT count(*) AS n FROM users').first<{ n: number }>()
    expect(after!.n).toBe(before!.n)
  })

  it('rejects malformed JSON with the error shape, not a 500', async ({ expect }) => {
    const res = await api('/api/auth/register', { body: '{"handle":' })
    expect(res.status).toBe(400)
    expect((await json(res)).error.code).toBe('BAD_REQUEST')
  })

  it('logs in with the right password only, with the same answer for unknown handles', async ({ expect }) => {
    const a = await register(undefined, 'the-right-password')
    const ok = await api('/api/auth/login', { body: { handle: a.user.handle, password: 'the-right-password' } })
    expect(ok.status).toBe(200)
    const login = await json<AuthResult>(ok)
    expect(login.sessionId).not.toBe(a.sessionId)
    const wrong = await api('/api/auth/login', { body: { handle: a.user.handle, password: 'the-wrong-password' } })
    const unknown = await api('/api/auth/login', { body: { handle: uniqueHandle('ghost'), password: 'the-wrong-password' } })
    expect(wrong.status).toBe(401)
    expect(unknown.status).toBe(401)
    expect(await json(wrong)).toEqual(await json(unknown))
  })
})

describe('access tokens', () => {
  const secret = () => new TextEncoder().encode(env.JWT_SECRET)

  it('rejects missing, garbage, expired, wrong-audience, wrong-key and alg-none tokens', async ({ expect }) => {
    const a = await register()
    const base = () => new SignJWT({ sid: a.sessionId }).setProtectedHeader({ alg: 'HS256' }).setSubject(a.user.id).setIssuer(env.JWT_ISSUER)
    const expired = await base().setAudience(env.JWT_AUDIENCE).setExpirationTime(Math.floor(Date.now() / 1000) - 10).sign(secret())
    const wrongAud = await base().setAudience('someone-else').setExpirationTime('5m').sign(secret())
    const wrongKey = await base().setAudience(env.JWT_AUDIENCE).setExpirationTime('5m').sign(new TextEncoder().encode('x'.repeat(40)))
    const header = btoa(JSON.stringify({ alg: 'none', typ: 'JWT' })).replace(/=+$/, '')
    const payload = btoa(JSON.stringify({ sub: a.user.id, sid: a.sessionId, iss: env.JWT_ISSUER, aud: env.JWT_AUDIENCE, exp: 9999999999 })).replace(/=+$/, '')
    const algNone = `${header}.${payload}.`
    for (const token of [undefined, 'garbage', expired, wrongAud, wrongKey, algNone]) {
      const res = await api('/api/me', { token })
      expect(res.status).toBe(401)
      expect((await json(res)).error.code).toBe('UNAUTHORIZED')
    }
    expect((await api('/api/me', { token: a.accessToken })).status).toBe(200)
  })
})

describe('refresh tokens', () => {
  const refresh = (refreshToken: string, retryKey?: string) => api('/api/auth/refresh', { body: { refreshToken, retryKey } })

  it('rotates on use and revokes the session when an old token is replayed', async ({ expect }) => {
    const a = await register()
    const r1 = await refresh(a.refreshToken, 'first-try-key-0001')
    expect(r1.status).toBe(200)
    const rotated = await json<AuthResult>(r1)
    expect(rotated.refreshToken).not.toBe(a.refreshToken)
    expect(rotated.sessionId).toBe(a.sessionId)

    // Without the key of the first try this is no retry: a replay.
    const replay = await refresh(a.refreshToken)
    expect(replay.status).toBe(401)
    expect((await json(replay)).error.code).toBe('TOKEN_REUSED')
    // The thief and the owner both lose the session: the newest token is dead too.
    expect((await refresh(rotated.refreshToken)).status).toBe(401)
    expect((await api('/api/me', { token: rotated.accessToken })).status).toBe(401)
  })

  it('a retry after a lost answer gets new tokens, and the unanswered ones are retired', async ({ expect }) => {
    const a = await register()
    const key = crypto.randomUUID()
    const lost = await json<AuthResult>(await refresh(a.refreshToken, key))
    // The device never saw `lost` and tries again, with the same key.
    const retry = await refresh(a.refreshToken, key)
    expect(retry.status).toBe(200)
    const again = await json<AuthResult>(retry)
    expect(again.sessionId).toBe(a.sessionId)
    expect(new Set([a.refreshToken, lost.refreshToken, again.refreshToken]).size).toBe(3)
    const live = await env.DB.prepare('SELECT count(*) AS n FROM refresh_tokens WHERE session_id = ? AND used_at IS NULL').bind(a.sessionId).first<{ n: number }>()
    expect(live!.n).toBe(1)
    expect((await api('/api/me', { token: again.accessToken })).status).toBe(200)
    const next = await json<AuthResult>(await refresh(again.refreshToken, crypto.randomUUID()))
    expect(next.sessionId).toBe(a.sessionId)
    // Had someone else taken `lost` (a thief racing the owner), it shows when it comes back: revoked.
    const stolen = await refresh(lost.refreshToken)
    expect(stolen.status).toBe(401)
    expect((await json(stolen)).error.code).toBe('TOKEN_REUSED')
    expect((await refresh(next.refreshToken)).status).toBe(401)
  })

  it('no retry with another key, once the answer was used, after the window, or twice at once', async ({ expect }) => {
    const wrongKey = await register()
    await refresh(wrongKey.refreshToken, 'the-key-that-was-sent')
    const guessed = await refresh(wrongKey.refreshToken, 'another-key-entirely')
    expect(guessed.status).toBe(401)
    expect((await json(guessed)).error.code).toBe('TOKEN_REUSED')

    // The answer arrived and its token was used: the same key again is a replay.
    const used = await register()
    const got = await json<AuthResult>(await refresh(used.refreshToken, 'key-of-the-first-try'))
    const onward = await json<AuthResult>(await refresh(got.refreshToken, 'key-of-the-second-try'))
    expect((await refresh(used.refreshToken, 'key-of-the-first-try')).status).toBe(401)
    expect((await api('/api/me', { token: onward.accessToken })).status).toBe(401)

    // Too late: the window after the first use is over (set back here).
    const late = await register()
    await refresh(late.refreshToken, 'key-of-a-late-retry')
    await env.DB.prepare('UPDATE refresh_tokens SET used_at = used_at - ? WHERE session_id = ? AND used_at IS NOT NULL').bind(REFRESH_RETRY_WINDOW_MS + 1000, late.sessionId).run()
    expect((await refresh(late.refreshToken, 'key-of-a-late-retry')).status).toBe(401)

    // Retries of one spent token at once: however they interleave, the session never forks (one
    // live refresh token), and it ends revoked: by a retry that lost, or by a retired token shown.
    const twice = await register()
    await refresh(twice.refreshToken, 'key-sent-thrice-0001')
    const answers = await Promise.all([1, 2, 3].map(() => refresh(twice.refreshToken, 'key-sent-thrice-0001')))
    const live = await env.DB.prepare('SELECT token_hash FROM refresh_tokens WHERE session_id = ? AND used_at IS NULL').bind(twice.sessionId).all<{ token_hash: string }>()
    expect(live.results).toHaveLength(1)
    const granted = await Promise.all(answers.filter((r) => r.status === 200).map((r) => json<AuthResult>(r)))
    expect(granted.length).toBeGreaterThanOrEqual(1)
    const isLive = await Promise.all(granted.map(async (g) => (await sha256(g.refreshToken)) === live.results[0]!.token_hash))
    expect(isLive.filter(Boolean)).toHaveLength(1)
    for (const [i, g] of granted.entries()) if (!isLive[i]) expect((await refresh(g.refreshToken)).status).toBe(401)
    const winner = granted[isLive.indexOf(true)]!
    expect((await refresh(winner.refreshToken)).status).toBe(401)
    expect((await api('/api/me', { token: winner.accessToken })).status).toBe(401)
  })

  it('a try the server reaches only after its retry was answered changes nothing and signs nobody out', async ({ expect }) => {
    // The device sent a refresh, saw a network error while the server still held it, and retried
    // with the same key; the retry was answered first. The first try, run now, arrived earlier.
    const a = await register()
    const key = crypto.randomUUID()
    const firstArrived = Date.now()
    await new Promise((r) => setTimeout(r, 5))
    const answered = await json<AuthResult>(await refresh(a.refreshToken, key))
    const late = await rotateRefreshToken(env, getDb(env), a.refreshToken, null, key, firstArrived).then(() => null, (e: { status: number; cause: { code: string } }) => e)
    expect(late?.status).toBe(409)
    expect(late?.cause.code).toBe('REFRESH_IN_FLIGHT')
    // The retry's token is still the live one (before, the late try retired it: signed out next time).
    const live = await env.DB.prepare('SELECT count(*) AS n FROM refresh_tokens WHERE session_id = ? AND used_at IS NULL').bind(a.sessionId).first<{ n: number }>()
    expect(live?.n).toBe(1)
    const onward = await refresh(answered.refreshToken, crypto.randomUUID())
    expect(onward.status).toBe(200)
    expect((await api('/api/me', { token: (await json<AuthResult>(onward)).accessToken })).status).toBe(200)
    // Arriving after the token was spent, the same token without its key is still a replay.
    expect((await refresh(a.refreshToken)).status).toBe(401)
    expect((await api('/api/me', { token: answered.accessToken })).status).toBe(401)
  })

  it('stores refresh tokens hashed, never in the clear', async ({ expect }) => {
    const a = await register()
    const rows = await env.DB.prepare('SELECT token_hash FROM refresh_tokens WHERE session_id = ?').bind(a.sessionId).all<{ token_hash: string }>()
    expect(rows.results).toHaveLength(1)
    expect(rows.results[0]!.token_hash).not.toBe(a.refreshToken)
  })

  it('logout revokes the session: refresh and socket tickets stop working', async ({ expect }) => {
    const a = await register()
    expect((await api('/api/auth/logout', { method: 'POST', token: a.accessToken })).status).toBe(204)
    expect((await api('/api/auth/refresh', { body: { refreshToken: a.refreshToken } })).status).toBe(401)
    expect((await api('/api/ws/ticket', { method: 'POST', token: a.accessToken })).status).toBe(401)
  })

  it('lists devices and revokes another one', async ({ expect }) => {
    const a = await register(undefined, 'pass-word-123')
    const phone = await json<AuthResult>(await api('/api/auth/login', { body: { handle: a.user.handle, password: 'pass-word-123', deviceName: 'Phone' } }))
    const list = await json<{ sessions: { id: string; deviceName: string; current: boolean }[] }>(await api('/api/auth/sessions', { token: a.accessToken }))
    expect(list.sessions.map((s) => s.id).sort()).toEqual([a.sessionId, phone.sessionId].sort())
    expect(list.sessions.find((s) => s.id === a.sessionId)!.current).toBe(true)
    expect((await api(`/api/auth/sessions/${phone.sessionId}`, { method: 'DELETE', token: a.accessToken })).status).toBe(204)
    expect((await api('/api/auth/refresh', { body: { refreshToken: phone.refreshToken } })).status).toBe(401)
  })
})
