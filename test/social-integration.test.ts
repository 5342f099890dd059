import { runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { AuthResult, Capabilities, ConversationSummary, FriendRequest, Profile } from '../worker/shared/protocol'
import { getUserHub } from '../worker/durable-objects'
import { getPresenceIndex, presenceShardOf } from '../worker/user/PresenceIndex'
import { waitFor } from './push-helpers'
import type { UserHub } from '../worker/user/UserHub'
import { api, befriend, Device, json, openChat, register, textSend, uniqueHandle } from './helpers'

const PNG = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 73, 72, 68, 82])

describe('profiles', () => {
  it('edits display name, status line and presence setting, and rejects nonsense', async ({ expect }) => {
    const a = await register()
    const res = await api('/api/me/profile', { method: 'PATCH', token: a.accessToken, body: { displayName: 'Ada L.', statusLine: 'At the loom' } })
    expect(res.status).toBe(200)
    expect((await json<{ user: Profile }>(res)).user).toMatchObject({ displayName: 'Ada L.', statusLine: 'At the loom', hasAvatar: false })
    for (const body of [{}, { displayName: '' }, { statusLine: 'x'.repeat(141) }, { presenceVisibility: 'aliens' }]) {
      expect((await api('/api/me/profile', { method: 'PATCH', token: a.accessToken, body })).status).toBe(400)
    }
  })

  it('stores an avatar whose type is sniffed from the bytes, and serves it', async ({ expect }) => {
    const a = await register()
    const fake = await api('/api/me/avatar', { method: 'PUT', token: a.accessToken, body: '<svg>not an image</svg>', headers: { 'content-type': 'image/png' } })
    expect(fake.status).toBe(415)
    const huge = await api('/api/me/avatar', { method: 'PUT', token: a.accessToken, body: 'x'.repeat(1024 * 1024 + 1) })
    expect(huge.status).toBe(413)
    const ok = await api('/api/me/avatar', { method: 'PUT', token: a.accessToken, body: PNG })
    expect(ok.status).toBe(200)
    const got = await api(`/api/users/${a.user.id}/avatar`, { token: a.accessToken })
    expect(got.status).toBe(200)
    expect(got.headers.get('content-type')).toBe('image/png')
    const etag = got.headers.get('etag')!
    expect(etag).toBeTruthy()
    expect((await api(`/api/users/${a.user.id}/avatar`, { headers: { 'if-none-match': etag } })).status).toBe(304)
  })
})

describe('user search', () => {
  it('finds by handle or name prefix, pages, and never leaks secrets', async ({ expect }) => {
    const me = await register()
    const stem = uniqueHandle('zq').slice(0, 10)
    for (let i = 0; i < 5; i++) await register(`${stem}_${i}`)
    const p1 = await json<{ users: Profile[]; nextCursor: string | null }>(await api(`/api/users/search?q=${stem}&limit=3`, { token: me.accessToken }))
    expect(p1.users.map((u) => u.handle)).toEqual([0, 1, 2].map((i) => `${stem}_${i}`))
    const p2 = await json<{ users: Profile[]; nextCursor: string | null }>(await api(`/api/users/search?q=${stem}&limit=3&cursor=${p1.nextCursor}`, { token: me.accessToken }))
    expect(p2.users.map((u) => u.handle)).toEqual([3, 4].map((i) => `${stem}_${i}`))
    expect(p2.nextCursor).toBeNull()
    // Display names are upper-cased handles in the helper: name search is case-insensitive.
    const byName = await json<{ users: Profile[] }>(await api(`/api/users/search?q=${stem.toUpperCase()}_3`, { token: me.accessToken }))
    expect(byName.users.map((u) => u.handle)).toEqual([`${stem}_3`])
    expect(JSON.stringify(p1)).not.toMatch(/pbkdf2|password|hash/i)
    // LIKE wildcards are literal.
    const wild = await json<{ users: Profile[] }>(await api('/api/users/search?q=%25', { token: me.accessToken }))
    expect(wild.users).toEqual([])
    expect((await api('/api/users/search?q=', { token: me.accessToken })).status).toBe(400)
  })
})

