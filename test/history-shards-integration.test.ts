// History on several D1 shards (worker/db/history.ts): placement, writes, list, search, recall.
import { runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { ConversationRoom } from '../worker/conversation/ConversationRoom'
import { historyDb, MAIN, placeConversation } from '../worker/db/history'
import { getConversationRoom } from '../worker/durable-objects'
import type { AuthResult, ConversationSummary, SearchHit } from '../worker/shared/protocol'
import { api, befriend, createGroup, Device, historyOf, historyShardOf, json, openChat, register, textSend } from './helpers'
import { drainOutbox } from './push-helpers'

const SHARDS = ['HISTORY_0', 'HISTORY_1']

/** Groups of `owner` with `others` until at least one sits on each shard (placement is by hash). */
async function groupsOnEveryShard(owner: AuthResult, others: AuthResult[]): Promise<Map<string, ConversationSummary>> {
  const found = new Map<string, ConversationSummary>()
  for (const o of others) await befriend(owner, o)
  for (let i = 0; found.size < SHARDS.length; i++) {
    if (i === 40) throw new Error('40 groups and still a shard without one')
    const res = await api('/api/conversations/groups', { token: owner.accessToken, body: { title: `g${i}`, memberIds: others.map((o) => o.user.id) } })
    const g = (await json<{ conversation: ConversationSummary }>(res)).conversation
    const shard = await historyShardOf(g.id)
    if (!found.has(shard)) found.set(shard, g)
  }
  return found
}

async function rowsIn(shard: string, conversationId: string) {
  const { results } = await historyDb(env, shard).prepare('SELECT seq, body, recalled_by FROM messages WHERE conversation_id = ? ORDER BY seq').bind(conversationId).all<{ seq: number; body: string | null; recalled_by: string | null }>()
  return results
}

async function search(who: AuthResult, q: string, limit: number, cursor?: string) {
  const res = await api(`/api/search?q=${encodeURIComponent(q)}&limit=${limit}${cursor ? `&cursor=${cursor}` : ''}`, { token: who.accessToken })
  if (res.status !== 200) throw new Error(`search: ${res.status} ${await res.text()}`)
  return json<{ hits: SearchHit[]; nextCursor: string | null }>(res)
}

async function setRoomClock(conversationId: string, now: () => number) {
  await runInDurableObject<ConversationRoom, void>(getConversationRoom(env, conversationId), (room) => {
    room.now = now
  })
}

describe('history shards', () => {
  it('places a conversation on a shard by a stable hash of its id, records it, and writes its history there only', async ({ expect }) => {
    const [a, b] = [await register(), await register()]
    const groups = await groupsOnEveryShard(a, [b])
    const dev = await Device.connect(a)
    for (const [shard, g] of groups) {
      expect(SHARDS).toContain(shard)
      // The hash of the id names the shard, every time it is asked.
      expect(placeConversation(env, g.id)).toBe(shard)
      expect(placeConversation(env, g.id)).toBe(shard)
      await dev.sendAndAck(textSend(g.id, `kept on ${shard}`))
      await drainOutbox(g.id)
      expect((await rowsIn(shard, g.id)).map((r) => JSON.parse(r.body!).text)).toContain(`kept on ${shard}`)
      for (const other of [MAIN, ...SHARDS].filter((s) => s !== shard)) expect(await rowsIn(other, g.id)).toEqual([])
    }
    dev.close()
  })

  it('places new conversations on the shards HISTORY_SHARDS names, and refuses a name with no binding', async ({ expect }) => {
    const ids = Array.from({ length: 64 }, () => crypto.randomUUID())
    // Taking a full shard out of placement: new conversations all go to the other.
    expect(new Set(ids.map((id) => placeConversation({ ...env, HISTORY_SHARDS: 'HISTORY_1' }, id)))).toEqual(new Set(['HISTORY_1']))
    // Both configured shards get some of them.
    expect(new Set(ids.map((id) => placeConversation(env, id)))).toEqual(new Set(SHARDS))
    expect(() => placeConversation({ ...env, HISTORY_SHARDS: 'HISTORY_0,HISTORY_9' }, ids[0]!)).toThrow('HISTORY_9 has no D1 binding')
    expect(() => placeConversation({ ...env, HISTORY_SHARDS: 'JWT_SECRET' }, ids[0]!)).toThrow('has no D1 binding')
  })

  it('follows the shard recorded with the conversation, not the hash: a legacy conversation keeps its history in the main database', async ({ expect }) => {
    const [a, b] = [await register(), await register()]
    // A direct chat's room first loads with its first message, so the record can change before.
    const g = await openChat(a, b)
    // As a conversation created before sharding: its record says the main database.
    await env.DB.prepare(`UPDATE conversations SET history_shard = 'DB' WHERE id = ?`).bind(g.id).run()
    const dev = await Device.connect(a)
    await dev.sendAndAck(textSend(g.id, 'an old-timer'))
    await drainOutbox(g.id)
    expect((await rowsIn(MAIN, g.id)).map((r) => JSON.parse(r.body!).text)).toContain('an old-timer')
    for (const s of SHARDS) expect(await rowsIn(s, g.id)).toEqual([])
    // History pages, the list and search read it there.
    const page = await json<{ events: { body: { text: string } }[] }>(await api(`/api/conversations/${g.id}/messages`, { token: b.accessToken }))
    expect(page.events.map((e) => e.body?.text)).toContain('an old-timer')
    const list = await json<{ conversations: ConversationSummary[] }>(await api('/api/conversations', { token: b.accessToken }))
    expect(list.conversations.find((c) => c.id === g.id)).toMatchObject({ unread: 1, preview: { text: 'an old-timer' } })
    expect((await search(b, 'old-timer', 10)).hits.map((h) => h.conversationId)).toEqual([g.id])
    dev.close()
  })

  it('lists unread counts and previews of conversations on different shards', async ({ expect }) => {
    const [a, b] = [await register(), await register()]
    const groups = await groupsOnEveryShard(a, [b])
    const dev = await Device.connect(b)
    const counts = new Map<string, number>()
    let n = 1
    for (const [shard, g] of groups) {
      for (let i = 0; i < n; i++) await dev.sendAndAck(textSend(g.id, `${shard} #${i}`))
      counts.set(g.id, n++)
    }
    for (const g of groups.values()) await drainOutbox(g.id)
    const list = await json<{ conversations: ConversationSummary[] }>(await api('/api/conversations', { token: a.accessToken }))
    for (const [shard, g] of groups) {
      const row = list.conversations.find((c) => c.id === g.id)!
      expect(row.unread).toBe(counts.get(g.id))
      expect(row.preview?.text).toBe(`${shard} #${counts.get(g.id)! - 1}`)
    }
    dev.close()
  })

  it('searches across shards: one merged page by time with a stable cursor, only where the viewer is a member, from when they joined', async ({ expect }) => {
    const [a, b, c] = [await register(), await register(), await register()]
    const word = `zebra${Date.now().toString(36)}`
    const groups = [...(await groupsOnEveryShard(a, [b])).values()]
    const devB = await Device.connect(b)
    const expected: { conversationId: string; seq: number; serverTs: number }[] = []
    // Two conversations on different shards at the same instants: ties in time are ordered by conversation, then seq.
    const t = Date.now() - 60_000
    for (const g of groups) await setRoomClock(g.id, () => t)
    for (const g of groups) {
      for (let i = 0; i < 3; i++) {
        const ack = await devB.sendAndAck(textSend(g.id, `${word} ${i} in ${g.title}`))
        expect(ack.serverTs).toBe(t)
        expect(await devB.sendAndAck(textSend(g.id, 'no keyword here'))).toBeTruthy()
        expected.push({ conversationId: g.id, seq: ack.seq, serverTs: ack.serverTs })
      }
    }
    for (const g of groups) await setRoomClock(g.id, () => Date.now())
    const late = await devB.sendAndAck(textSend(groups[0]!.id, `${word} later`))
    expected.push({ conversationId: groups[0]!.id, seq: late.seq, serverTs: late.serverTs })

    // A group a joins late: only what was written after the join is theirs to find.
    const devC = await Device.connect(c)
    const joinedLate = await createGroup(c, [b], 'joined late')
    await devC.sendAndAck(textSend(joinedLate.id, `${word} before a joined`))
    await befriend(c, a)
    expect((await api(`/api/conversations/${joinedLate.id}/members`, { token: c.accessToken, body: { userIds: [a.user.id] } })).status).toBe(201)
    const after = await devC.sendAndAck(textSend(joinedLate.id, `${word} after a joined`))
    expected.push({ conversationId: joinedLate.id, seq: after.seq, serverTs: after.serverTs })
    // A group without a: never found.
    const elsewhere = (await json<{ conversation: ConversationSummary }>(await api('/api/conversations/groups', { token: c.accessToken, body: { title: 'not a member', memberIds: [b.user.id] } }))).conversation
    await devC.sendAndAck(textSend(elsewhere.id, `${word} not for a`))
    for (const id of [...groups.map((g) => g.id), joinedLate.id, elsewhere.id]) await drainOutbox(id)

    expected.sort((x, y) => y.serverTs - x.serverTs || (x.conversationId < y.conversationId ? 1 : x.conversationId > y.conversationId ? -1 : 0) || y.seq - x.seq)
    const whole = await search(a, word, 50)
    expect(whole.hits.map(({ conversationId, seq, serverTs }) => ({ conversationId, seq, serverTs }))).toEqual(expected)
    expect(whole.nextCursor).toBeNull()
    expect(new Set(await Promise.all(whole.hits.map((h) => historyShardOf(h.conversationId)))).size).toBeGreaterThanOrEqual(2)

    // Pages of two walk the same order: nothing skipped at the ties, nothing repeated.
    const paged: SearchHit[] = []
    let cursor: string | undefined
    do {
      const page = await search(a, word, 2, cursor)
      paged.push(...page.hits)
      cursor = page.nextCursor ?? undefined
    } while (cursor)
    expect(paged.map((h) => `${h.conversationId}:${h.seq}`)).toEqual(expected.map((h) => `${h.conversationId}:${h.seq}`))

    // Within one conversation, one shard answers.
    const one = await json<{ hits: SearchHit[] }>(await api(`/api/search?q=${word}&conversationId=${groups[1]!.id}`, { token: a.accessToken }))
    expect(one.hits.map((h) => h.seq)).toEqual(expected.filter((h) => h.conversationId === groups[1]!.id).map((h) => h.seq))
    // A malformed cursor is refused, not guessed at.
    expect((await api(`/api/search?q=${word}&cursor=12;drop`, { token: a.accessToken })).status).toBe(400)
    devB.close()
    devC.close()
  })

  it('a recall on a sharded conversation erases the text from its shard and its search index', async ({ expect }) => {
    const [a, b] = [await register(), await register()]
    const groups = await groupsOnEveryShard(a, [b])
    const dev = await Device.connect(a)
    const word = `secret${Date.now().toString(36)}`
    for (const [shard, g] of groups) {
      const ack = await dev.sendAndAck(textSend(g.id, `${word} on ${shard}`))
      await drainOutbox(g.id)
      expect((await search(b, `${word} on ${shard}`, 10)).hits).toHaveLength(1)
      await dev.sendAndAck({ type: 'recall', conversationId: g.id, clientMsgId: crypto.randomUUID(), targetSeq: ack.seq })
      await drainOutbox(g.id)
      const rows = await rowsIn(shard, g.id)
      expect(JSON.stringify(rows)).not.toContain(word)
      expect(rows.find((r) => r.seq === ack.seq)).toMatchObject({ body: null, recalled_by: a.user.id })
      expect(await historyOf(g.id)).toBe(historyDb(env, shard))
      expect((await search(b, word, 10)).hits.filter((h) => h.conversationId === g.id)).toEqual([])
    }
    dev.close()
  })
})
