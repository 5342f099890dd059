import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import { getConversationRoom } from '../worker/durable-objects'
import type { AuthResult, ConversationSummary, HistoryPage, MemberEvent } from '../worker/shared/protocol'
import { api, befriend, createGroup, Device, json, register, textSend } from './helpers'
import { drainOutbox } from './push-helpers'

const call = (user: AuthResult, method: string, path: string, body?: unknown) => api(path, { method, token: user.accessToken, body })

describe('groups', () => {
  it('are created with friends only, log their first members, and list roles', async ({ expect }) => {
    const owner = await register()
    const [m1, m2] = [await register(), await register()]
    const stranger = await register()
    const bad = await api('/api/conversations/groups', { token: owner.accessToken, body: { title: 'x', memberIds: [stranger.user.id] } })
    expect(bad.status).toBe(403)
    const d1 = await Device.connect(m1)
    const g = await createGroup(owner, [m1, m2])
    expect(g.kind).toBe('group')
    expect(g.title).toBe('Book club')
    expect(g.members.find((m) => m.id === owner.user.id)!.role).toBe('owner')
    const added = await d1.next((m) => m.type === 'event' && m.event.type === 'member')
    expect(added.type === 'event' && (added.event as MemberEvent)).toMatchObject({ action: 'added', seq: 1, senderId: owner.user.id })
    expect((await api('/api/conversations/groups', { token: owner.accessToken, body: { title: '  ', memberIds: [] } })).status).toBe(400)
    d1.close()
  })

  it('hold up to 50 people (more rows than D1 binds in one statement) and refuse a 51st', { timeout: 120_000 }, async ({ expect }) => {
    const owner = await register()
    const friends: AuthResult[] = []
    for (let i = 0; i < 50; i++) {
      const f = await register()
      await befriend(owner, f)
      friends.push(f)
    }
    const tooMany = await api('/api/conversations/groups', { token: owner.accessToken, body: { title: 'big', memberIds: friends.map((f) => f.user.id) } })
    expect(tooMany.status).toBe(400)
    const created = await api('/api/conversations/groups', { token: owner.accessToken, body: { title: 'Fifty', memberIds: friends.slice(0, 49).map((f) => f.user.id) } })
    expect(created.status).toBe(201)
    const g = (await json<{ conversation: ConversationSummary }>(created)).conversation
    expect(g.members).toHaveLength(50)
    const listed = await json<{ conversations: ConversationSummary[] }>(await call(friends[48]!, 'GET', '/api/conversations'))
    expect(listed.conversations.map((c) => c.id)).toContain(g.id)
    const more = await call(owner, 'POST', `/api/conversations/${g.id}/members`, { userIds: [friends[49]!.user.id] })
    expect(more.status).toBe(403)
  })

  it('a list of more than 100 conversations loads (more ids than D1 binds in one statement)', { timeout: 60_000 }, async ({ expect }) => {
    const owner = await register()
    const friend = await register()
    await befriend(owner, friend)
    for (let i = 0; i < 101; i++) {
      const res = await api('/api/conversations/groups', { token: owner.accessToken, body: { title: `g${i}`, memberIds: [friend.user.id] } })
      expect(res.status).toBe(201)
    }
    const listed = await json<{ conversations: ConversationSummary[] }>(await call(friend, 'GET', '/api/conversations'))
    expect(listed.conversations).toHaveLength(101)
    expect(listed.conversations.every((c) => c.members.length === 2)).toBe(true)
  })

  it('a member added later sees history from their joining on, in sync and in D1', async ({ expect }) => {
    const owner = await register()
    const early = await register()
    const late = await register()
    const g = await createGroup(owner, [early])
    const d = await Device.connect(owner)
    await d.sendAndAck(textSend(g.id, 'before you came'))
    await befriend(owner, late)
    expect((await call(owner, 'POST', `/api/conversations/${g.id}/members`, { userIds: [late.user.id] })).status).toBe(201)
    await d.sendAndAck(textSend(g.id, 'welcome'))
    await drainOutbox(g.id)
    const dl = await Device.connect(late)
    dl.send({ type: 'sync', conversationId: g.id, afterSeq: 0 })
    const page = await dl.next('events')
    expect(JSON.stringify(page.events)).not.toContain('before you came')
    expect(page.events.map((e) => e.type)).toEqual(['member', 'message'])
    const history = await json<HistoryPage>(await call(late, 'GET', `/api/conversations/${g.id}/messages`))
    expect(JSON.stringify(history)).not.toContain('before you came')
    expect(history.events.map((e) => e.type)).toEqual(['member', 'message'])
    d.close()
    dl.close()
  })

  it('a removed member gets the removal, then nothing, and loses access at once', async ({ expect }) => {
    const owner = await register()
    const victim = await register()
    const g = await createGroup(owner, [victim])
    const dv = await Device.connect(victim)
    const d = await Device.connect(owner)
    await dv.sendAndAck(textSend(g.id, 'said while a member'))
    expect((await call(owner, 'DELETE', `/api/conversations/${g.id}/members/${victim.user.id}`)).status).toBe(200)
    const removed = await dv.next((m) => m.type === 'event' && m.event.type === 'member' && (m.event as MemberEvent).action === 'removed')
    expect(removed).toBeDefined()
    await d.sendAndAck(textSend(g.id, 'after removal'))
    await new Promise((r) => setTimeout(r, 200))
    expect(JSON.stringify(dv.frames)).not.toContain('after removal')
    dv.send({ type: 'sync', conversationId: g.id, afterSeq: 0 })
    expect((await dv.next('error')).code).toBe('NOT_MEMBER')
    await drainOutbox(g.id)
    expect((await call(victim, 'GET', `/api/conversations/${g.id}/messages`)).status).toBe(404)
    // The history still says who they were: their message and the removal name them, members need no help.
    const history = await json<HistoryPage>(await call(owner, 'GET', `/api/conversations/${g.id}/messages`))
    expect(history.events.map((e) => e.type)).toEqual(['member', 'message', 'member', 'message'])
    expect(history.people).toEqual([{ id: victim.user.id, handle: victim.user.handle, displayName: victim.user.displayName, avatar: null }])
    const list = await json<{ conversations: ConversationSummary[] }>(await call(victim, 'GET', '/api/conversations'))
    expect(list.conversations.map((c) => c.id)).not.toContain(g.id)
    d.close()
    dv.close()
  })

  it('rename, roles, transfer and leave are events that D1 follows', async ({ expect }) => {
    const owner = await register()
    const a = await register()
    const b = await register()
    const g = await createGroup(owner, [a, b])
    expect((await call(owner, 'PATCH', `/api/conversations/${g.id}`, { title: 'Readers' })).status).toBe(200)
    expect((await call(owner, 'POST', `/api/conversations/${g.id}/members/${a.user.id}/role`, { role: 'admin' })).status).toBe(200)
    expect((await call(owner, 'POST', `/api/conversations/${g.id}/transfer`, { userId: b.user.id })).status).toBe(200)
    await drainOutbox(g.id)
    let conv = (await json<{ conversation: ConversationSummary }>(await call(a, 'GET', `/api/conversations/${g.id}`))).conversation
    expect(conv.title).toBe('Readers')
    expect(Object.fromEntries(conv.members.map((m) => [m.id, m.role]))).toEqual({ [owner.user.id]: 'admin', [a.user.id]: 'admin', [b.user.id]: 'owner' })
    // The owner leaves: the longest-standing admin inherits.
    expect((await call(b, 'DELETE', `/api/conversations/${g.id}/members/${b.user.id}`)).status).toBe(200)
    await drainOutbox(g.id)
    conv = (await json<{ conversation: ConversationSummary }>(await call(a, 'GET', `/api/conversations/${g.id}`))).conversation
    expect(conv.members.filter((m) => m.role === 'owner')).toHaveLength(1)
    expect(conv.members.map((m) => m.id)).not.toContain(b.user.id)
    const room = await getConversationRoom(env, g.id).stats()
    expect(room.members.sort()).toEqual(conv.members.map((m) => m.id).sort())
  })

  it('admins remove others’ messages, shown as removed by an admin', async ({ expect }) => {
    const owner = await register()
    const m = await register()
    const g = await createGroup(owner, [m])
    const dm = await Device.connect(m)
    const d = await Device.connect(owner)
    const msg = await dm.sendAndAck(textSend(g.id, 'spam spam spam'))
    const r = await d.sendAndAck({ type: 'recall', conversationId: g.id, clientMsgId: crypto.randomUUID(), targetSeq: msg.seq })
    expect(r.seq).toBe(msg.seq + 1)
    dm.send({ type: 'sync', conversationId: g.id, afterSeq: msg.seq - 1, limit: 1 })
    const page = await dm.next('events')
    expect(page.events[0]).toMatchObject({ body: null, recalled: { by: owner.user.id, byAdmin: true } })
    d.close()
    dm.close()
  })
})