describe('friend requests', () => {
  it('send with a note, accept, list, remove', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const sent = await api('/api/friends/requests', { token: a.accessToken, body: { handle: b.user.handle, note: 'we met at the meetup' } })
    expect(sent.status).toBe(201)
    expect((await api('/api/friends/requests', { token: a.accessToken, body: { handle: b.user.handle } })).status).toBe(409)
    const inbox = await json<{ incoming: FriendRequest[]; outgoing: FriendRequest[] }>(await api('/api/friends/requests', { token: b.accessToken }))
    expect(inbox.incoming).toHaveLength(1)
    expect(inbox.incoming[0]).toMatchObject({ note: 'we met at the meetup', from: { id: a.user.id } })
    // Only the recipient can accept.
    expect((await api(`/api/friends/requests/${inbox.incoming[0]!.id}/accept`, { method: 'POST', token: a.accessToken })).status).toBe(404)
    expect((await api(`/api/friends/requests/${inbox.incoming[0]!.id}/accept`, { method: 'POST', token: b.accessToken })).status).toBe(200)
    const friends = await json<{ friends: Profile[] }>(await api('/api/friends', { token: a.accessToken }))
    expect(friends.friends.map((f) => f.id)).toEqual([b.user.id])
    expect((await api(`/api/friends/${b.user.id}`, { method: 'DELETE', token: a.accessToken })).status).toBe(204)
    expect((await json<{ friends: Profile[] }>(await api('/api/friends', { token: b.accessToken }))).friends).toEqual([])
  })

  it('decline and cancel leave no friendship; asking back accepts', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const r1 = await json<{ id: string }>(await api('/api/friends/requests', { token: a.accessToken, body: { handle: b.user.handle } }))
    expect((await api(`/api/friends/requests/${r1.id}/decline`, { method: 'POST', token: b.accessToken })).status).toBe(200)
    const r2 = await json<{ id: string }>(await api('/api/friends/requests', { token: a.accessToken, body: { handle: b.user.handle } }))
    expect((await api(`/api/friends/requests/${r2.id}`, { method: 'DELETE', token: b.accessToken })).status).toBe(404)
    expect((await api(`/api/friends/requests/${r2.id}`, { method: 'DELETE', token: a.accessToken })).status).toBe(204)
    expect((await json<{ friends: Profile[] }>(await api('/api/friends', { token: a.accessToken }))).friends).toEqual([])
    await api('/api/friends/requests', { token: a.accessToken, body: { handle: b.user.handle } })
    const back = await api('/api/friends/requests', { token: b.accessToken, body: { handle: a.user.handle } })
    expect(await json(back)).toEqual({ status: 'accepted' })
  })

  it('a 1:1 chat opens between friends only', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const res = await api('/api/conversations', { token: a.accessToken, body: { peerHandle: b.user.handle } })
    expect(res.status).toBe(403)
    await befriend(a, b)
    expect((await api('/api/conversations', { token: a.accessToken, body: { peerHandle: b.user.handle } })).status).toBe(201)
  })
})

describe('blocking', () => {
  it('ends the friendship, stops requests, messages, typing and presence; after an unblock writes need friendship again', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const conv = await openChat(a, b)
    const da = await Device.connect(a)
    const db = await Device.connect(b)
    expect((await api('/api/blocks', { token: a.accessToken, body: { userId: b.user.id } })).status).toBe(201)
    expect((await json<{ friends: Profile[] }>(await api('/api/friends', { token: b.accessToken }))).friends).toEqual([])
    expect((await api('/api/friends/requests', { token: b.accessToken, body: { handle: a.user.handle } })).status).toBe(403)

    const m = textSend(conv.id, 'are you there?')
    db.send(m)
    expect(await db.next('error')).toMatchObject({ code: 'FORBIDDEN', ref: (m as { clientMsgId: string }).clientMsgId })
    db.send({ type: 'typing', conversationId: conv.id })
    await new Promise((r) => setTimeout(r, 200))
    expect(da.frames.some((f) => f.type === 'typing')).toBe(false)

    const profile = await json<{ presence: unknown; relationship: string }>(await api(`/api/users/${a.user.id}`, { token: b.accessToken }))
    expect(profile.presence).toBeNull()
    // Blockers vanish from the blocked user's search.
    const found = await json<{ users: Profile[] }>(await api(`/api/users/search?q=${a.user.handle}`, { token: b.accessToken }))
    expect(found.users).toEqual([])

    expect((await api(`/api/blocks/${b.user.id}`, { method: 'DELETE', token: a.accessToken })).status).toBe(204)
    const early = textSend(conv.id, 'unblocked, not friends yet')
    db.send(early)
    expect(await db.next('error')).toMatchObject({ code: 'FORBIDDEN', ref: (early as { clientMsgId: string }).clientMsgId })
    await befriend(a, b)
    expect((await db.sendAndAck(textSend(conv.id, 'hello again'))).seq).toBe(1)
    da.close()
    db.close()
  })
})

