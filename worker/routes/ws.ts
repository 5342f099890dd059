import { Hono } from 'hono'
import { sessionActive } from '../auth/session-check'
import { signWsTicket, verifyWsTicket, WS_TICKET_TTL_S } from '../auth/tokens'
import { getUserHub } from '../durable-objects'
import type { AppEnv } from '../env'
import { fail, originAllowed, requireAuth } from '../http'
import { ErrorCode } from '../shared/errors'
import { UPGRADE_HEADERS } from '../user/UserHub'


export const wsRoutes = new Hono<AppEnv>()
  .post('/ticket', requireAuth, async (c) => {
    const auth = c.get('auth')
    const { success } = await c.env.TICKET_LIMIT.limit({ key: auth.sessionId })
    if (!success) fail(429, ErrorCode.RATE_LIMITED, 'too many connection tickets for this device; wait a minute', 60)
    const { ticket } = await signWsTicket(c.env, auth)
    return c.json({ ticket, expiresIn: WS_TICKET_TTL_S })
  })
  .get('/', async (c) => {
    if (c.req.header('upgrade')?.toLowerCase() !== 'websocket') fail(426, ErrorCode.BAD_REQUEST, 'expected a WebSocket upgrade')
    if (!originAllowed(c.env, c.req.raw)) fail(403, ErrorCode.FORBIDDEN, 'origin not allowed')
    const ticket = c.req.query('ticket')
    const claims = ticket ? await verifyWsTicket(c.env, ticket) : null
    if (!claims) fail(401, ErrorCode.UNAUTHORIZED, 'missing, invalid or expired ticket')
    // A ticket issued just before its session was signed out must not open a socket after.
    if (!(await sessionActive(c.env, claims))) fail(401, ErrorCode.UNAUTHORIZED, 'the session was signed out')
    const headers = new Headers(c.req.raw.headers)
    headers.set(UPGRADE_HEADERS.userId, claims.userId)
    headers.set(UPGRADE_HEADERS.sessionId, claims.sessionId)
    headers.set(UPGRADE_HEADERS.jti, claims.jti)
    headers.set(UPGRADE_HEADERS.exp, String(claims.exp))
    return getUserHub(c.env, claims.userId).fetch(new Request(c.req.url, { headers }))
  })
