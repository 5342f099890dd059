import { Hono } from 'hono'
import { iceServersFor } from '../calls/ice-servers'
import type { AppEnv } from '../env'
import { fail, requireAuth } from '../http'
import { ErrorCode } from '../shared/errors'

export const callRoutes = new Hono<AppEnv>()
  /** ICE servers for this user's next call: TURN credentials minted now, valid for an hour. */
  .get('/ice-servers', requireAuth, async (c) => {
    try {
      return c.json({ iceServers: await iceServersFor(c.env, c.get('auth').userId) }, 200, { 'Cache-Control': 'no-store' })
    } catch (e) {
      console.error('ICE servers', String(e))
      fail(503, ErrorCode.UNAVAILABLE, 'the relay for calls is not reachable; try again')
    }
  })