describe('presence and typing', () => {
  it('friends see online and last seen live; typing reaches the others only', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const conv = await openChat(a, b)
    const da = await Device.connect(a)
    const db = await Device.connect(b)
    const online = await da.next((m) => m.type === 'presence' && m.userId === b.user.id)
    expect(online).toMatchObject({ online: true })
    const friends = await json<{ friends: (Profile & { presence: { online: boolean } | null })[] }>(await api('/api/friends', { token: a.accessToken }))
    expect(friends.friends[0]!.presence).toMatchObject({ online: true })

    db.send({ type: 'typing', conversationId: conv.id })
    expect(await da.next('typing')).toEqual({ type: 'typing', conversationId: conv.id, userId: b.user.id })
    await new Promise((r) => setTimeout(r, 100))
    expect(db.frames.some((f) => f.type === 'typing')).toBe(false)

    db.close()
    const offline = await da.next((m) => m.type === 'presence' && m.userId === b.user.id && !m.online)
    expect(offline.type === 'presence' && offline.lastSeenAt).toBeGreaterThan(Date.now() - 10_000)
    da.close()
  })

  it('a first connect greets only friends who are online; an entry left by a stopped runtime is taken out', async ({ expect }) => {
    const a = await register()
    const online = await register()
    const offline = await Promise.all(Array.from({ length: 6 }, () => register()))
    for (const f of [online, ...offline]) await befriend(a, f)
    const stale = offline[0]!
    const index = (u: AuthResult) => getPresenceIndex(env, presenceShardOf(env, u.user.id))
    // The stale friend was connected once; then, as if the runtime had stopped while they were, the index lists them again.
    const ds = await Device.connect(stale)
    await waitFor(async () => (await index(stale).online([stale.user.id])).length === 1)
    ds.close()
    await waitFor(async () => (await index(stale).online([stale.user.id])).length === 0)
    await index(stale).set(stale.user.id, true)
    const dOnline = await Device.connect(online)
    const da = await Device.connect(a)
    expect(await dOnline.next((m) => m.type === 'presence' && m.userId === a.user.id)).toMatchObject({ online: true })
    expect(await da.next((m) => m.type === 'presence' && m.userId === online.user.id)).toMatchObject({ online: true })
    const hellos = (u: AuthResult) => runInDurableObject(getUserHub(env, u.user.id), (hub: UserHub) => hub.presenceHellos)
    // The stale friend's hub was greeted once and took its entry out; the others were not woken.
    expect(await hellos(stale)).toBe(1)
    for (const f of offline.slice(1)) expect(await hellos(f)).toBe(0)
    await waitFor(async () => (await index(stale).online([stale.user.id])).length === 0)
    // The last device going takes the user out of the index; connecting puts them back.
    da.close()
    await dOnline.next((m) => m.type === 'presence' && m.userId === a.user.id && !m.online)
    await waitFor(async () => (await index(a).online([a.user.id])).length === 0)
    dOnline.close()
  })

  it('hides presence from everyone when the user chose nobody', async ({ expect }) => {
    const a = await register()
    const b = await register()
    await befriend(a, b)
    await api('/api/me/profile', { method: 'PATCH', token: b.accessToken, body: { presenceVisibility: 'nobody' } })
    const db = await Device.connect(b)
    const view = await json<{ presence: unknown }>(await api(`/api/users/${b.user.id}`, { token: a.accessToken }))
    expect(view.presence).toBeNull()
    db.close()
  })
})

describe('conversation list', () => {
  it('counts unread from the read cursor and previews the newest message, newest chat first', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const c = await register()
    const ab = await openChat(a, b)
    const ac = await openChat(a, c)
    const da = await Device.connect(a)
    for (let i = 1; i <= 3; i++) await da.sendAndAck(textSend(ab.id, `to b ${i}`))
    await da.sendAndAck(textSend(ac.id, 'to c'))
    const dbv = await Device.connect(b)
    const room = await import('../worker/durable-objects')
    const { drainOutbox } = await import('./push-helpers')
    await drainOutbox(ab.id)
    await drainOutbox(ac.id)
    let list = await json<{ conversations: { id: string; unread: number; preview: { text: string } | null }[] }>(await api('/api/conversations', { token: b.accessToken }))
    expect(list.conversations.find((x) => x.id === ab.id)).toMatchObject({ unread: 3, preview: { text: 'to b 3' } })
    const listA = await json<{ conversations: { id: string; unread: number }[] }>(await api('/api/conversations', { token: a.accessToken }))
    expect(listA.conversations.map((x) => x.id)).toEqual([ac.id, ab.id])
    expect(listA.conversations.every((x) => x.unread === 0)).toBe(true)

    dbv.send({ type: 'read', conversationId: ab.id, seq: 2 })
    await da.receiptOf(b.user.id, (r) => r.readSeq === 2)
    await drainOutbox(ab.id)
    list = await json(await api('/api/conversations', { token: b.accessToken }))
    expect(list.conversations.find((x) => x.id === ab.id)!.unread).toBe(1)
    void room
    da.close()
    dbv.close()
  })
})

