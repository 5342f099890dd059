import { and, eq, isNull } from 'drizzle-orm'
import type { Db } from '../db/client'
import { refreshTokens, sessions, users, type User } from '../db/schema'
import type { Env } from '../env'
import { fail } from '../http'
import { newId, sha256 } from '../ids'
import { ErrorCode } from '../shared/errors'
import { getUserHub } from '../durable-objects'
import { rememberRevoked } from './session-check'
import type { AuthResult, PublicUser } from '../shared/protocol'
import { ACCESS_TOKEN_TTL_S, REFRESH_TOKEN_TTL_MS, newRefreshToken, signAccessToken } from './tokens'

/** The last segment of the avatar's storage key: a new upload gets a new key, so a new URL. */
export const avatarVersion = (key: string | null): string | null => (key ? key.slice(key.lastIndexOf('/') + 1) : null)

export function publicUser(u: Pick<User, 'id' | 'handle' | 'displayName' | 'avatarKey'>): PublicUser {
  return { id: u.id, handle: u.handle, displayName: u.displayName, avatar: avatarVersion(u.avatarKey) }
}

async function issueTokens(env: Env, db: Db, user: User, sessionId: string): Promise<AuthResult> {
  const refreshToken = newRefreshToken()
  await db.insert(refreshTokens).values({
    tokenHash: await sha256(refreshToken),
    sessionId,
    expiresAt: Date.now() + REFRESH_TOKEN_TTL_MS,
  })
  return signedWith(env, user, sessionId, refreshToken)
}

async function signedWith(env: Env, user: User, sessionId: string, refreshToken: string): Promise<AuthResult> {
  const accessToken = await signAccessToken(env, { userId: user.id, sessionId })
  return { user: publicUser(user), sessionId, accessToken, expiresIn: ACCESS_TOKEN_TTL_S, refreshToken }
}

/** "City, CC" from Cloudflare's data about the request (absent locally). */
export function placeOf(request: Request): string | null {
  const cf = (request as { cf?: { city?: unknown; country?: unknown } }).cf
  const city = typeof cf?.city === 'string' ? cf.city : null
  const country = typeof cf?.country === 'string' ? cf.country : null
  return [city, country].filter(Boolean).join(', ').slice(0, 80) || null
}

export async function startSession(env: Env, db: Db, user: User, deviceName: string, place: string | null = null): Promise<AuthResult> {
  const sessionId = newId()
  await db.insert(sessions).values({ id: sessionId, userId: user.id, deviceName, place })
  return issueTokens(env, db, user, sessionId)
}

/**
 * Rotates a refresh token; presenting a used one revokes the whole session (it was stolen or
 * replayed), except as the retry of a rotation whose answer was lost (`retryOfLostAnswer`), or
 * when the token was spent after this request arrived (`spentWhileInFlight`).
 */
export async function rotateRefreshToken(env: Env, db: Db, presented: string, place: string | null = null, retryKey?: string, arrivedAt = Date.now()): Promise<AuthResult> {
  const tokenHash = await sha256(presented)
  const row = await db
    .select({ token: refreshTokens, session: sessions, user: users })
    .from(refreshTokens)
    .innerJoin(sessions, eq(sessions.id, refreshTokens.sessionId))
    .innerJoin(users, eq(users.id, sessions.userId))
    .where(eq(refreshTokens.tokenHash, tokenHash))
    .get()
  // A suspension revokes the sessions: a device that held a live refresh token learns why.
  const suspended = row?.user.suspendedAt != null && row.token.usedAt === null && row.token.expiresAt >= Date.now()
  if (suspended) fail(403, ErrorCode.SUSPENDED, `this account is suspended${row.user.suspendedReason ? `: ${row.user.suspendedReason}` : ''}`)
  if (!row || row.session.revokedAt !== null || row.token.expiresAt < Date.now()) {
    fail(401, ErrorCode.UNAUTHORIZED, 'refresh token is invalid or expired')
  }
  spentWhileInFlight(row.token.usedAt, arrivedAt)
  const token = newRefreshToken()
  const next = { token, hash: await sha256(token) }
  const keyHash = retryKey === undefined ? null : await sha256(retryKey)
  const now = Date.now()
  // The successor is written in the same transaction as the claim, and only when the claim took
  // (the spent token then points at it): a failure between the two cannot strand a device with a
  // spent token and no successor, which its retry would then find missing.
  const successor = env.DB.prepare(
    `INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM refresh_tokens WHERE token_hash = ?4 AND replaced_by = ?1)`,
  ).bind(next.hash, row.session.id, now + REFRESH_TOKEN_TTL_MS, tokenHash)
  const claim = row.token.usedAt === null
    ? [env.DB.prepare('UPDATE refresh_tokens SET used_at = ?, replaced_by = ?, retry_key = ? WHERE token_hash = ? AND used_at IS NULL').bind(now, next.hash, keyHash, tokenHash)]
    : retryOfLostAnswer(env, row.token, keyHash, next.hash, now)
  const claimed = claim.length > 0 && (await env.DB.batch([...claim, successor]))[0]!.meta.changes === 1
  if (!claimed) {
    const spent = await env.DB.prepare('SELECT used_at FROM refresh_tokens WHERE token_hash = ?').bind(tokenHash).first<{ used_at: number | null }>()
    spentWhileInFlight(spent?.used_at ?? null, arrivedAt)
    await revokeSession(env, db, row.user.id, row.session.id)
    fail(401, ErrorCode.TOKEN_REUSED, 'refresh token was already used; the session is revoked')
  }
  await db.update(sessions).set({ lastSeenAt: now, ...(place ? { place } : {}) }).where(eq(sessions.id, row.session.id))
  return signedWith(env, row.user, row.session.id, next.token)
}

