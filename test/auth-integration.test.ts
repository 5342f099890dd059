import { env } from 'cloudflare:workers'
import { SignJWT } from 'jose'
import { describe, it } from 'vitest'
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
  it('rotates on use and revokes the session when an old token is replayed', async ({ expect }) => {
    const a = await register()
    const r1 = await api('/api/auth/refresh', { body: { refreshToken: a.refreshToken } })
    expect(r1.status).toBe(200)
    const rotated = await json<AuthResult>(r1)
    expect(rotated.refreshToken).not.toBe(a.refreshToken)
    expect(rotated.sessionId).toBe(a.sessionId)

    const replay = await api('/api/auth/refresh', { body: { refreshToken: a.refreshToken } })
    expect(replay.status).toBe(401)
    expect((await json(replay)).error.code).toBe('TOKEN_REUSED')
    // The thief and the owner both lose the session: the newest token is dead too.
    const afterReuse = await api('/api/auth/refresh', { body: { refreshToken: rotated.refreshToken } })
    expect(afterReuse.status).toBe(401)
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
