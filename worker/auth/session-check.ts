import type { AuthContext, Env } from '../env'

/**
 * Revoked sessions this isolate has seen. Revocation is permanent, so a hit needs no D1 read;
 * "active" is never cached, because another isolate may revoke the session at any moment.
 */
const revoked = new Set<string>()
const MAX_REMEMBERED = 10_000

export function rememberRevoked(sessionId: string) {
  if (revoked.size >= MAX_REMEMBERED) revoked.clear()
  revoked.add(sessionId)
}

/**
 * Whether the token's session still stands: one indexed D1 read per authenticated request (the
 * cost is in bench/results.md), so a signed-out device loses access at once, not when its
 * 15-minute access token expires.
 */
export async function sessionActive(env: Env, auth: AuthContext): Promise<boolean> {
  if (revoked.has(auth.sessionId)) return false
  // The account's suspension is read with the session: a sign-in that raced a suspension (its
  // session made after the suspension revoked the others) is refused all the same.
  const row = await env.DB.prepare('SELECT s.revoked_at, u.suspended_at FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ? AND s.user_id = ?')
    .bind(auth.sessionId, auth.userId)
    .first<{ revoked_at: number | null; suspended_at: number | null }>()
  if (row && row.revoked_at === null) return row.suspended_at === null
  if (row) rememberRevoked(auth.sessionId)
  return false
}
