import { EVENT_COLUMNS, type EventRow } from '../conversation/event-rows'
import type { Env } from '../env'
import { log } from '../ops/log'
import type { SearchHit } from '../shared/protocol'
import { byShard, historyDb } from './history'

/**
 * Reads of history, which lives on the conversation's shard. Membership and blocks live in the
 * main database, so they are read there first and handed to each shard as JSON (json_each), one
 * statement per shard, the shards in parallel.
 */

export interface Placed {
  id: string
  shard: string
}

/** A shard that fails (down, or a binding missing) costs its conversations' counts and hits, not the whole answer. */
function shardDown(env: Env, e: unknown) {
  log(env, 'error', 'history shard read failed', { error: String(e) })
}

/**
 * One conversation's figures for the list, from its shard: the viewer's read cursor (the larger of
 * the shard's and the directory's, handed in as `readSeq`), the unread count after it, the newest
 * visible message (as JSON) and the newest event's seq and time (the directory's copies are coarse).
 */
export interface Tally {
  readSeq: number
  unread: number
  preview: string | null
  lastSeq: number
  lastActivityAt: number | null
}

/** Read cursors, unread counts, previews and the newest events of a viewer's conversations, one statement per shard. */
export async function listTallies(
  env: Env,
  viewerId: string,
  conversations: (Placed & { readSeq: number; joinedSeq: number })[],
  hiddenSenders: string[],
): Promise<Map<string, Tally>> {
  const out = new Map<string, Tally>()
  await Promise.all(
    [...byShard(conversations, (c) => c.shard)].map(async ([shard, list]) => {
      const { results } = await historyDb(env, shard)
        .prepare(
          `WITH wanted AS (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS read_seq, json_extract(value, '$[2]') AS joined_seq FROM json_each(?1)),
                hidden AS (SELECT value AS id FROM json_each(?3)),
                cur AS (SELECT w.id, w.joined_seq, max(w.read_seq, coalesce((SELECT rc.read_seq FROM read_cursors rc WHERE rc.conversation_id = w.id AND rc.user_id = ?2), 0)) AS read_seq FROM wanted w)
           SELECT c.id, c.read_seq,
             (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id AND m.seq > max(c.read_seq, c.joined_seq - 1)
                AND m.type IN ('message', 'call') AND m.sender_id != ?2 AND m.recalled_by IS NULL
                AND m.sender_id NOT IN (SELECT id FROM hidden)) AS unread,
             (SELECT json_object('seq', p.seq, 'type', p.type, 'senderId', p.sender_id, 'body', json(p.body), 'serverTs', p.created_at, 'recalled', p.recalled_by IS NOT NULL)
                FROM messages p WHERE p.conversation_id = c.id AND p.type IN ('message', 'call') AND p.seq >= c.joined_seq
                  AND p.sender_id NOT IN (SELECT id FROM hidden)
                ORDER BY p.seq DESC LIMIT 1) AS preview,
             n.seq AS last_seq, n.created_at AS last_activity_at
           FROM cur c
           LEFT JOIN messages n ON n.conversation_id = c.id AND n.seq = (SELECT max(x.seq) FROM messages x WHERE x.conversation_id = c.id)`,
        )
        .bind(JSON.stringify(list.map((c) => [c.id, c.readSeq, c.joinedSeq])), viewerId, JSON.stringify(hiddenSenders))
        .all<{ id: string; read_seq: number; unread: number; preview: string | null; last_seq: number | null; last_activity_at: number | null }>()
      for (const r of results) out.set(r.id, { readSeq: r.read_seq, unread: r.unread, preview: r.preview, lastSeq: r.last_seq ?? 0, lastActivityAt: r.last_activity_at })
    }).map((read) => read.catch((e: unknown) => shardDown(env, e))),
  )
  return out
}

/** A page of one conversation's history, newest first, from its shard. */
export async function historyRows(
  env: Env,
  at: Placed,
  q: { fromSeq: number; before: number | null; from: number | null; to: number | null; limit: number },
): Promise<EventRow[]> {
  const { results } = await historyDb(env, at.shard)
    .prepare(
      `SELECT ${EVENT_COLUMNS} FROM messages
       WHERE conversation_id = ?1 AND seq >= ?2 AND (?3 IS NULL OR seq < ?3)
         AND (?4 IS NULL OR created_at >= ?4) AND (?5 IS NULL OR created_at <= ?5)
       ORDER BY seq DESC LIMIT ?6`,
    )
    .bind(at.id, q.fromSeq, q.before, q.from, q.to, q.limit)
    .all<EventRow>()
  return results
}

/** Where a search page starts: after this hit in (serverTs, conversationId, seq) descending order. */
export interface SearchCursor {
  serverTs: number
  conversationId: string
  seq: number
}

/** FTS5's trigram tokenizer needs at least three characters; shorter queries scan with LIKE. */
const TRIGRAM_MIN = 3

/**
 * Keyword search over the conversations given (the viewer's, with the seq each joined at): each
 * shard that holds some answers with its newest `limit` after the cursor, and the merge keeps the
 * newest `limit` of those. Ties in time are broken by conversation and seq, so a cursor names
 * exactly one place in the order and no hit is skipped or repeated across pages.
 */
export async function searchHistory(
  env: Env,
  scope: (Placed & { joinedSeq: number })[],
  q: string,
  limit: number,
  after: SearchCursor | null,
): Promise<SearchHit[]> {
  const fts = [...q].length >= TRIGRAM_MIN
  const match = fts ? `"${q.replace(/"/g, '""')}"` : `%${q.replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`
  const from = fts
    ? `messages_fts f JOIN messages m ON m.rowid = f.rowid JOIN mine ON mine.id = m.conversation_id WHERE messages_fts MATCH ?5`
    : `messages m JOIN mine ON mine.id = m.conversation_id WHERE json_extract(m.body, '$.text') LIKE ?5 ESCAPE '\\'`
  const pages = await Promise.all(
    [...byShard(scope, (c) => c.shard)].map(async ([shard, list]) => {
      const { results } = await historyDb(env, shard)
        .prepare(
          `WITH mine AS (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS joined_seq FROM json_each(?1))
           SELECT m.conversation_id, m.seq, m.sender_id, json_extract(m.body, '$.text') AS text, m.created_at FROM ${from}
             AND m.seq >= mine.joined_seq AND m.recalled_by IS NULL AND m.type = 'message' AND m.kind = 'text'
             AND (?2 IS NULL OR (m.created_at, m.conversation_id, m.seq) < (?2, ?3, ?4))
           ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC LIMIT ?6`,
        )
        .bind(JSON.stringify(list.map((c) => [c.id, c.joinedSeq])), after?.serverTs ?? null, after?.conversationId ?? null, after?.seq ?? null, match, limit)
        .all<{ conversation_id: string; seq: number; sender_id: string; text: string; created_at: number }>()
      return results
    }).map((read) => read.catch((e: unknown) => (shardDown(env, e), []))),
  )
  return pages
    .flat()
    .sort((a, b) => b.created_at - a.created_at || (a.conversation_id < b.conversation_id ? 1 : a.conversation_id > b.conversation_id ? -1 : 0) || b.seq - a.seq)
    .slice(0, limit)
    .map((r) => ({ conversationId: r.conversation_id, seq: r.seq, senderId: r.sender_id, text: r.text, serverTs: r.created_at }))
}

export function searchCursor(hit: SearchHit): string {
  return `${hit.serverTs}.${hit.conversationId}.${hit.seq}`
}
