/** Headers the Worker sets on a socket upgrade after verifying its ticket; never taken from the client. */
export const UPGRADE_HEADERS = {
  userId: 'x-ev-user-id',
  sessionId: 'x-ev-session-id',
  jti: 'x-ev-ticket-jti',
  exp: 'x-ev-ticket-exp',
  /** Writer sockets only: the conversation the route resolved. */
  conversationId: 'x-ev-conversation-id',
} as const

export interface TicketClaims {
  userId: string
  sessionId: string
  jti: string
  exp: number
}

/** The verified ticket an upgrade carries, or null when a header is missing. */
export function upgradeClaims(request: Request): TicketClaims | null {
  const h = request.headers
  const userId = h.get(UPGRADE_HEADERS.userId)
  const sessionId = h.get(UPGRADE_HEADERS.sessionId)
  const jti = h.get(UPGRADE_HEADERS.jti)
  const exp = Number(h.get(UPGRADE_HEADERS.exp))
  return userId && sessionId && jti && Number.isFinite(exp) ? { userId, sessionId, jti, exp } : null
}

/** Headers that carry verified claims to the object that accepts the socket. */
export function upgradeHeaders(raw: Headers, claims: TicketClaims, conversationId?: string): Headers {
  const headers = new Headers(raw)
  headers.set(UPGRADE_HEADERS.userId, claims.userId)
  headers.set(UPGRADE_HEADERS.sessionId, claims.sessionId)
  headers.set(UPGRADE_HEADERS.jti, claims.jti)
  headers.set(UPGRADE_HEADERS.exp, String(claims.exp))
  if (conversationId) headers.set(UPGRADE_HEADERS.conversationId, conversationId)
  return headers
}

/**
 * Spends a ticket in this object's storage (table `used_tickets`): false when it was spent before,
 * so a replayed ticket opens nothing.
 */
export function spendTicket(sql: SqlStorage, jti: string, exp: number): boolean {
  sql.exec('DELETE FROM used_tickets WHERE exp < ?', Math.floor(Date.now() / 1000))
  if (sql.exec('SELECT 1 FROM used_tickets WHERE jti = ?', jti).toArray().length > 0) return false
  sql.exec('INSERT INTO used_tickets (jti, exp) VALUES (?, ?)', jti, exp)
  return true
}
