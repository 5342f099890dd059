// The reference: the least a chat server can do on this hardware. A Node `ws` server that commits
// each message to SQLite (better-sqlite3, WAL, synchronous=FULL) before acking, fans out to every
// member's sockets, and serves sync pages. No auth, no receipts, no push: a floor, not a product.
// It speaks the same frames as echovalley (hello, send→ack, event, sync→events) so one client
// drives both.
//   npx tsx bench/reference-server.ts --port 9100 --db /tmp/ref.sqlite
import Database from 'better-sqlite3'
import { createServer } from 'node:http'
import { WebSocketServer, type WebSocket } from 'ws'

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1]! : fallback
}
const port = Number(arg('port', '9100'))
const db = new Database(arg('db', ':memory:'))
db.pragma('journal_mode = WAL')
db.pragma('synchronous = FULL')
db.exec(`
  CREATE TABLE IF NOT EXISTS members (conversation_id TEXT, user_id TEXT, PRIMARY KEY (conversation_id, user_id));
  CREATE TABLE IF NOT EXISTS events (conversation_id TEXT, seq INTEGER, sender_id TEXT, client_msg_id TEXT, body TEXT, created_at INTEGER,
    PRIMARY KEY (conversation_id, seq), UNIQUE (conversation_id, sender_id, client_msg_id));
`)
const insert = db.prepare('INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)')
const findDup = db.prepare('SELECT seq, created_at FROM events WHERE conversation_id = ? AND sender_id = ? AND client_msg_id = ?')
const lastSeq = db.prepare('SELECT coalesce(max(seq), 0) AS s FROM events WHERE conversation_id = ?')
const page = db.prepare('SELECT * FROM events WHERE conversation_id = ? AND seq > ? ORDER BY seq LIMIT ?')
const membersOf = db.prepare('SELECT user_id FROM members WHERE conversation_id = ?')
const addMember = db.prepare('INSERT OR IGNORE INTO members VALUES (?, ?)')

const sockets = new Map<string, Set<WebSocket>>()
const members = new Map<string, string[]>()
const seqs = new Map<string, number>()

function memberList(conversationId: string): string[] {
  let list = members.get(conversationId)
  if (!list) members.set(conversationId, (list = (membersOf.all(conversationId) as { user_id: string }[]).map((r) => r.user_id)))
  return list
}

const http = createServer((req, res) => {
  // POST /setup {conversationId, userIds}: the benchmark's stand-in for friends and groups.
  if (req.method === 'POST' && req.url === '/setup') {
    let body = ''
    req.on('data', (c) => (body += c))
    req.on('end', () => {
      const { conversationId, userIds } = JSON.parse(body) as { conversationId: string; userIds: string[] }
      db.transaction(() => userIds.forEach((u) => addMember.run(conversationId, u)))()
      members.delete(conversationId)
      res.end('{}')
    })
    return
  }
  res.writeHead(404).end()
})

const wss = new WebSocketServer({ server: http })
wss.on('connection', (ws, req) => {
  const userId = new URL(req.url ?? '/', 'http://x').searchParams.get('user') ?? ''
  const mine = sockets.get(userId) ?? new Set()
  sockets.set(userId, mine)
  mine.add(ws)
  ws.on('close', () => mine.delete(ws))
  ws.send(JSON.stringify({ type: 'hello', protocol: 1, userId, sessionId: 'ref' }))
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString()) as { type: string; conversationId: string; clientMsgId?: string; body?: unknown; afterSeq?: number; limit?: number }
    if (msg.type === 'send') {
      const list = memberList(msg.conversationId)
      if (!list.includes(userId)) return ws.send(JSON.stringify({ type: 'error', code: 'NOT_MEMBER', message: 'not a member', ref: msg.clientMsgId }))
      const dup = findDup.get(msg.conversationId, userId, msg.clientMsgId) as { seq: number; created_at: number } | undefined
      if (dup) return ws.send(JSON.stringify({ type: 'ack', conversationId: msg.conversationId, clientMsgId: msg.clientMsgId, seq: dup.seq, serverTs: dup.created_at }))
      const seq = (seqs.get(msg.conversationId) ?? (lastSeq.get(msg.conversationId) as { s: number }).s) + 1
      const now = Date.now()
      insert.run(msg.conversationId, seq, userId, msg.clientMsgId, JSON.stringify(msg.body), now) // committed (autocommit, fsync) before the ack
      seqs.set(msg.conversationId, seq)
      ws.send(JSON.stringify({ type: 'ack', conversationId: msg.conversationId, clientMsgId: msg.clientMsgId, seq, serverTs: now }))
      const frame = JSON.stringify({ type: 'event', event: { type: 'message', conversationId: msg.conversationId, seq, senderId: userId, clientMsgId: msg.clientMsgId, serverTs: now, body: msg.body } })
      for (const m of list) for (const s of sockets.get(m) ?? []) s.send(frame)
    } else if (msg.type === 'sync') {
      const limit = Math.min(msg.limit ?? 200, 200)
      const rows = page.all(msg.conversationId, msg.afterSeq ?? 0, limit + 1) as { seq: number; sender_id: string; client_msg_id: string; body: string; created_at: number }[]
      const events = rows.slice(0, limit).map((r) => ({ type: 'message', conversationId: msg.conversationId, seq: r.seq, senderId: r.sender_id, clientMsgId: r.client_msg_id, serverTs: r.created_at, body: JSON.parse(r.body) }))
      ws.send(JSON.stringify({ type: 'events', conversationId: msg.conversationId, events, hasMore: rows.length > limit, lastSeq: (lastSeq.get(msg.conversationId) as { s: number }).s, receipts: [] }))
    }
  })
})
http.listen(port, '127.0.0.1', () => console.log(`reference listening on ${port}`))
// Started by the benchmark; never outlives it by long.
setTimeout(() => process.exit(0), 60 * 60 * 1000).unref()
