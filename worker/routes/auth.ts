import { and, desc, eq, isNull } from 'drizzle-orm'
import { Hono } from 'hono'
import { DUMMY_HASH, hashPassword, verifyPassword } from '../auth/password'
import { publicUser, revokeSession, rotateRefreshToken, startSession } from '../auth/sessions'
import { getDb } from '../db/client'
import { sessions, users } from '../db/schema'
import type { AppEnv } from '../env'
import { fail, requireAuth, validate } from '../http'
import { newId } from '../ids'
import { ErrorCode } from '../shared/errors'
import { profileOf } from '../social/policy'
import { LoginBody, ReauthBody, RefreshBody, RegisterBody, SettingsBody } from '../shared/protocol'

function deviceFrom(name: string | undefined, userAgent: string | undefined): string {
  return name ?? (userAgent ? userAgent.slice(0, 64) : 'Unknown device')
}

export const authRoutes = new Hono<AppEnv>()
  .post('/register', validate('json', RegisterBody), async (c) => {
    const body = c.req.valid('json')
    const db = getDb(c.env)
    const taken = await db.select({ id: users.id }).from(users).where(eq(users.handle, body.handle)).get()
    if (taken) fail(409, ErrorCode.HANDLE_TAKEN, 'that handle is taken')
    const user = { id: newId(), handle: body.handle, displayName: body.displayName, passwordHash: await hashPassword(body.password), pushPreviews: true, statusLine: '', avatarKey: null, presenceVisibility: 'everyone' as const, lastSeenAt: null, createdAt: Date.now() }
    try {
      await db.insert(users).values(user)
    } catch (err) {
      // Two registrations raced for the handle; the unique index decided.
      if (String((err as Error).message).includes('UNIQUE')) fail(409, ErrorCode.HANDLE_TAKEN, 'that handle is taken')
      throw err
    }
    const result = await startSession(c.env, db, user, deviceFrom(body.deviceName, c.req.header('user-agent')))
    return c.json(result, 201)
  })
  .post('/login', validate('json', LoginBody), async (c) => {
    const body = c.req.valid('json')
    const db = getDb(c.env)
    const user = await db.select().from(users).where(eq(users.handle, body.handle)).get()
    const ok = await verifyPassword(body.password, user?.passwordHash ?? DUMMY_HASH)
    if (!user || !ok) fail(401, ErrorCode.INVALID_CREDENTIALS, 'wrong handle or password')
    return c.json(await startSession(c.env, db, user, deviceFrom(body.deviceName, c.req.header('user-agent'))))
  })
  .post('/refresh', validate('json', RefreshBody), async (c) => {
    const { refreshToken } = c.req.valid('json')
    return c.json(await rotateRefreshToken(c.env, getDb(c.env), refreshToken))
  })
  .post('/logout', requireAuth, async (c) => {
    const { userId, sessionId } = c.get('auth')
    await revokeSession(c.env, getDb(c.env), userId, sessionId)
    return c.body(null, 204)
  })
  .get('/sessions', requireAuth, async (c) => {
    const { userId, sessionId } = c.get('auth')
    const rows = await getDb(c.env)
      .select({ id: sessions.id, deviceName: sessions.deviceName, createdAt: sessions.createdAt, lastSeenAt: sessions.lastSeenAt })
      .from(sessions)
      .where(and(eq(sessions.userId, userId), isNull(sessions.revokedAt)))
      .orderBy(desc(sessions.lastSeenAt))
    return c.json({ sessions: rows.map((s) => ({ ...s, current: s.id === sessionId })) })
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
    if (!user || !(await verifyPassword(c.req.valid('json').password, user.passwordHash))) fail(403, ErrorCode.INVALID_CREDENTIALS, 'wrong password')
    const others = await db.select({ id: sessions.id }).from(sessions).where(and(eq(sessions.userId, userId), isNull(sessions.revokedAt)))
    for (const s of others) if (s.id !== sessionId) await revokeSession(c.env, db, userId, s.id)
    return c.json({ revoked: others.filter((s) => s.id !== sessionId).length })
  })

export const meRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  .get('/', async (c) => {
    const user = await getDb(c.env).select().from(users).where(eq(users.id, c.get('auth').userId)).get()
    if (!user) fail(404, ErrorCode.NOT_FOUND, 'user not found')
    return c.json({ user: publicUser(user), profile: profileOf(user), settings: { pushPreviews: user.pushPreviews, presenceVisibility: user.presenceVisibility } })
  })
  .patch('/settings', validate('json', SettingsBody), async (c) => {
    const { pushPreviews } = c.req.valid('json')
    await getDb(c.env).update(users).set({ pushPreviews }).where(eq(users.id, c.get('auth').userId))
    return c.json({ settings: { pushPreviews } })
  })