describe('message search', () => {
  it('finds words in English and Chinese in the user’s conversations only, never recalled text', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const outsider = await register()
    const conv = await openChat(a, b)
    const other = await openChat(outsider, await register())
    const da = await Device.connect(a)
    const dout = await Device.connect(outsider)
    await da.sendAndAck(textSend(conv.id, 'The quarterly report is ready'))
    await da.sendAndAck(textSend(conv.id, '我们明天去北京开会'))
    const secret = await da.sendAndAck(textSend(conv.id, 'report the secret code 4242'))
    await dout.sendAndAck(textSend(other.id, 'an outsider report'))
    await da.sendAndAck({ type: 'recall', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: secret.seq })
    const { drainOutbox } = await import('./push-helpers')
    await drainOutbox(conv.id)
    await drainOutbox(other.id)

    const search = async (q: string, token = b.accessToken, extra = '') =>
      (await json<{ hits: { text: string; conversationId: string }[] }>(await api(`/api/search?q=${encodeURIComponent(q)}${extra}`, { token }))).hits.map((h) => h.text)
    expect(await search('report')).toEqual(['The quarterly report is ready'])
    expect(await search('北京开会')).toEqual(['我们明天去北京开会'])
    // Two Chinese characters are shorter than a trigram and still match.
    expect(await search('明天')).toEqual(['我们明天去北京开会'])
    expect(await search('4242')).toEqual([])
    expect(await search('report', outsider.accessToken)).toEqual(['an outsider report'])
    expect(await search('report', b.accessToken, `&conversationId=${other.id}`)).toEqual([])
    da.close()
    dout.close()
  })

  it('edits are searchable by their new text only', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const conv = await openChat(a, b)
    const da = await Device.connect(a)
    const first = await da.sendAndAck(textSend(conv.id, 'meet at the old harbour'))
    await da.sendAndAck({ type: 'edit', conversationId: conv.id, clientMsgId: crypto.randomUUID(), targetSeq: first.seq, body: { kind: 'text', text: 'meet at the new station' } })
    const { drainOutbox } = await import('./push-helpers')
    await drainOutbox(conv.id)
    const hits = async (q: string) => (await json<{ hits: unknown[] }>(await api(`/api/search?q=${q}`, { token: b.accessToken }))).hits.length
    expect(await hits('harbour')).toBe(0)
    expect(await hits('station')).toBe(1)
    da.close()
  })

  it('history by time range', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const conv = await openChat(a, b)
    const da = await Device.connect(a)
    const acks = []
    for (let i = 0; i < 3; i++) {
      acks.push(await da.sendAndAck(textSend(conv.id, `t${i}`)))
      await new Promise((r) => setTimeout(r, 20))
    }
    const { drainOutbox } = await import('./push-helpers')
    await drainOutbox(conv.id)
    const page = await json<{ events: { seq: number }[] }>(
      await api(`/api/conversations/${conv.id}/messages?from=${acks[1]!.serverTs}&to=${acks[2]!.serverTs}`, { token: b.accessToken }),
    )
    expect(page.events.map((e) => e.seq)).toEqual([2, 3])
    expect((await api(`/api/conversations/${conv.id}/messages?from=10&to=5`, { token: b.accessToken })).status).toBe(400)
    void env
    da.close()
  })
})

