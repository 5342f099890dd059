import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { AuditEntry, ModerationReport } from '../worker/shared/moderation'
import type { AuthResult, MessageEvent } from '../worker/shared/protocol'
import { api, befriend, createGroup, Device, json, openChat, register, textSend, uniqueHandle } from './helpers'

async function makeAdmin(a: AuthResult) {
  await env.DB.prepare('UPDATE users SET is_admin = 1 WHERE id = ?').bind(a.user.id).run()
}

/** The reports about `about` (tests share one database, so each looks at its own people). */
async function openReports(admin: AuthResult, about: AuthResult[], status: 'open' | 'closed' = 'open'): Promise<ModerationReport[]> {
  const res = await api(`/api/admin/reports?status=${status}`, { token: admin.accessToken })
  if (res.status !== 200) throw new Error(`reports: ${res.status}`)
  const ids = new Set(about.map((a) => a.user.id))
  return (await json<{ reports: ModerationReport[] }>(res)).reports.filter((r) => ids.has(r.target.id))
}

/** This admin's entries in the audit log, newest first. */
async function auditLog(admin: AuthResult): Promise<AuditEntry[]> {
  const { entries } = await json<{ entries: AuditEntry[] }>(await api('/api/admin/audit', { token: admin.accessToken }))
  return entries.filter((e) => e.actor === admin.user.handle)
}

