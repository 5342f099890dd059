// Retention (worker/conversation/retention.ts): settings, the scheduled sweep, and what it erases.
import { createScheduledController, runInDurableObject } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { ConversationRoom } from '../worker/conversation/ConversationRoom'
import { DAY_MS, NOTHING_KEPT } from '../worker/conversation/retention'
import { getConversationRoom } from '../worker/durable-objects'
import { mediaKey } from '../worker/media/UploadSession'
import worker from '../worker/index'
import type { AuthResult, ClientMessage, ConversationSummary, MessageBody, SearchHit } from '../worker/shared/protocol'
import { api, createGroup, Device, historyOf, json, openChat, register, textSend } from './helpers'
import { png, upload } from './media-helpers'
import { drainOutbox } from './push-helpers'

function setRoomClock(conversationId: string, now: () => number) {
  return runInDurableObject<ConversationRoom, void>(getConversationRoom(env, conversationId), (room) => {
    room.now = now
  })
}

function keep(who: AuthResult, conversationId: string, keepDays: unknown) {
  return api(`/api/conversations/${conversationId}/retention`, { method: 'PUT', token: who.accessToken, body: { keepDays } })
}

/** The cron trigger, as the runtime fires it. */
async function cron(at: number) {
  await worker.scheduled(createScheduledController({ scheduledTime: at, cron: '*/15 * * * *' }), env)
}

async function directory(conversationId: string) {
  return env.DB.prepare('SELECT retention_days, history_expires_at FROM conversations WHERE id = ?').bind(conversationId).first<{ retention_days: number | null; history_expires_at: number | null }>()
}

async function logSeqs(conversationId: string) {
  return runInDurableObject(getConversationRoom(env, conversationId), (_r, state) => state.storage.sql.exec<{ seq: number }>('SELECT seq FROM events ORDER BY seq').toArray().map((r) => r.seq))
}

async function d1Seqs(conversationId: string) {
  const { results } = await (await historyOf(conversationId)).prepare('SELECT seq FROM messages WHERE conversation_id = ? ORDER BY seq').bind(conversationId).all<{ seq: number }>()
  return results.map((r) => r.seq)
}

