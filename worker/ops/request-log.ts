import { createMiddleware } from 'hono/factory'
import { routePath } from 'hono/route'
import type { AppEnv } from '../env'
import { Counter } from '../shared/metrics'
import { log } from './log'
import { countInWorker } from './metrics'

/**
 * Gives each request an id (Cloudflare's Ray ID when there is one), answers it in `x-request-id`,
 * and logs the request when it ends; 5xx answers and refusals for rate are counted by route.
 */
export const requestLog = createMiddleware<AppEnv>(async (c, next) => {
  const requestId = c.req.header('cf-ray') ?? crypto.randomUUID()
  c.set('requestId', requestId)
  const started = Date.now()
  await next()
  const status = c.res.status
  // The route as registered ("/api/conversations/:id/messages"), so ids do not split the series.
  const route = routePath(c, -1)
  if (status !== 101) {
    // A response passed on from a Durable Object has immutable headers: copy it to add one.
    try {
      c.res.headers.set('x-request-id', requestId)
    } catch {
      c.res = new Response(c.res.body, c.res)
      c.res.headers.set('x-request-id', requestId)
    }
  }
  log(c.env, status >= 500 ? 'error' : 'info', 'request', {
    requestId,
    method: c.req.method,
    route,
    status,
    ms: Date.now() - started,
    userId: c.get('auth')?.userId,
  })
  if (status >= 500) countInWorker(c.env, c.executionCtx, Counter.http5xx, `${c.req.method} ${route}`)
  if (status === 429) countInWorker(c.env, c.executionCtx, Counter.rateLimited, 'http')
})