describe('what the chat list and clients are told (issue 13)', () => {
  it('members carry an avatar version that changes with the picture; the list gives the preview seq and the read cursor', async ({ expect }) => {
    const a = await register()
    const b = await register()
    await befriend(a, b)
    const conv = await openChat(a, b)
    const memberOf = async () => (await json<{ conversations: ConversationSummary[] }>(await api('/api/conversations', { token: b.accessToken }))).conversations.find((c) => c.id === conv.id)!
    expect((await memberOf()).members.find((m) => m.id === a.user.id)!.avatar).toBeNull()
    await api('/api/me/avatar', { method: 'PUT', token: a.accessToken, body: PNG })
    const v1 = (await memberOf()).members.find((m) => m.id === a.user.id)!.avatar
    expect(v1).toMatch(/^[A-Za-z0-9_-]+$/)
    await api('/api/me/avatar', { method: 'PUT', token: a.accessToken, body: PNG })
    const v2 = (await memberOf()).members.find((m) => m.id === a.user.id)!.avatar
    expect(v2).not.toBe(v1)
    // The versioned URL is the picture.
    expect((await api(`/api/users/${a.user.id}/avatar?v=${v2}`)).status).toBe(200)

    const da = await Device.connect(a)
    const ack = await da.sendAndAck(textSend(conv.id, 'preview me'))
    await expect.poll(async () => (await memberOf()).preview?.seq, { timeout: 5000 }).toBe(ack.seq)
    const summary = await memberOf()
    expect(summary).toMatchObject({ unread: 1, readSeq: expect.any(Number), preview: { seq: ack.seq, senderId: a.user.id, text: 'preview me' } })
    expect(summary.readSeq).toBeLessThan(ack.seq)
    da.close()
  })

  it('capabilities say what this server can do', async ({ expect }) => {
    const caps = await json<Capabilities>(await api('/api/capabilities'))
    // The test pool runs the local transcriber and has VAPID keys.
    expect(caps).toEqual({ transcribe: true, push: true })
  })
})

describe('mute, pin and archive (issue 13)', () => {
  it('keeps each person’s own settings, refuses nonsense and non-members, and tells their other devices', async ({ expect }) => {
    const a = await register()
    const b = await register()
    const outsider = await register()
    await befriend(a, b)
    const conv = await openChat(a, b)
    const other = await Device.connect(a)
    const patch = (token: string, body: unknown) => api(`/api/conversations/${conv.id}/settings`, { method: 'PATCH', token, body })
    const before = Date.now()
    const res = await patch(a.accessToken, { mute: '8h', pinned: true, archived: true })
    expect(res.status).toBe(200)
    const { conversation } = await json<{ conversation: ConversationSummary }>(res)
    expect(conversation.pinned).toBe(true)
    expect(conversation.archived).toBe(true)
    expect(conversation.mutedUntil).toBeGreaterThanOrEqual(before + 8 * 3600_000)
    expect(conversation.mutedUntil).toBeLessThan(before + 8 * 3600_000 + 60_000)
    await other.next('conversations-changed')
    // The other member's view is untouched.
    const theirs = (await json<{ conversations: ConversationSummary[] }>(await api('/api/conversations', { token: b.accessToken }))).conversations.find((c) => c.id === conv.id)!
    expect(theirs).toMatchObject({ mutedUntil: null, pinned: false, archived: false })
    const off = await json<{ conversation: ConversationSummary }>(await patch(a.accessToken, { mute: 'off', pinned: false }))
    expect(off.conversation).toMatchObject({ mutedUntil: null, pinned: false, archived: true })
    for (const body of [{}, { mute: 'forever' }, { pinned: 'yes' }]) expect((await patch(a.accessToken, body)).status).toBe(400)
    expect((await patch(outsider.accessToken, { pinned: true })).status).toBe(404)
    other.close()
  })
})

describe('devices and password (issue 13)', () => {
  it('lists sessions with names people recognise; a password change signs the others out and the new password works', async ({ expect }) => {
    const handle = uniqueHandle()
    const first = await register(handle, 'first-password-1')
    const login = (password: string) =>
      api('/api/auth/login', { body: { handle, password }, headers: { 'user-agent': 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36' } })
    const second = await json<{ accessToken: string }>(await login('first-password-1'))
    const list = await json<{ sessions: { deviceName: string; current: boolean; place: string | null }[] }>(await api('/api/auth/sessions', { token: first.accessToken }))
    expect(list.sessions).toHaveLength(2)
    expect(list.sessions.find((s) => !s.current)!.deviceName).toBe('Chrome on Android')
    expect(list.sessions.every((s) => s.place === null)).toBe(true)

    expect((await api('/api/auth/password', { body: { currentPassword: 'wrong-password', newPassword: 'second-password-2' }, token: first.accessToken })).status).toBe(403)
    expect((await api('/api/auth/password', { body: { currentPassword: 'first-password-1', newPassword: 'short' }, token: first.accessToken })).status).toBe(400)
    const changed = await api('/api/auth/password', { body: { currentPassword: 'first-password-1', newPassword: 'second-password-2' }, token: first.accessToken })
    expect(await json(changed)).toEqual({ revoked: 1 })
    expect((await api('/api/me', { token: second.accessToken })).status).toBe(401)
    expect((await api('/api/me', { token: first.accessToken })).status).toBe(200)
    expect((await login('first-password-1')).status).toBe(401)
    expect((await login('second-password-2')).status).toBe(200)
  })
})
