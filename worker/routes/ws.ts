import { Hono } from 'hono'
import { sessionActive } from '../auth/session-check'
import { signWsTicket, verifyWsTicket, WS_TICKET_TTL_S } from '../auth/tokens'
import { getConversationRoom, getUserHub } from '../durable-objects'
import type { AppEnv, Env } from '../env'
import { fail, originAllowed, requireAuth } from '../http'
import { ErrorCode } from '../shared/errors'
import { Id } from '../shared/protocol'
import { upgradeHeaders } from '../ws/upgrade'

export const wsRoutes = new Hono<AppEnv>()
  .post('/ticket', requireAuth, async (c) => {
    const auth = c.get('auth')
    const { success } = await c.env.TICKET_LIMIT.limit({ key: auth.sessionId })
    if (!success) fail(429, ErrorCode.RATE_LIMITED, 'too many connection tickets for this device; wait a minute', 60)
    const { ticket } = await signWsTicket(c.env, auth)
    return c.json({ ticket, expiresIn: WS_TICKET_TTL_S })
  })
  /** The device's chat socket, held by its UserHub. */
  .get('/', async (c) => {
    const claims = await upgradeTicket(c.env, c.req.raw, c.req.query('ticket'))
    return getUserHub(c.env, claims.userId).fetch(new Request(c.req.url, { headers: upgradeHeaders(c.req.raw.headers, claims) }))
  })
  /** A writer socket: an open chat's writes straight to its conversation's room (members only; the room checks). */
  .get('/conversations/:conversationId', async (c) => {
    const id = Id.safeParse(c.req.param('conversationId'))
    if (!id.success) fail(404, ErrorCode.NOT_FOUND, 'no such conversation')
    const claims = await upgradeTicket(c.env, c.req.raw, c.req.query('ticket'))
    return getConversationRoom(c.env, id.data).fetch(new Request(c.req.url, { headers: upgradeHeaders(c.req.raw.headers, claims, id.data) }))
  })

/** A socket upgrade's checks: a WebSocket, an allowed origin, a valid single-use ticket of a live session. */
async function upgradeTicket(env: Env, request: Request, ticket: string | undefined) {
  if (request.headers.get('upgrade')?.toLowerCase() !== 'websocket') fail(426, ErrorCode.BAD_REQUEST, 'expected a WebSocket upgrade')
  if (!originAllowed(env, request)) fail(403, ErrorCode.FORBIDDEN, 'origin not allowed')
  const claims = ticket ? await verifyWsTicket(env, ticket) : null
  if (!claims) fail(401, ErrorCode.UNAUTHORIZED, 'missing, invalid or expired ticket')
  // A ticket issued just before its session was signed out must not open a socket after.
  if (!(await sessionActive(env, claims))) fail(401, ErrorCode.UNAUTHORIZED, 'the session was signed out')
  return claims
}
