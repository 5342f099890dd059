import { and, desc, eq, inArray, isNotNull } from 'drizzle-orm'
import { Hono } from 'hono'
import { createMiddleware } from 'hono/factory'
import { revokeAllSessions } from '../auth/sessions'
import { getDb, type Db } from '../db/client'
import { auditLog, reports, users } from '../db/schema'
import { getConversationRoom } from '../durable-objects'
import type { AppEnv } from '../env'
import { fail, requireAuth, validate } from '../http'
import { readShards, renderPrometheus, toSeries } from '../ops/read-metrics'
import { ErrorCode } from '../shared/errors'
import { ReportsQuery, SeriesQuery, SuspendBody, type AuditEntry, type ModerationReport, type ReportedUser } from '../shared/moderation'
import type { MessageBody } from '../shared/protocol'

/** Operators only: a signed-in user whose account has is_admin (granted from the command line). */
// A suspended account never gets this far: its sessions fail requireAuth's check.
export const requireAdmin = createMiddleware<AppEnv>((c, next) =>
  requireAuth(c, async () => {
    const row = await c.env.DB.prepare('SELECT is_admin FROM users WHERE id = ?').bind(c.get('auth').userId).first<{ is_admin: number }>()
    if (!row?.is_admin) fail(403, ErrorCode.FORBIDDEN, 'only administrators can do that')
    await next()
  }),
)

/** Constant-time comparison of the scrape token (the runtime's own). */
function sameToken(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a)
  const y = new TextEncoder().encode(b)
  return x.byteLength === y.byteLength && crypto.subtle.timingSafeEqual(x, y)
}

/** Prometheus presents the scrape token (METRICS_SCRAPE_TOKEN); people use their admin sign-in. */
const scrapeOrAdmin = createMiddleware<AppEnv>(async (c, next) => {
  const presented = c.req.header('authorization')?.match(/^Bearer (.+)$/)?.[1]
  if (c.env.METRICS_SCRAPE_TOKEN && presented && sameToken(presented, c.env.METRICS_SCRAPE_TOKEN)) return next()
  return requireAdmin(c, next)
})

async function audit(db: Db, actor: string, action: AuditEntry['action'], target: string | null, detail = '', reportId: string | null = null) {
  await db.insert(auditLog).values({ actor, action, targetUserId: target, detail, reportId, at: Date.now() })
}

async function peopleById(db: Db, ids: string[]): Promise<Map<string, ReportedUser>> {
  const unique = [...new Set(ids)]
  if (unique.length === 0) return new Map()
  // D1 takes at most 100 bound parameters a query.
  const chunks = Array.from({ length: Math.ceil(unique.length / 90) }, (_, i) => unique.slice(i * 90, i * 90 + 90))
  const rows = (await Promise.all(chunks.map((ids) => db.select({ id: users.id, handle: users.handle, displayName: users.displayName, suspendedAt: users.suspendedAt }).from(users).where(inArray(users.id, ids))))).flat()
  return new Map(rows.map((u) => [u.id, { id: u.id, handle: u.handle, displayName: u.displayName, suspended: u.suspendedAt !== null }]))
}

const unknownUser = (id: string): ReportedUser => ({ id, handle: '?', displayName: '?', suspended: false })

async function closeReport(db: Db, id: string, status: 'dismissed' | 'actioned', by: string) {
  // The copy of the reported message goes with the case.
  await db.update(reports).set({ status, closedAt: Date.now(), closedBy: by, messageCopy: null }).where(and(eq(reports.id, id), eq(reports.status, 'open')))
}

async function openReport(db: Db, id: string) {
  const report = await db.select().from(reports).where(eq(reports.id, id)).get()
  if (!report) fail(404, ErrorCode.NOT_FOUND, 'no such report')
  if (report.status !== 'open') fail(409, ErrorCode.CONFLICT, 'the report is already closed')
  return report
}

async function suspend(c: { env: AppEnv['Bindings'] }, db: Db, adminId: string, userId: string, reason: string, reportId: string | null) {
  const target = await db.select({ id: users.id, isAdmin: users.isAdmin }).from(users).where(eq(users.id, userId)).get()
  if (!target) fail(404, ErrorCode.NOT_FOUND, 'no such user')
  if (userId === adminId) fail(400, ErrorCode.BAD_REQUEST, 'you cannot suspend yourself')
  // First the mark (sign-in and refresh check it), then the sessions and sockets.
  await db.update(users).set({ suspendedAt: Date.now(), suspendedReason: reason }).where(eq(users.id, userId))
  // Logged first: the suspension stands (sign-in refuses it) even if closing the sockets fails.
  await audit(db, adminId, 'suspend', userId, reason, reportId)
  return revokeAllSessions(c.env, db, userId, ErrorCode.SUSPENDED)
}