describe('reports and moderator removal', () => {
  it('keeps a copy of a reported message through a recall, removes it everywhere on request, and deletes the copy with the case', { timeout: 30_000 }, async ({ expect }) => {
    const admin = await register()
    await makeAdmin(admin)
    const ann = await register()
    const bob = await register()
    const outsider = await register()
    const conv = await openChat(ann, bob)
    const da = await Device.connect(ann)
    const db = await Device.connect(bob)
    const bad = await db.sendAndAck(textSend(conv.id, 'buy cheap followers at spam.example'))
    const report = { target: 'message', conversationId: conv.id, seq: bad.seq, reason: 'spam', note: 'third time today' }

    // Bad input changes nothing.
    expect((await api('/api/reports', { token: ann.accessToken, body: { ...report, reason: 'boring' } })).status).toBe(400)
    expect((await api('/api/reports', { token: ann.accessToken, body: { ...report, seq: bad.seq + 50 } })).status).toBe(404)
    expect((await api('/api/reports', { token: outsider.accessToken, body: report })).status).toBe(403)
    expect((await api('/api/reports', { token: bob.accessToken, body: report })).status).toBe(400)
    expect(await openReports(admin, [bob])).toHaveLength(0)

    expect((await api('/api/reports', { token: ann.accessToken, body: report })).status).toBe(201)
    // The same report again is the same case.
    expect((await api('/api/reports', { token: ann.accessToken, body: report })).status).toBe(200)
    // The sender recalls it: the moderators still have what was said.
    const recall = await db.sendAndAck({ type: 'recall', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: bad.seq })
    expect(recall.seq).toBe(bad.seq + 1)
    const [open] = await openReports(admin, [bob])
    expect(open).toMatchObject({ reason: 'spam', note: 'third time today', status: 'open', reporter: { id: ann.user.id }, target: { id: bob.user.id } })
    expect(open!.message).toMatchObject({ conversationId: conv.id, seq: bad.seq, body: { kind: 'text', text: 'buy cheap followers at spam.example' } })
    // Only admins read reports.
    expect((await api('/api/admin/reports', { token: ann.accessToken })).status).toBe(403)

    // A second message, reported and removed by a moderator (no time limit, not a member).
    const worse = await db.sendAndAck(textSend(conv.id, 'something hateful'))
    expect((await api('/api/reports', { token: ann.accessToken, body: { ...report, seq: worse.seq, reason: 'hate', note: '' } })).status).toBe(201)
    const hateCase = (await openReports(admin, [bob])).find((r) => r.reason === 'hate')!
    const removed = await api(`/api/admin/reports/${hateCase.id}/remove-message`, { method: 'POST', token: admin.accessToken })
    expect(removed.status).toBe(204)
    // Every member's device hears it, marked as the moderators' doing.
    for (const d of [da, db]) {
      const frame = await d.next((m) => m.type === 'event' && m.event.type === 'recall' && m.event.targetSeq === worse.seq)
      expect(frame.type === 'event' && frame.event.type === 'recall' && frame.event.byModerator).toBe(true)
    }
    // History (D1) follows within the room's flush interval.
    const historyRow = async () => (await json<{ events: MessageEvent[] }>(await api(`/api/conversations/${conv.id}/messages`, { token: ann.accessToken }))).events.find((e) => e.seq === worse.seq)
    await expect.poll(async () => (await historyRow())?.recalled?.byModerator, { timeout: 5_000 }).toBe(true)
    const gone = (await historyRow())!
    expect(gone.body).toBeNull()
    // Members are told "a moderator", not which one; the audit log keeps who.
    expect(gone.recalled).toMatchObject({ by: 'moderator', byModerator: true })
    // A second click is refused: the case is closed, and its copy is gone with it.
    expect((await api(`/api/admin/reports/${hateCase.id}/remove-message`, { method: 'POST', token: admin.accessToken })).status).toBe(409)
    const closed = await openReports(admin, [bob], 'closed')
    expect(closed.find((r) => r.id === hateCase.id)).toMatchObject({ status: 'actioned', message: null })
    const row = await env.DB.prepare('SELECT message_copy FROM reports WHERE id = ?').bind(hateCase.id).first<{ message_copy: string | null }>()
    expect(row!.message_copy).toBeNull()

    // Dismissing the first case also deletes its copy.
    expect((await api(`/api/admin/reports/${open!.id}/dismiss`, { method: 'POST', token: admin.accessToken })).status).toBe(204)
    expect(await openReports(admin, [bob])).toHaveLength(0)
    expect((await openReports(admin, [bob], 'closed')).find((r) => r.id === open!.id)).toMatchObject({ status: 'dismissed', message: null })

    // Reporting a user; an unknown user is refused.
    expect((await api('/api/reports', { token: ann.accessToken, body: { target: 'user', userId: 'no_such_user_id_123', reason: 'spam' } })).status).toBe(404)
    expect((await api('/api/reports', { token: ann.accessToken, body: { target: 'user', userId: bob.user.id, reason: 'impersonation', note: 'pretends to be support' } })).status).toBe(201)
    // Reporting the same person again while the case is open is the same case.
    expect((await api('/api/reports', { token: ann.accessToken, body: { target: 'user', userId: bob.user.id, reason: 'spam' } })).status).toBe(200)
    expect(await openReports(admin, [bob])).toHaveLength(1)
    expect((await openReports(admin, [bob]))[0]).toMatchObject({ reason: 'impersonation', target: { id: bob.user.id }, message: null })

    const log = await auditLog(admin)
    expect(log.map((e) => e.action)).toEqual(['dismiss-report', 'remove-message'])
    expect(log[1]).toMatchObject({ actor: admin.user.handle, target: { id: bob.user.id }, reportId: hateCase.id, detail: `${conv.id}#${worse.seq}` })
    da.close()
    db.close()
  })

  it('a member cannot report what was said before they joined', { timeout: 20_000 }, async ({ expect }) => {
    const owner = await register()
    const early = await register()
    const late = await register()
    const g = await createGroup(owner, [early])
    const d = await Device.connect(early)
    const before = await d.sendAndAck(textSend(g.id, 'said before the newcomer'))
    await befriend(owner, late)
    expect((await api(`/api/conversations/${g.id}/members`, { token: owner.accessToken, body: { userIds: [late.user.id] } })).status).toBeLessThan(300)
    const res = await api('/api/reports', { token: late.accessToken, body: { target: 'message', conversationId: g.id, seq: before.seq, reason: 'spam' } })
    expect(res.status).toBe(404)
    d.close()
  })

  it('the queue and the audit log answer with more people than one D1 query may name', { timeout: 30_000 }, async ({ expect }) => {
    const admin = await register()
    await makeAdmin(admin)
    // 120 people reporting 120 others, written straight into D1 (registering 240 would be slow).
    const run = crypto.randomUUID().slice(0, 8)
    const ids = Array.from({ length: 240 }, (_, i) => `bulk_${run}_${i}`)
    await env.DB.batch(ids.map((id) => env.DB.prepare(`INSERT INTO users (id, handle, display_name, password_hash) VALUES (?, ?, ?, 'x')`).bind(id, id.toLowerCase(), id)))
    await env.DB.batch(Array.from({ length: 120 }, (_, i) => env.DB.prepare(`INSERT INTO reports (id, reporter_id, target_user_id, reason) VALUES (?, ?, ?, 'spam')`).bind(`r_${run}_${i}`, ids[i], ids[120 + i])))
    const res = await api('/api/admin/reports', { token: admin.accessToken })
    expect(res.status).toBe(200)
    const mine = (await json<{ reports: ModerationReport[] }>(res)).reports.filter((r) => r.id.startsWith(`r_${run}`))
    expect(mine).toHaveLength(120)
    expect(mine.every((r) => r.reporter.handle.startsWith('bulk_') && r.target.handle.startsWith('bulk_'))).toBe(true)
  })

  it('a group member reports a message; the removal reaches every member', { timeout: 20_000 }, async ({ expect }) => {
    const admin = await register()
    await makeAdmin(admin)
    const owner = await register()
    const m1 = await register()
    const m2 = await register()
    const g = await createGroup(owner, [m1, m2])
    const d1 = await Device.connect(m1)
    const d2 = await Device.connect(m2)
    const said = await d1.sendAndAck(textSend(g.id, 'rude words'))
    expect((await api('/api/reports', { token: m2.accessToken, body: { target: 'message', conversationId: g.id, seq: said.seq, reason: 'harassment' } })).status).toBe(201)
    const [r] = await openReports(admin, [m1])
    expect((await api(`/api/admin/reports/${r!.id}/remove-message`, { method: 'POST', token: admin.accessToken })).status).toBe(204)
    await d2.next((m) => m.type === 'event' && m.event.type === 'recall' && m.event.targetSeq === said.seq)
    d1.close()
    d2.close()
  })
})

