import { and, desc, eq, isNull } from 'drizzle-orm'
import { Hono } from 'hono'
import { DUMMY_HASH, hashPassword, verifyPassword } from '../auth/password'
import { placeOf, publicUser, revokeOtherSessions, revokeSession, rotateRefreshToken, startSession } from '../auth/sessions'
import { getDb } from '../db/client'
import { sessions, users } from '../db/schema'
import type { AppEnv } from '../env'
import { clientAddress, fail, requireAuth, validate } from '../http'
import { newId, sha256 } from '../ids'
import { newRefreshToken } from '../auth/tokens'
import { parseRate } from '../conversation/rate-limit'
import type { Verdict } from '../auth/login-limits'
import type { Env } from '../env'
import { ErrorCode } from '../shared/errors'
import { profileOf } from '../social/policy'
import { ChangePasswordBody, LoginBody, ReauthBody, RefreshBody, RegisterBody, SettingsBody, type DeviceSession } from '../shared/protocol'

/** "Chrome on Android": what a person recognises in the Devices list, from the browser's user agent. */
export function deviceFrom(name: string | undefined, userAgent: string | undefined): string {
  if (name) return name
  const ua = userAgent ?? ''
  const browser = /Edg\//.test(ua) ? 'Edge' : /OPR\//.test(ua) ? 'Opera' : /Firefox\//.test(ua) ? 'Firefox' : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : null
  const os = /iPhone/.test(ua) ? 'iPhone' : /iPad/.test(ua) ? 'iPad' : /Android/.test(ua) ? 'Android' : /Windows/.test(ua) ? 'Windows' : /Mac OS X/.test(ua) ? 'macOS' : /CrOS/.test(ua) ? 'ChromeOS' : /Linux/.test(ua) ? 'Linux' : null
  if (browser && os) return `${browser} on ${os}`
  return browser ?? os ?? (ua.slice(0, 64) || 'Unknown device')
}

/** Sign-ups per client address, "burst/perHour"; env REGISTER_RATE overrides it. */
const DEFAULT_REGISTER_RATE: [number, number] = [10, 20]

const loginGuard = (env: Env, key: string) => env.LOGIN_GUARD.get(env.LOGIN_GUARD.idFromName(key))

function refuseFor(verdict: Verdict, message: string): void {
  if (!verdict.allowed) fail(429, ErrorCode.RATE_LIMITED, message, verdict.retryAfterMs / 1000)
}

/**
 * A password tried under the handle's guard: refused with 429 before any hashing when the handle
 * has had too many wrong ones, and counted when wrong. Sign-in and re-authentication share it, so a
 * stolen session is not a free password oracle.
 */
async function tryPassword(env: Env, handle: string, deviceHash: string | null, password: string, hash: string): Promise<boolean> {
  const guard = loginGuard(env, `handle:${handle}`)
  refuseFor(await guard.check(deviceHash), 'too many wrong passwords for this account; wait before trying again')
  const ok = await verifyPassword(password, hash)
  if (!ok) await guard.failed(deviceHash)
  return ok
}

/** A token that marks this browser as one that signed in to this handle before (stored hashed by the guard). */
async function knownDevice(env: Env, handle: string, presented: string | undefined): Promise<string> {
  const token = presented ?? newRefreshToken()
  await loginGuard(env, `handle:${handle}`).succeeded(await sha256(token))
  return token
}