/**
 * A request that arrived before its token was spent is not a replay: it raced a request of the
 * same device (a retry sent after a network error while the first try still ran, or a first try
 * the server got to only after the retry had been answered). Revoking, or retiring the token the
 * retry was given, signed that device out on its next refresh. It gets nothing and changes
 * nothing; the device keeps its token and key and retries. Strictly later only: a clock that has
 * not moved between the two cannot tell, and then the token counts as spent before.
 */
function spentWhileInFlight(usedAt: number | null, arrivedAt: number): void {
  if (usedAt !== null && usedAt > arrivedAt) fail(409, ErrorCode.REFRESH_IN_FLIGHT, 'this refresh token was used while this request was on its way; try again with the same retry key')
}

/** How long after its first use a spent token may be retried (see `retryOfLostAnswer`). */
export const REFRESH_RETRY_WINDOW_MS = 10 * 60_000

/**
 * A device whose refresh answer was lost (a dropped connection, an app put to sleep) still holds
 * the spent token; revoking the session then signed people out for a network blip. It sent a
 * random retry key with the first try and sends the same again, within REFRESH_RETRY_WINDOW_MS of
 * that first use, and nobody has used the token that answer carried: the retry gets new tokens,
 * and that unused successor is retired, so a thief who raced the owner is still found out when
 * the owner's copy comes back. The window bounds how long a token and key seen together (a log, a
 * proxy) stay worth anything. The statements change nothing unless all of it still holds when
 * they run (two retries at once: one wins, the other is a replay). Empty: a replay.
 */
function retryOfLostAnswer(env: Env, spent: typeof refreshTokens.$inferSelect, keyHash: string | null, nextHash: string, now: number): D1PreparedStatement[] {
  const successor = spent.replacedBy
  if (keyHash === null || spent.retryKey !== keyHash || successor === null || spent.usedAt === null || now - spent.usedAt > REFRESH_RETRY_WINDOW_MS) return []
  return [
    env.DB.prepare(
      `UPDATE refresh_tokens SET replaced_by = ?1 WHERE token_hash = ?2 AND replaced_by = ?3
       AND EXISTS (SELECT 1 FROM refresh_tokens s WHERE s.token_hash = ?3 AND s.used_at IS NULL)`,
    ).bind(nextHash, spent.tokenHash, successor),
    env.DB.prepare('UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL').bind(now, successor),
  ]
}

/** Signs a session out everywhere: its tokens stop at the next request and its sockets close now. */
export async function revokeSession(env: Env, db: Db, userId: string, sessionId: string): Promise<void> {
  await db.update(sessions).set({ revokedAt: Date.now() }).where(and(eq(sessions.id, sessionId), isNull(sessions.revokedAt)))
  rememberRevoked(sessionId)
  await getUserHub(env, userId).closeSession(sessionId)
}

/** Signs out every session of the user but the one asking; returns how many. */
export async function revokeOtherSessions(env: Env, db: Db, userId: string, keep: string): Promise<number> {
  const others = (await db.select({ id: sessions.id }).from(sessions).where(and(eq(sessions.userId, userId), isNull(sessions.revokedAt)))).filter((s) => s.id !== keep)
  for (const s of others) await revokeSession(env, db, userId, s.id)
  return others.length
}

/** Signs a person out everywhere at once (a suspension): every session revoked, every socket closed. */
export async function revokeAllSessions(env: Env, db: Db, userId: string, reason: ErrorCode): Promise<number> {
  const open = await db.update(sessions).set({ revokedAt: Date.now() }).where(and(eq(sessions.userId, userId), isNull(sessions.revokedAt))).returning({ id: sessions.id })
  for (const s of open) rememberRevoked(s.id)
  await getUserHub(env, userId).closeAll(reason)
  return open.length
}
