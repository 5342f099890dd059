import { Hono } from 'hono'
import { getUserHub } from '../durable-objects'
import type { AppEnv } from '../env'
import { requireAuth, validate } from '../http'
import { PushSubscriptionBody, UnsubscribeBody } from '../shared/protocol'

export const pushRoutes = new Hono<AppEnv>()
  .get('/vapid-key', (c) => c.json({ publicKey: c.env.VAPID_PUBLIC_KEY }))
  .use(requireAuth)
  .post('/subscriptions', validate('json', PushSubscriptionBody), async (c) => {
    const { userId, sessionId } = c.get('auth')
    const { endpoint, keys } = c.req.valid('json')
    // An endpoint belongs to one browser; re-subscribing moves it to whoever is signed in there now.
    await c.env.DB.prepare(
      `INSERT INTO push_subscriptions (endpoint, user_id, session_id, p256dh, auth) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (endpoint) DO UPDATE SET user_id = excluded.user_id, session_id = excluded.session_id, p256dh = excluded.p256dh, auth = excluded.auth`,
    )
      .bind(endpoint, userId, sessionId, keys.p256dh, keys.auth)
      .run()
    // The hub queues pushes only for people with an endpoint: it must know before this answers.
    await getUserHub(c.env, userId).pushChanged(true)
    return c.json({ ok: true }, 201)
  })
  .delete('/subscriptions', validate('json', UnsubscribeBody), async (c) => {
    const { endpoint } = c.req.valid('json')
    await c.env.DB.prepare('DELETE FROM push_subscriptions WHERE endpoint = ? AND user_id = ?').bind(endpoint, c.get('auth').userId).run()
    return c.body(null, 204)
  })
