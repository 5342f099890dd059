import { Hono } from 'hono'
import { searchCursor, searchHistory } from '../db/history-reads'
import type { AppEnv } from '../env'
import { requireAuth, validate } from '../http'
import { MessageSearchQuery } from '../shared/protocol'

export const searchRoutes = new Hono<AppEnv>().use(requireAuth).get('/', validate('query', MessageSearchQuery), async (c) => {
  const { userId } = c.get('auth')
  const { q, conversationId, limit, cursor } = c.req.valid('query')
  // Only what the viewer may read: their conversations, from when they joined (never recalled text).
  const { results: scope } = await c.env.DB.prepare(
    `SELECT mem.conversation_id AS id, mem.joined_seq AS joinedSeq, c.history_shard AS shard
     FROM members mem JOIN conversations c ON c.id = mem.conversation_id
     WHERE mem.user_id = ?1 AND (?2 IS NULL OR mem.conversation_id = ?2)`,
  )
    .bind(userId, conversationId ?? null)
    .all<{ id: string; joinedSeq: number; shard: string }>()
  const hits = scope.length ? await searchHistory(c.env, scope, q, limit, cursor ?? null) : []
  return c.json({ hits, nextCursor: hits.length === limit ? searchCursor(hits[hits.length - 1]!) : null })
})
