import { Hono } from 'hono'
import type { AppEnv } from '../env'
import { getMetricsShard } from '../durable-objects'

const CHECK_TIMEOUT_MS = 3_000

interface Check {
  ok: boolean
  ms: number
  error?: string
}

async function timed(run: () => Promise<unknown>): Promise<Check> {
  const started = Date.now()
  let timer: ReturnType<typeof setTimeout> | null = null
  try {
    await Promise.race([run(), new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS)))])
    return { ok: true, ms: Date.now() - started }
  } catch (e) {
    return { ok: false, ms: Date.now() - started, error: e instanceof Error ? e.message : String(e) }
  } finally {
    if (timer) clearTimeout(timer)
  }
}

/** Anyone may ask: the isolate answers from its last look for this long, so asking costs nothing. */
const HEALTH_CACHE_MS = 10_000
let lastLook: { at: number; ok: boolean; checks: Record<string, Check> } | null = null

export const healthRoutes = new Hono<AppEnv>()
  /** Every part the service needs answers (with timings); 503 when one does not. For monitors, not for every poll. */
  .get('/', async (c) => {
    if (!lastLook || Date.now() - lastLook.at >= HEALTH_CACHE_MS) {
      const [d1, r2, durableObject, queue] = await Promise.all([
        timed(() => c.env.DB.prepare('SELECT 1').first()),
        timed(() => c.env.MEDIA.head('health/probe')),
        timed(() => getMetricsShard(c.env, 0).ping()),
        timed(() => c.env.PUSH_QUEUE.send({ type: 'ping' })),
      ])
      const checks = { d1: d1!, r2: r2!, durableObject: durableObject!, queue: queue! }
      lastLook = { at: Date.now(), ok: Object.values(checks).every((k) => k.ok), checks }
    }
    c.header('cache-control', 'no-store')
    return c.json({ ok: lastLook.ok, checks: lastLook.checks, checkedAt: lastLook.at }, lastLook.ok ? 200 : 503)
  })
  /** The Worker runs: what readiness polls and load balancers ask. */
  .get('/live', (c) => c.json({ ok: true }))
