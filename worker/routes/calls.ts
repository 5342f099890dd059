import { Hono } from 'hono'
import { iceServersFor } from '../calls/ice-servers'
import { getCallRoom } from '../durable-objects'
import type { AppEnv } from '../env'
import { fail, requireAuth } from '../http'
import { ErrorCode } from '../shared/errors'

export const callRoutes = new Hono<AppEnv>()
  /** A call as this user sees it: a device opened from an "incoming call" notification picks up the ringing here. */
  .get('/:callId{[0-9a-f-]{36}}', requireAuth, async (c) => {
    const info = await getCallRoom(c.env, c.req.param('callId')).infoFor(c.get('auth').userId)
    if (!info) fail(404, ErrorCode.NOT_FOUND, 'no such call')
    return c.json({ call: info })
  })
  /** ICE servers for this user's next call: TURN credentials minted now, valid for an hour. */
  .get('/ice-servers', requireAuth, async (c) => {
    try {
      return c.json({ iceServers: await iceServersFor(c.env, c.get('auth').userId) }, 200, { 'Cache-Control': 'no-store' })
    } catch (e) {
      console.error('ICE servers', String(e))
      fail(503, ErrorCode.UNAVAILABLE, 'the relay for calls is not reachable; try again')
    }
  })