describe('retention', () => {
  it('the sweep deletes exactly the expired front of the history: room log, shard, search index and blobs; the rest stays', async ({ expect }) => {
    const [a, b] = [await register(), await register()]
    const conv = await openChat(a, b)
    const now = Date.now()
    const old = now - 10 * DAY_MS
    await setRoomClock(conv.id, () => old)
    expect((await keep(a, conv.id, 7)).status).toBe(200)
    const da = await Device.connect(a)
    const word = `oldword${now.toString(36)}`
    await da.sendAndAck(textSend(conv.id, `${word} one`))
    const photo = await upload(a, 'image', png(4, 4))
    await da.sendAndAck({ type: 'send', conversationId: conv.id, clientMsgId: crypto.randomUUID(), body: { kind: 'image', mediaId: photo.id, width: 4, height: 4 } as MessageBody } satisfies ClientMessage)
    await setRoomClock(conv.id, () => now - 7 * DAY_MS - 1)
    const lastOld = await da.sendAndAck(textSend(conv.id, `${word} two`))
    await setRoomClock(conv.id, () => now - 7 * DAY_MS + 60_000)
    const firstKept = await da.sendAndAck(textSend(conv.id, `${word} recent`))
    await setRoomClock(conv.id, () => Date.now())
    await da.sendAndAck(textSend(conv.id, 'fresh'))
    await drainOutbox(conv.id)
    // The directory knows when the oldest event (the setting itself, 10 days ago) expires.
    expect(await directory(conv.id)).toEqual({ retention_days: 7, history_expires_at: old + 7 * DAY_MS })
    expect(await env.MEDIA.head(mediaKey(photo.id))).not.toBeNull()

    await cron(now)

    const kept = await logSeqs(conv.id)
    expect(kept[0]).toBe(firstKept.seq)
    expect(kept).toEqual(await d1Seqs(conv.id))
    expect(Math.min(...kept)).toBe(lastOld.seq + 1)
    expect(await env.MEDIA.head(mediaKey(photo.id))).toBeNull()
    expect(await env.DB.prepare('SELECT status FROM media WHERE id = ?').bind(photo.id).first('status')).toBe('deleted')
    const hits = await json<{ hits: SearchHit[] }>(await api(`/api/search?q=${word}`, { token: b.accessToken }))
    expect(hits.hits.map((h) => h.seq)).toEqual([firstKept.seq])
    expect((await api(`/api/media/${photo.id}`, { token: b.accessToken })).status).toBe(404)
    // Next due: when the oldest kept event turns 7 days old.
    expect((await directory(conv.id))!.history_expires_at).toBe(now - 7 * DAY_MS + 60_000 + 7 * DAY_MS)

    // A device that syncs from the start is told where history now begins.
    const db = await Device.connect(b)
    db.send({ type: 'sync', conversationId: conv.id, afterSeq: 0 })
    const page = await db.next('events')
    expect(page.historyFrom).toBe(lastOld.seq + 1)
    expect(page.events[0]!.seq).toBe(firstKept.seq)
    expect(JSON.stringify(page)).not.toContain(`${word} one`)
    // A second sweep at the same time finds nothing more to do.
    await cron(now)
    expect(await logSeqs(conv.id)).toEqual(kept)
    da.close()
    db.close()
  })

  it('seqs go on after the whole log expired, also when the room reads its state again', async ({ expect }) => {
    const [a, b] = [await register(), await register()]
    const conv = await openChat(a, b)
    const long = Date.now() - 30 * DAY_MS
    await setRoomClock(conv.id, () => long)
    expect((await keep(a, conv.id, 7)).status).toBe(200)
    const da = await Device.connect(a)
    const last = await da.sendAndAck(textSend(conv.id, 'gone soon'))
    await drainOutbox(conv.id)
    await cron(Date.now())
    expect(await logSeqs(conv.id)).toEqual([])
    expect(await d1Seqs(conv.id)).toEqual([])
    // Nothing kept, and nothing for the sweep to come back for.
    expect((await directory(conv.id))!.history_expires_at).toBe(NOTHING_KEPT)
    // As after an eviction: the room rebuilds its state from storage alone.
    await runInDurableObject<ConversationRoom, void>(getConversationRoom(env, conv.id), (room) => {
      ;(room as unknown as { loadState(): void }).loadState()
      room.now = () => Date.now()
    })
    expect((await da.sendAndAck(textSend(conv.id, 'a new start'))).seq).toBe(last.seq + 1)
    da.close()
  })

  it('keeps forever by default; a conversation that keeps forever is never swept', async ({ expect }) => {
    const [a, b] = [await register(), await register()]
    const conv = await openChat(a, b)
    await setRoomClock(conv.id, () => Date.now() - 400 * DAY_MS)
    const da = await Device.connect(a)
    await da.sendAndAck(textSend(conv.id, 'from long ago'))
    await drainOutbox(conv.id)
    const list = await json<{ conversations: ConversationSummary[] }>(await api('/api/conversations', { token: a.accessToken }))
    expect(list.conversations.find((c) => c.id === conv.id)).toMatchObject({ keepDays: null, retentionDays: 0 })
    expect((await directory(conv.id))!.history_expires_at).toBeNull()
    await cron(Date.now())
    expect(await logSeqs(conv.id)).toEqual([1])
    da.close()
  })

  it('in a group only admins change it; every member sees the change as an event; other values are refused', async ({ expect }) => {
    const [owner, m1, m2] = [await register(), await register(), await register()]
    const g = await createGroup(owner, [m1, m2])
    const d2 = await Device.connect(m2)
    const refused = await keep(m1, g.id, 7)
    expect(refused.status).toBe(403)
    expect((await json(refused)).error.code).toBe('NOT_ALLOWED')
    for (const bad of [30, '7', -1, 1.5]) {
      const r = await keep(owner, g.id, bad)
      expect(r.status).toBe(400)
      expect((await json(r)).error.code).toBe('BAD_REQUEST')
    }
    expect((await directory(g.id))!.retention_days).toBeNull()
    const ok = await keep(owner, g.id, 90)
    expect(ok.status).toBe(200)
    expect((await json<{ conversation: ConversationSummary }>(ok)).conversation).toMatchObject({ keepDays: 90, retentionDays: 90 })
    expect((await d2.next((m) => m.type === 'event' && m.event.type === 'retention')).type).toBe('event')
    expect((await directory(g.id))!.retention_days).toBe(90)
    // Back to the default.
    expect((await keep(owner, g.id, null)).status).toBe(200)
    expect((await directory(g.id))!.retention_days).toBeNull()
    // A stranger gets the answer for a missing conversation.
    expect((await keep(await register(), g.id, 7)).status).toBe(404)
    d2.close()
  })
})