describe('suspension', () => {
  it('closes the suspended person\'s sockets within a second, refuses sign-in with the reason, and unsuspending lets them back', { timeout: 30_000 }, async ({ expect }) => {
    const admin = await register()
    await makeAdmin(admin)
    const handle = uniqueHandle('sus')
    const bob = await register(handle, 'bob-password-1')
    const phone = await Device.connect(bob)
    const laptop = await Device.connect(bob)
    // A writer socket lives in the conversation's room, not the hub: it must close too.
    const writer = await Device.writer(bob, (await openChat(admin, bob)).id)
    await new Promise((r) => setTimeout(r, 100))
    const closed = [phone, laptop, writer].map((d) => new Promise<{ code: number; reason: string; at: number }>((resolve) => d.ws.addEventListener('close', (e) => resolve({ code: e.code, reason: e.reason, at: Date.now() }))))

    expect((await api(`/api/admin/users/${bob.user.id}/suspend`, { token: admin.accessToken, body: {} })).status).toBe(400)
    expect((await api(`/api/admin/users/${admin.user.id}/suspend`, { token: admin.accessToken, body: { reason: 'me' } })).status).toBe(400)
    const started = Date.now()
    const res = await api(`/api/admin/users/${bob.user.id}/suspend`, { token: admin.accessToken, body: { reason: 'spam campaign' } })
    expect(res.status).toBe(200)
    expect((await json(res)).revokedSessions).toBe(1)
    for (const c of await Promise.all(closed)) {
      expect(c).toMatchObject({ code: 4099, reason: 'SUSPENDED' })
      expect(c.at - started).toBeLessThan(1000)
    }
    // Every way back in is shut.
    expect((await api('/api/ws/ticket', { method: 'POST', token: bob.accessToken })).status).toBe(401)
    expect((await api('/api/me', { token: bob.accessToken })).status).toBe(401)
    const refresh = await api('/api/auth/refresh', { body: { refreshToken: bob.refreshToken } })
    expect(refresh.status).toBe(403)
    // A device signed out by the suspension learns why when it tries to refresh.
    expect((await json(refresh)).error.message).toBe('this account is suspended: spam campaign')
    const login = await api('/api/auth/login', { body: { handle, password: 'bob-password-1' } })
    expect(login.status).toBe(403)
    expect((await json(login)).error).toEqual({ code: 'SUSPENDED', message: 'this account is suspended: spam campaign' })
    // A wrong password is still just a wrong password: nobody learns who is suspended.
    expect((await api('/api/auth/login', { body: { handle, password: 'not-the-password' } })).status).toBe(401)

    expect((await api(`/api/admin/users/${bob.user.id}/unsuspend`, { method: 'POST', token: admin.accessToken })).status).toBe(204)
    // Twice is a mistake, not a second action in the log.
    expect((await api(`/api/admin/users/${bob.user.id}/unsuspend`, { method: 'POST', token: admin.accessToken })).status).toBe(409)
    const back = await api('/api/auth/login', { body: { handle, password: 'bob-password-1' } })
    expect(back.status).toBe(200)
    const again = await Device.connect(await json<AuthResult>(back))
    again.close()
    const log = await auditLog(admin)
    expect(log.map((e) => e.action)).toEqual(['unsuspend', 'suspend'])
    expect(log[1]).toMatchObject({ detail: 'spam campaign', target: { id: bob.user.id, suspended: false } })
  })

  it('a session that a sign-in made while the suspension was under way is refused too', { timeout: 20_000 }, async ({ expect }) => {
    const bob = await register()
    // The race's outcome: the account is suspended, and a session made meanwhile was never revoked.
    await env.DB.prepare('UPDATE users SET suspended_at = ?, suspended_reason = ? WHERE id = ?').bind(Date.now(), 'race', bob.user.id).run()
    expect((await api('/api/me', { token: bob.accessToken })).status).toBe(401)
    expect((await api('/api/ws/ticket', { method: 'POST', token: bob.accessToken })).status).toBe(401)
  })

  it('a suspension from a report must name the reported person', { timeout: 20_000 }, async ({ expect }) => {
    const admin = await register()
    await makeAdmin(admin)
    const ann = await register()
    const bob = await register()
    const cy = await register()
    expect((await api('/api/reports', { token: ann.accessToken, body: { target: 'user', userId: bob.user.id, reason: 'spam' } })).status).toBe(201)
    const [r] = await openReports(admin, [bob])
    expect((await api(`/api/admin/users/${cy.user.id}/suspend`, { token: admin.accessToken, body: { reason: 'wrong one', reportId: r!.id } })).status).toBe(400)
    const cyRow = await env.DB.prepare('SELECT suspended_at FROM users WHERE id = ?').bind(cy.user.id).first<{ suspended_at: number | null }>()
    expect(cyRow!.suspended_at).toBeNull()
    expect(await openReports(admin, [bob])).toHaveLength(1)
  })

  it('suspending from a report closes the case', { timeout: 20_000 }, async ({ expect }) => {
    const admin = await register()
    await makeAdmin(admin)
    const ann = await register()
    const bob = await register()
    expect((await api('/api/reports', { token: ann.accessToken, body: { target: 'user', userId: bob.user.id, reason: 'violence' } })).status).toBe(201)
    const [r] = await openReports(admin, [bob])
    expect((await api(`/api/admin/users/${bob.user.id}/suspend`, { token: admin.accessToken, body: { reason: 'threats', reportId: r!.id } })).status).toBe(200)
    expect(await openReports(admin, [bob])).toHaveLength(0)
    expect((await auditLog(admin))[0]).toMatchObject({ action: 'suspend', reportId: r!.id })
  })
})

