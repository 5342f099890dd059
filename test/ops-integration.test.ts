import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { AuthResult } from '../worker/shared/protocol'
import { api, Device, json, openChat, register, textSend } from './helpers'
import { offlineRecipient, receivedPushes, waitFor } from './push-helpers'
import { Metrics } from '../worker/ops/metrics'
import { Counter } from '../worker/shared/metrics'
import { histogram, scrape, SCRAPE, value, type PromFamily } from './metrics-helpers'

async function makeAdmin(a: AuthResult) {
  await env.DB.prepare('UPDATE users SET is_admin = 1 WHERE id = ?').bind(a.user.id).run()
}

describe('metrics', () => {
  it('a known workload moves the counters and the send→ack histogram by exactly its size, in a Prometheus answer a real parser reads', { timeout: 30_000 }, async ({ expect }) => {
    const a = await register()
    const b = await register()
    const outsider = await register()
    const conv = await openChat(a, b)
    const before = await scrape()
    expect(before.find((f) => f.name === 'echovalley_send_ack_ms')?.type).toBe('HISTOGRAM')
    expect(before.find((f) => f.name === 'echovalley_messages_accepted_total')?.type).toBe('COUNTER')
    const acceptedBefore = value(before, 'messages_accepted_total')
    const histBefore = histogram(before)
    const refusedBefore = value(before, 'messages_refused_total', { code: 'NOT_MEMBER' })

    const da = await Device.connect(a)
    const db = await Device.connect(b)
    const N = 25
    for (let i = 0; i < N; i++) await da.sendAndAck(textSend(conv.id, `counted ${i}`))
    // A retry of an acked message is the same message: it must not count twice.
    const retry = textSend(conv.id, 'counted once')
    await da.sendAndAck(retry)
    await da.sendAndAck(retry)
    // One refusal: someone who is not in the conversation.
    const dx = await Device.connect(outsider)
    dx.send(textSend(conv.id, 'let me in'))
    expect((await dx.next('error')).code).toBe('NOT_MEMBER')

    await expect
      .poll(async () => value(await scrape(), 'messages_accepted_total') - acceptedBefore, { timeout: 10_000, interval: 200 })
      .toBe(N + 1)
    // Settled: a second look a while later finds exactly the same numbers.
    await new Promise((r) => setTimeout(r, 800))
    const after = await scrape()
    expect(value(after, 'messages_accepted_total') - acceptedBefore).toBe(N + 1)
    expect(value(after, 'messages_refused_total', { code: 'NOT_MEMBER' }) - refusedBefore).toBe(1)
    const hist = histogram(after)
    // Every write was timed once: N and the one message; its retry was answered from the log, not timed.
    expect(hist.count - histBefore.count).toBe(N + 1)
    expect(hist.buckets['+Inf']! - (histBefore.buckets['+Inf'] ?? 0)).toBe(N + 1)
    // Buckets are cumulative.
    const bounds = Object.keys(hist.buckets)
    for (let i = 1; i < bounds.length; i++) expect(hist.buckets[bounds[i]!]!).toBeGreaterThanOrEqual(hist.buckets[bounds[i - 1]!]!)
    // b's device got every message once; the deliveries counter counts frames to devices.
    expect(value(after, 'deliveries_total')).toBeGreaterThanOrEqual(N + 1)
    // Three devices are online.
    expect(value(after, 'sockets_open')).toBe(3)
    expect(value(after, 'devices_online')).toBe(3)
    da.close()
    db.close()
    dx.close()
    await expect.poll(async () => value(await scrape(), 'sockets_open'), { timeout: 5_000, interval: 200 }).toBe(0)
  })

  it('the metrics answer only the scrape token or an admin; the series feed the monitoring view', { timeout: 20_000 }, async ({ expect }) => {
    const plain = await register()
    const admin = await register()
    await makeAdmin(admin)
    expect((await api('/api/admin/metrics')).status).toBe(401)
    expect((await api('/api/admin/metrics', { token: 'wrong-token' })).status).toBe(401)
    expect((await api('/api/admin/metrics', { token: plain.accessToken })).status).toBe(403)
    const ok = await api('/api/admin/metrics', { token: admin.accessToken })
    expect(ok.status).toBe(200)
    expect(ok.headers.get('content-type')).toContain('text/plain; version=0.0.4')
    // The scrape token opens the metrics and nothing else.
    expect((await api('/api/admin/reports', { token: SCRAPE })).status).toBe(401)

    const b = await register()
    const conv = await openChat(admin, b)
    const charted = async () => {
      const s = await json(await api('/api/admin/metrics/series?range=hour', { token: admin.accessToken }))
      return Math.round((s.messagesPerSecond as number[]).reduce((x, y) => x + y, 0) * 60)
    }
    const before = await charted()
    const d = await Device.connect(admin)
    for (let i = 0; i < 5; i++) await d.sendAndAck(textSend(conv.id, `chart ${i}`))
    await expect.poll(async () => (await charted()) - before, { timeout: 10_000, interval: 200 }).toBe(5)
    const series = await json(await api('/api/admin/metrics/series?range=day', { token: admin.accessToken }))
    expect(series.minutes).toHaveLength(24 * 60)
    expect(series.ackP50.some((v: number | null) => v !== null)).toBe(true)
    // The hub hands its socket count over on its own quiet wake-up, not with the room's counts.
    await expect
      .poll(async () => (await json(await api('/api/admin/metrics/series?range=hour', { token: admin.accessToken }))).now.socketsOpen, { timeout: 5_000, interval: 200 })
      .toBeGreaterThanOrEqual(1)
    expect((await api('/api/admin/metrics/series?range=week', { token: admin.accessToken })).status).toBe(400)
    d.close()
  })
})

