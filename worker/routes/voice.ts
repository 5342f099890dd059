import { Hono } from 'hono'
import { sessionActive } from '../auth/session-check'
import { verifyWsTicket } from '../auth/tokens'
import { getVoiceRoom } from '../durable-objects'
import type { AppEnv, Env } from '../env'
import { fail, originAllowed, requireAuth } from '../http'
import { Id } from '../shared/protocol'
import { ErrorCode } from '../shared/errors'
import { liveAccess } from '../social/policy'
import { getDb } from '../db/client'
import { VOICE_UPGRADE_HEADERS } from '../voice/VoiceRoom'

const mayJoin = async (env: Env, conversationId: string, userId: string) => (await liveAccess(getDb(env), conversationId, userId)).ok

function conversationIdOf(raw: string): string {
  const id = Id.safeParse(raw)
  if (!id.success) fail(404, ErrorCode.NOT_FOUND, 'no such conversation')
  return id.data
}

export const voiceRoutes = new Hono<AppEnv>()
  /** The live card: is a room on, who speaks, how many listen. */
  .get('/:conversationId', requireAuth, async (c) => {
    const id = conversationIdOf(c.req.param('conversationId'))
    if (!(await mayJoin(c.env, id, c.get('auth').userId))) fail(404, ErrorCode.NOT_FOUND, 'no such conversation')
    return c.json({ summary: await getVoiceRoom(c.env, id).summary(id) })
  })
  /** Joins (or starts) the room: a WebSocket with a single-use ticket, as the chat socket. */
  .get('/:conversationId/ws', async (c) => {
    if (c.req.header('upgrade')?.toLowerCase() !== 'websocket') fail(426, ErrorCode.BAD_REQUEST, 'expected a WebSocket upgrade')
    if (!originAllowed(c.env, c.req.raw)) fail(403, ErrorCode.FORBIDDEN, 'origin not allowed')
    const id = conversationIdOf(c.req.param('conversationId'))
    const ticket = c.req.query('ticket')
    const claims = ticket ? await verifyWsTicket(c.env, ticket) : null
    if (!claims) fail(401, ErrorCode.UNAUTHORIZED, 'missing, invalid or expired ticket')
    if (!(await sessionActive(c.env, claims))) fail(401, ErrorCode.UNAUTHORIZED, 'the session was signed out')
    if (!(await mayJoin(c.env, id, claims.userId))) fail(404, ErrorCode.NOT_FOUND, 'no such conversation')
    const headers = new Headers(c.req.raw.headers)
    headers.set(VOICE_UPGRADE_HEADERS.userId, claims.userId)
    headers.set(VOICE_UPGRADE_HEADERS.sessionId, claims.sessionId)
    headers.set(VOICE_UPGRADE_HEADERS.conversationId, id)
    headers.set(VOICE_UPGRADE_HEADERS.jti, claims.jti)
    headers.set(VOICE_UPGRADE_HEADERS.exp, String(claims.exp))
    return getVoiceRoom(c.env, id).fetch(new Request(c.req.url, { headers }))
  })
