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
  const row = await env.DB.prepare('SELECT revoked_at FROM sessions WHERE id = ? AND user_id = ?').bind(auth.sessionId, auth.userId).first<{ revoked_at: number | null }>()
  if (row && row.revoked_at === null) return true
  if (row) rememberRevoked(auth.sessionId)
  return false
}