export const authRoutes = new Hono<AppEnv>()
  .post('/register', validate('json', RegisterBody), async (c) => {
    const body = c.req.valid('json')
    const db = getDb(c.env)
    refuseFor(await loginGuard(c.env, `signup:${clientAddress(c)}`).takeSignup(...parseRate(c.env.REGISTER_RATE, DEFAULT_REGISTER_RATE)), 'too many new accounts from this address; try again later')
    const taken = await db.select({ id: users.id }).from(users).where(eq(users.handle, body.handle)).get()
    if (taken) fail(409, ErrorCode.HANDLE_TAKEN, 'that handle is taken')
    const user = { id: newId(), handle: body.handle, displayName: body.displayName, passwordHash: await hashPassword(body.password), pushPreviews: true, statusLine: '', avatarKey: null, presenceVisibility: 'everyone' as const, lastSeenAt: null, createdAt: Date.now(), isAdmin: false, suspendedAt: null, suspendedReason: null }
    try {
      await db.insert(users).values(user)
    } catch (err) {
      // Two registrations raced for the handle; the unique index decided.
      if (String((err as Error).message).includes('UNIQUE')) fail(409, ErrorCode.HANDLE_TAKEN, 'that handle is taken')
      throw err
    }
    const result = await startSession(c.env, db, user, deviceFrom(body.deviceName, c.req.header('user-agent')), placeOf(c.req.raw))
    return c.json({ ...result, deviceToken: await knownDevice(c.env, user.handle, undefined) }, 201)
  })
  .post('/login', validate('json', LoginBody), async (c) => {
    const body = c.req.valid('json')
    // Counted before the password is hashed: a refused guess costs no PBKDF2.
    const { success } = await c.env.LOGIN_IP_LIMIT.limit({ key: clientAddress(c) })
    if (!success) fail(429, ErrorCode.RATE_LIMITED, 'too many sign-in attempts from this address; wait a minute', 60)
    const deviceHash = body.deviceToken ? await sha256(body.deviceToken) : null
    const db = getDb(c.env)
    const user = await db.select().from(users).where(eq(users.handle, body.handle)).get()
    // An unknown handle is tried against a dummy hash, so it costs and counts the same.
    const ok = await tryPassword(c.env, body.handle, deviceHash, body.password, user?.passwordHash ?? DUMMY_HASH)
    if (!user || !ok) fail(401, ErrorCode.INVALID_CREDENTIALS, 'wrong handle or password')
    // Said only to whoever knows the password, so it reveals nothing about other people's accounts.
    if (user.suspendedAt !== null) fail(403, ErrorCode.SUSPENDED, `this account is suspended${user.suspendedReason ? `: ${user.suspendedReason}` : ''}`)
    const result = await startSession(c.env, db, user, deviceFrom(body.deviceName, c.req.header('user-agent')), placeOf(c.req.raw))
    return c.json({ ...result, deviceToken: await knownDevice(c.env, user.handle, body.deviceToken) })
  })
  .post('/refresh', validate('json', RefreshBody), async (c) => {
    const { refreshToken, retryKey } = c.req.valid('json')
    return c.json(await rotateRefreshToken(c.env, getDb(c.env), refreshToken, placeOf(c.req.raw), retryKey))
  })
  .post('/logout', requireAuth, async (c) => {
    const { userId, sessionId } = c.get('auth')
    await revokeSession(c.env, getDb(c.env), userId, sessionId)
    return c.body(null, 204)
  })
  .get('/sessions', requireAuth, async (c) => {
    const { userId, sessionId } = c.get('auth')
    const rows = await getDb(c.env)
      .select({ id: sessions.id, deviceName: sessions.deviceName, createdAt: sessions.createdAt, lastSeenAt: sessions.lastSeenAt, place: sessions.place })
      .from(sessions)
      .where(and(eq(sessions.userId, userId), isNull(sessions.revokedAt)))
      .orderBy(desc(sessions.lastSeenAt))
    return c.json({ sessions: rows.map((s): DeviceSession => ({ ...s, current: s.id === sessionId })) })
  })
  .delete('/sessions/:id', requireAuth, async (c) => {
    const { userId } = c.get('auth')
    const db = getDb(c.env)
    const s = await db.select({ id: sessions.id }).from(sessions)
      .where(and(eq(sessions.id, c.req.param('id')), eq(sessions.userId, userId))).get()
    if (!s) fail(404, ErrorCode.NOT_FOUND, 'no such session')
    await revokeSession(c.env, db, userId, s.id)
    return c.body(null, 204)
  })
  /** Signs out every other device; a stolen token alone cannot do it: the password is asked again. */
  .post('/sessions/revoke-others', requireAuth, validate('json', ReauthBody), async (c) => {
    const { userId, sessionId } = c.get('auth')
    const db = getDb(c.env)
    const user = await db.select().from(users).where(eq(users.id, userId)).get()
    if (!user) fail(404, ErrorCode.NOT_FOUND, 'user not found')
    if (!(await tryPassword(c.env, user.handle, null, c.req.valid('json').password, user.passwordHash))) fail(403, ErrorCode.INVALID_CREDENTIALS, 'wrong password')
    return c.json({ revoked: await revokeOtherSessions(c.env, db, userId, sessionId) })
  })
  /** A new password; every other device is signed out, as whoever knew the old one may hold them. */
  .post('/password', requireAuth, validate('json', ChangePasswordBody), async (c) => {
    const { userId, sessionId } = c.get('auth')
    const { currentPassword, newPassword } = c.req.valid('json')
    const db = getDb(c.env)
    const user = await db.select().from(users).where(eq(users.id, userId)).get()
    if (!user) fail(404, ErrorCode.NOT_FOUND, 'user not found')
    if (!(await tryPassword(c.env, user.handle, null, currentPassword, user.passwordHash))) fail(403, ErrorCode.INVALID_CREDENTIALS, 'wrong password')
    await db.update(users).set({ passwordHash: await hashPassword(newPassword) }).where(eq(users.id, userId))
    return c.json({ revoked: await revokeOtherSessions(c.env, db, userId, sessionId) })
  })

export const meRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  .get('/', async (c) => {
    const user = await getDb(c.env).select().from(users).where(eq(users.id, c.get('auth').userId)).get()
    if (!user) fail(404, ErrorCode.NOT_FOUND, 'user not found')
    return c.json({ user: publicUser(user), profile: profileOf(user), settings: { pushPreviews: user.pushPreviews, presenceVisibility: user.presenceVisibility }, isAdmin: user.isAdmin })
  })
  .patch('/settings', validate('json', SettingsBody), async (c) => {
    const { pushPreviews } = c.req.valid('json')
    await getDb(c.env).update(users).set({ pushPreviews }).where(eq(users.id, c.get('auth').userId))
    return c.json({ settings: { pushPreviews } })
  })