describe('admin authorisation matrix', () => {
  it('every admin route: 401 without a sign-in or for a suspended admin, 403 for a member, allowed for an admin', { timeout: 30_000 }, async ({ expect }) => {
    const admin = await register()
    await makeAdmin(admin)
    const member = await register()
    const fallen = await register()
    await makeAdmin(fallen)
    const victim = await register()
    await api('/api/reports', { token: member.accessToken, body: { target: 'user', userId: victim.user.id, reason: 'spam' } })
    const reportId = (await openReports(admin, [victim]))[0]!.id
    const routes: [method: string, path: string, body?: unknown][] = [
      ['GET', '/api/admin/metrics'],
      ['GET', '/api/admin/metrics/series'],
      ['GET', '/api/admin/reports'],
      ['GET', '/api/admin/reports?status=closed'],
      ['POST', `/api/admin/reports/${reportId}/dismiss`],
      ['POST', `/api/admin/reports/${reportId}/remove-message`],
      ['POST', `/api/admin/users/${victim.user.id}/suspend`, { reason: 'x' }],
      ['POST', `/api/admin/users/${victim.user.id}/unsuspend`],
      ['GET', '/api/admin/audit'],
    ]
    // A suspended admin is signed out everywhere; a token minted before that is refused too.
    const fallenToken = fallen.accessToken
    await env.DB.prepare('UPDATE users SET suspended_at = 1 WHERE id = ?').bind(fallen.user.id).run()
    for (const [method, path, body] of routes) {
      const call = (token?: string) => api(path, { method, ...(body ? { body } : {}), ...(token ? { token } : {}) })
      expect([path, (await call()).status]).toEqual([path, 401])
      expect([path, (await call(member.accessToken)).status]).toEqual([path, 403])
      // A suspended account's sessions no longer stand at all.
      expect([path, (await call(fallenToken)).status]).toEqual([path, 401])
    }
    // Nothing the refused calls asked for happened.
    expect(await openReports(admin, [victim])).toHaveLength(1)
    const { entries } = await json<{ entries: AuditEntry[] }>(await api('/api/admin/audit', { token: admin.accessToken }))
    expect(entries.filter((e) => e.target?.id === victim.user.id)).toHaveLength(0)
    const suspended = await env.DB.prepare('SELECT suspended_at FROM users WHERE id = ?').bind(victim.user.id).first<{ suspended_at: number | null }>()
    expect(suspended!.suspended_at).toBeNull()
    // The admin may. Dismissing closes the report, so the removal after it is a 409; suspend then unsuspend both succeed.
    const expected: Record<string, number> = { dismiss: 204, 'remove-message': 409, suspend: 200, unsuspend: 204 }
    for (const [method, path, body] of routes) {
      const status = (await api(path, { method, ...(body ? { body } : {}), token: admin.accessToken })).status
      const action = path.split('?')[0]!.split('/').pop()!
      expect([path, status]).toEqual([path, expected[action] ?? 200])
    }
  })
})
