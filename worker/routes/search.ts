import { Hono } from 'hono'
import type { AppEnv } from '../env'
import { requireAuth, validate } from '../http'
import { MessageSearchQuery, type SearchHit } from '../shared/protocol'

/** FTS5's trigram tokenizer needs at least three characters; shorter queries scan with LIKE. */
const TRIGRAM_MIN = 3

interface HitRow {
  conversation_id: string
  seq: number
  sender_id: string
  text: string
  created_at: number
}

export const searchRoutes = new Hono<AppEnv>().use(requireAuth).get('/', validate('query', MessageSearchQuery), async (c) => {
  const { userId } = c.get('auth')
  const { q, conversationId, limit, cursor } = c.req.valid('query')
  const before = cursor ? Number(cursor) : null
  // Only what the viewer may read: their conversations, from when they joined, never recalled text.
  const scope = `JOIN members mem ON mem.conversation_id = m.conversation_id AND mem.user_id = ?1
    WHERE m.seq >= mem.joined_seq AND m.recalled_by IS NULL AND m.type = 'message' AND m.kind = 'text'
      AND (?2 IS NULL OR m.conversation_id = ?2) AND (?3 IS NULL OR m.created_at < ?3)`
  const select = `SELECT m.conversation_id, m.seq, m.sender_id, json_extract(m.body, '$.text') AS text, m.created_at`
  const stmt =
    [...q].length >= TRIGRAM_MIN
      ? c.env.DB.prepare(`${select} FROM messages_fts f JOIN messages m ON m.rowid = f.rowid ${scope} AND messages_fts MATCH ?4 ORDER BY m.created_at DESC LIMIT ?5`)
          .bind(userId, conversationId ?? null, before, `"${q.replace(/"/g, '""')}"`, limit)
      : c.env.DB.prepare(`${select} FROM messages m ${scope} AND json_extract(m.body, '$.text') LIKE ?4 ESCAPE '\\' ORDER BY m.created_at DESC LIMIT ?5`)
          .bind(userId, conversationId ?? null, before, `%${q.replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`, limit)
  const { results } = await stmt.all<HitRow>()
  const hits: SearchHit[] = results.map((r) => ({ conversationId: r.conversation_id, seq: r.seq, senderId: r.sender_id, text: r.text, serverTs: r.created_at }))
  return c.json({ hits, nextCursor: hits.length === limit ? String(hits[hits.length - 1]!.serverTs) : null })
})