export const adminRoutes = new Hono<AppEnv>()
  .get('/metrics', scrapeOrAdmin, async (c) => {
    const text = renderPrometheus(await readShards(c.env, Math.floor(Date.now() / 60_000)))
    return c.body(text, 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'cache-control': 'no-store' })
  })
  .use(requireAdmin)
  .get('/metrics/series', validate('query', SeriesQuery), async (c) => {
    const { range } = c.req.valid('query')
    const to = Math.floor(Date.now() / 60_000)
    const from = to - (range === 'hour' ? 59 : 24 * 60 - 1)
    // An hour before the range, so gauges that last changed before it start at their value.
    const readings = await readShards(c.env, from - 60)
    c.header('cache-control', 'no-store')
    return c.json(toSeries(readings, from, to))
  })
  .get('/reports', validate('query', ReportsQuery), async (c) => {
    const { status } = c.req.valid('query')
    const db = getDb(c.env)
    const rows = await db
      .select()
      .from(reports)
      .where(status === 'open' ? eq(reports.status, 'open') : inArray(reports.status, ['dismissed', 'actioned']))
      .orderBy(status === 'open' ? reports.createdAt : desc(reports.closedAt))
      .limit(200)
    const people = await peopleById(db, rows.flatMap((r) => [r.reporterId, r.targetUserId]))
    const out = rows.map((r): ModerationReport => {
      const copy = r.messageCopy ? (JSON.parse(r.messageCopy) as { serverTs: number; body: MessageBody }) : null
      return {
        id: r.id,
        reason: r.reason as ModerationReport['reason'],
        note: r.note,
        status: r.status,
        createdAt: r.createdAt,
        closedAt: r.closedAt,
        reporter: people.get(r.reporterId) ?? unknownUser(r.reporterId),
        target: people.get(r.targetUserId) ?? unknownUser(r.targetUserId),
        message: copy && r.conversationId && r.seq !== null ? { conversationId: r.conversationId, seq: r.seq, serverTs: copy.serverTs, body: copy.body } : null,
      }
    })
    return c.json({ reports: out })
  })
  .post('/reports/:id/dismiss', async (c) => {
    const db = getDb(c.env)
    const admin = c.get('auth').userId
    const report = await openReport(db, c.req.param('id'))
    await closeReport(db, report.id, 'dismissed', admin)
    await audit(db, admin, 'dismiss-report', report.targetUserId, '', report.id)
    return c.body(null, 204)
  })
  /** Deletes the reported message everywhere ("removed by a moderator"), with no time limit. */
  .post('/reports/:id/remove-message', async (c) => {
    const db = getDb(c.env)
    const admin = c.get('auth').userId
    const report = await openReport(db, c.req.param('id'))
    if (!report.conversationId || report.seq === null) fail(400, ErrorCode.BAD_REQUEST, 'this report is about a user, not a message')
    // The report's id makes the removal idempotent: a retried click finds the first one.
    const result = await getConversationRoom(c.env, report.conversationId).removeByModerator(report.conversationId, `moderation-${report.id}`, report.seq)
    if (!result.ok && result.code !== ErrorCode.CONFLICT) fail(result.code === ErrorCode.NOT_FOUND ? 404 : 400, result.code, result.message)
    await closeReport(db, report.id, 'actioned', admin)
    // Already recalled by its sender: nothing left to remove, and the log says so.
    const detail = `${report.conversationId}#${report.seq}${result.ok ? '' : ' (already recalled or removed)'}`
    await audit(db, admin, 'remove-message', report.targetUserId, detail, report.id)
    return c.body(null, 204)
  })
  .post('/users/:id/suspend', validate('json', SuspendBody), async (c) => {
    const db = getDb(c.env)
    const admin = c.get('auth').userId
    const { reason, reportId } = c.req.valid('json')
    if (reportId && (await openReport(db, reportId)).targetUserId !== c.req.param('id')) fail(400, ErrorCode.BAD_REQUEST, 'that report is about someone else')
    const revoked = await suspend(c, db, admin, c.req.param('id'), reason, reportId ?? null)
    if (reportId) await closeReport(db, reportId, 'actioned', admin)
    return c.json({ revokedSessions: revoked })
  })
  .post('/users/:id/unsuspend', async (c) => {
    const db = getDb(c.env)
    const admin = c.get('auth').userId
    const userId = c.req.param('id')
    const changed = await db.update(users).set({ suspendedAt: null, suspendedReason: null }).where(and(eq(users.id, userId), isNotNull(users.suspendedAt))).returning({ id: users.id })
    if (changed.length === 0) {
      const exists = await db.select({ id: users.id }).from(users).where(eq(users.id, userId)).get()
      fail(exists ? 409 : 404, exists ? ErrorCode.CONFLICT : ErrorCode.NOT_FOUND, exists ? 'this account is not suspended' : 'no such user')
    }
    await audit(db, admin, 'unsuspend', userId)
    return c.body(null, 204)
  })
  .get('/audit', async (c) => {
    const db = getDb(c.env)
    const rows = await db.select().from(auditLog).orderBy(desc(auditLog.id)).limit(200)
    const people = await peopleById(db, rows.flatMap((r) => [r.actor, ...(r.targetUserId ? [r.targetUserId] : [])]))
    const entries = rows.map((r): AuditEntry => ({
      id: r.id,
      actor: r.actor === 'cli' ? 'cli' : (people.get(r.actor)?.handle ?? r.actor),
      action: r.action as AuditEntry['action'],
      target: r.targetUserId ? (people.get(r.targetUserId) ?? unknownUser(r.targetUserId)) : null,
      reportId: r.reportId,
      detail: r.detail,
      at: r.at,
    }))
    return c.json({ entries })
  })

export type AdminApi = typeof adminRoutes