/**
 * Every route and frame against every standing a person can have. Each cell is what the policy
 * allows: an HTTP status, or 'ok' / an error code for frames.
 */
describe('authorisation matrix', () => {
  it('gives owner, admin, member, removed, non-member and blocked exactly what the policy allows', { timeout: 60_000 }, async ({ expect }) => {
    const owner = await register()
    const admin = await register()
    const member = await register()
    const removed = await register()
    const outsider = await register()
    const spare = await Promise.all(Array.from({ length: 5 }, () => register()))
    const g = await createGroup(owner, [admin, member, removed, ...spare])
    await befriend(owner, outsider)
    for (const s of spare) await befriend(admin, s)
    await call(owner, 'POST', `/api/conversations/${g.id}/members/${admin.user.id}/role`, { role: 'admin' })
    await call(owner, 'DELETE', `/api/conversations/${g.id}/members/${removed.user.id}`)
    const od = await Device.connect(owner)
    const ownersMessage = await od.sendAndAck(textSend(g.id, 'the owner said this'))
    const sd = await Device.connect(spare[4]!)
    const target = await sd.sendAndAck(textSend(g.id, 'a message to recall'))
    sd.close()
    const findable = await od.sendAndAck(textSend(g.id, 'zebracrossing'))
    await drainOutbox(g.id)
    // People the owner and the admin may add, one per attempt.
    const newcomers = await Promise.all(Array.from({ length: 5 }, () => register()))
    for (const n of newcomers) {
      await befriend(owner, n)
      await befriend(admin, n)
      await befriend(member, n)
    }
    let newcomer = 0

    const people = { owner, admin, member, removed, outsider } as const
    type Who = keyof typeof people
    const frame = async (who: Who, build: () => object) => {
      const d = await Device.connect(people[who])
      const msg = build() as { clientMsgId?: string; type: string }
      d.send(msg as never)
      const reply = await d.next((m) => m.type === 'error' || m.type === 'ack' || m.type === 'events' || m.type === 'receipt', 1500).catch(() => null)
      d.close()
      if (!reply) return 'silent'
      return reply.type === 'error' ? reply.code : 'ok'
    }
    let spareIndex = 0
    const rows: Record<string, (who: Who) => Promise<number | string>> = {
      'GET history': async (w) => (await call(people[w], 'GET', `/api/conversations/${g.id}/messages`)).status,
      'GET conversation': async (w) => (await call(people[w], 'GET', `/api/conversations/${g.id}`)).status,
      'PATCH rename': async (w) => (await call(people[w], 'PATCH', `/api/conversations/${g.id}`, { title: `by ${w}` })).status,
      'POST role': async (w) => (await call(people[w], 'POST', `/api/conversations/${g.id}/members/${member.user.id}/role`, { role: 'member' })).status,
      'DELETE other member': async (w) => (await call(people[w], 'DELETE', `/api/conversations/${g.id}/members/${spare[spareIndex++]!.user.id}`)).status,
      'frame send': (w) => frame(w, () => textSend(g.id, `hi from ${w}`)),
      'frame sync': (w) => frame(w, () => ({ type: 'sync', conversationId: g.id, afterSeq: 0 })),
      'frame recall owner’s': (w) => frame(w, () => ({ type: 'recall', conversationId: g.id, clientMsgId: crypto.randomUUID(), targetSeq: ownersMessage.seq })),
      'frame recall other': (w) => frame(w, () => ({ type: 'recall', conversationId: g.id, clientMsgId: crypto.randomUUID(), targetSeq: target.seq })),
      'frame read': (w) => frame(w, () => ({ type: 'read', conversationId: g.id, seq: findable.seq })),
      'frame typing': (w) => frame(w, () => ({ type: 'typing', conversationId: g.id })),
      'frame react': (w) => frame(w, () => ({ type: 'react', conversationId: g.id, clientMsgId: crypto.randomUUID(), targetSeq: findable.seq, emoji: '👍', on: true })),
      'POST add member': async (w) => (await call(people[w], 'POST', `/api/conversations/${g.id}/members`, { userIds: [newcomers[newcomer++]!.user.id] })).status,
      'GET search hits': async (w) =>
        (await json<{ hits: unknown[] }>(await call(people[w], 'GET', `/api/search?q=zebracrossing&conversationId=${g.id}`))).hits.length,
      'POST transfer': async (w) => (await call(people[w], 'POST', `/api/conversations/${g.id}/transfer`, { userId: member.user.id })).status,
    }
    const expected: Record<string, Partial<Record<Who, number | string>>> = {
      'GET history': { owner: 200, admin: 200, member: 200, removed: 404, outsider: 404 },
      'GET conversation': { owner: 200, admin: 200, member: 200, removed: 404, outsider: 404 },
      'PATCH rename': { owner: 200, admin: 200, member: 403, removed: 404, outsider: 404 },
      'POST role': { owner: 200, admin: 403, member: 403, removed: 404, outsider: 404 },
      'DELETE other member': { owner: 200, admin: 200, member: 403, removed: 404, outsider: 404 },
      'frame send': { owner: 'ok', admin: 'ok', member: 'ok', removed: 'NOT_MEMBER', outsider: 'NOT_MEMBER' },
      'frame sync': { owner: 'ok', admin: 'ok', member: 'ok', removed: 'NOT_MEMBER', outsider: 'NOT_MEMBER' },
      // Moderation goes down the ranks: an admin cannot remove the owner's words (the owner is not asked).
      'frame recall owner’s': { member: 'NOT_ALLOWED', admin: 'NOT_ALLOWED', removed: 'NOT_MEMBER', outsider: 'NOT_MEMBER', owner: 'ok' },
      // A member's message (spare[4] stays a member). Recall runs last per row: the others fail first, then an admin succeeds.
      'frame recall other': { member: 'NOT_ALLOWED', removed: 'NOT_MEMBER', outsider: 'NOT_MEMBER', admin: 'ok' },
      // Members have read past it already by writing, so the cursor stays and nothing is said.
      'frame read': { owner: 'silent', admin: 'silent', member: 'silent', removed: 'NOT_MEMBER', outsider: 'NOT_MEMBER' },
      // Typing is relayed to the others and answers nobody; only a refusal comes back.
      'frame typing': { owner: 'silent', admin: 'silent', member: 'silent', removed: 'NOT_MEMBER', outsider: 'NOT_MEMBER' },
      'frame react': { owner: 'ok', admin: 'ok', member: 'ok', removed: 'NOT_MEMBER', outsider: 'NOT_MEMBER' },
      'POST add member': { owner: 201, admin: 201, member: 403, removed: 404, outsider: 404 },
      'GET search hits': { owner: 1, admin: 1, member: 1, removed: 0, outsider: 0 },
      // Transfer runs last: everyone else is refused before the owner hands over.
      'POST transfer': { admin: 403, member: 403, removed: 404, outsider: 404, owner: 200 },
    }
    const actual: Record<string, Record<string, number | string>> = {}
    for (const [row, run] of Object.entries(rows)) {
      actual[row] = {}
      for (const who of Object.keys(expected[row]!) as Who[]) actual[row]![who] = await run(who)
    }
    expect(actual).toEqual(expected)

    // Direct chat across a block, in both directions.
    const blocker = await register()
    const blocked = await register()
    await befriend(blocker, blocked)
    const dm = (await json<{ conversation: ConversationSummary }>(await call(blocker, 'POST', '/api/conversations', { peerHandle: blocked.user.handle }))).conversation
    await call(blocker, 'POST', '/api/blocks', { userId: blocked.user.id })
    const both = { blocker, blocked }
    const directFrame = async (who: keyof typeof both) => {
      const d = await Device.connect(both[who])
      d.send(textSend(dm.id, 'hello?'))
      const reply = await d.next((m) => m.type === 'error' || m.type === 'ack')
      d.close()
      return reply.type === 'error' ? reply.code : 'ok'
    }
    expect({
      blockedSends: await directFrame('blocked'),
      blockerSends: await directFrame('blocker'),
      blockedRequests: (await call(blocked, 'POST', '/api/friends/requests', { handle: blocker.user.handle })).status,
      blockedAddsToGroup: (await call(blocked, 'POST', '/api/conversations/groups', { title: 't', memberIds: [blocker.user.id] })).status,
      blockedSeesPresence: (await json<{ presence: unknown }>(await call(blocked, 'GET', `/api/users/${blocker.user.id}`))).presence,
    }).toEqual({ blockedSends: 'FORBIDDEN', blockerSends: 'FORBIDDEN', blockedRequests: 403, blockedAddsToGroup: 403, blockedSeesPresence: null })
    od.close()
  })
})