describe('hand-over', () => {
  it('an object that hands over from its own wake-ups: counts wait for a wake-up after quiet, then arrive once', async ({ expect }) => {
    // Production's gap: the 'owner' mode uses no timer at all.
    const m = new Metrics({ ...env, METRICS_MIN_GAP_MS: '60000' }, `test:${crypto.randomUUID()}`, { quietMs: 'owner' })
    const where = `unit-${crypto.randomUUID().slice(0, 8)}`
    const seen = async () => value(await scrape(), 'rate_limited_total', { where })
    for (let i = 0; i < 3; i++) m.count(Counter.rateLimited, where)
    await new Promise((r) => setTimeout(r, 400))
    expect(await seen()).toBe(0)
    // A wake-up while counts are fresh keeps them (and asks to be woken again).
    expect(await m.flushIfQuiet(10_000)).toBe(true)
    expect(await seen()).toBe(0)
    expect(await m.flushIfQuiet(0)).toBe(false)
    expect(await seen()).toBe(3)
    expect(await m.flushIfQuiet(0)).toBe(false)
    expect(await seen()).toBe(3)
  })
})

describe('push metrics', () => {
  it('a push to an offline member counts as sent; one the push service refuses counts as failed', { timeout: 30_000 }, async ({ expect }) => {
    const before = await scrape()
    const sent0 = value(before, 'pushes_total', { outcome: 'sent' })
    const failed0 = value(before, 'pushes_total', { outcome: 'failed' })
    for (const mode of ['ok', 'fail'] as const) {
      const { conv, sub, a } = await offlineRecipient(mode)
      await a.sendAndAck(textSend(conv.id, `are you there? (${mode})`))
      if (mode === 'ok') await waitFor(async () => (await receivedPushes(sub)).received.length > 0)
      a.close()
    }
    await expect.poll(async () => value(await scrape(), 'pushes_total', { outcome: 'sent' }) - sent0, { timeout: 10_000, interval: 200 }).toBe(1)
    // The refused one is retried by the queue: each try counts as a failure.
    await expect.poll(async () => value(await scrape(), 'pushes_total', { outcome: 'failed' }) - failed0, { timeout: 10_000, interval: 200 }).toBeGreaterThanOrEqual(1)
  })
})

describe('health', () => {
  it('D1, R2, a Durable Object and the queue answer, with timings; every answer carries a request id', async ({ expect }) => {
    const res = await api('/api/health')
    expect(res.status).toBe(200)
    const body = await json(res)
    expect(body.ok).toBe(true)
    for (const part of ['d1', 'r2', 'durableObject', 'queue']) {
      expect(body.checks[part].ok).toBe(true)
      expect(typeof body.checks[part].ms).toBe('number')
    }
    expect(res.headers.get('cache-control')).toBe('no-store')
    expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/)
    // Cloudflare's Ray ID becomes the request id, so logs and the edge agree.
    const rayed = await api('/api/health/live', { headers: { 'cf-ray': '8f00aa11bb22cc33-LIS' } })
    expect(rayed.headers.get('x-request-id')).toBe('8f00aa11bb22cc33-LIS')
  })
})
