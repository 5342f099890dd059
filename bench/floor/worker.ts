// The platform floor: the least a Durable Object chat can do per message on this runtime. One
// SQLite object per conversation holds its members' sockets (hibernation API), inserts each
// message as one row (deduplicated on sender and client id), acks after the write, and sends the
// event to the other sockets. No auth, no hubs, no receipts, no D1, no push: every echovalley
// figure is read against this one, measured on the same runtime in the same run. Binary frames
// (voice) are relayed to the other sockets as they come: the floor of a voice room.
import { DurableObject } from 'cloudflare:workers'

interface Env {
  ROOM: DurableObjectNamespace<FloorRoom>
}

interface Frame {
  type: string
  conversationId: string
  clientMsgId?: string
  body?: { text?: string }
  afterSeq?: number
}

const PAGE = 1000

export class FloorRoom extends DurableObject<Env> {
  private sql = this.ctx.storage.sql
  private lastSeq = 0

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql.exec(`CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, sender TEXT NOT NULL, client_msg_id TEXT NOT NULL, text TEXT, created_at INTEGER NOT NULL, UNIQUE (sender, client_msg_id))`)
    this.lastSeq = this.sql.exec<{ s: number | null }>('SELECT max(seq) AS s FROM events').one().s ?? 0
  }

  override async fetch(request: Request): Promise<Response> {
    const user = new URL(request.url).searchParams.get('user') ?? 'anonymous'
    const { 0: client, 1: server } = new WebSocketPair()
    this.ctx.acceptWebSocket(server)
    server.serializeAttachment(user)
    server.send(JSON.stringify({ type: 'hello' }))
    return new Response(null, { status: 101, webSocket: client })
  }

  override async webSocketMessage(ws: WebSocket, data: string | ArrayBuffer) {
    // A voice frame: the least a relay can do is send it to every other socket.
    if (typeof data !== 'string') {
      for (const other of this.ctx.getWebSockets()) if (other !== ws) other.send(data)
      return
    }
    if (data === 'ping') return
    const f = JSON.parse(data) as Frame
    const user = ws.deserializeAttachment() as string
    if (f.type === 'send' && f.clientMsgId) {
      const dup = this.sql.exec<{ seq: number; created_at: number }>('SELECT seq, created_at FROM events WHERE sender = ? AND client_msg_id = ?', user, f.clientMsgId).toArray()[0]
      if (dup) return ws.send(JSON.stringify({ type: 'ack', conversationId: f.conversationId, clientMsgId: f.clientMsgId, seq: dup.seq, serverTs: dup.created_at }))
      const seq = ++this.lastSeq
      const now = Date.now()
      this.sql.exec('INSERT INTO events (seq, sender, client_msg_id, text, created_at) VALUES (?, ?, ?, ?, ?)', seq, user, f.clientMsgId, f.body?.text ?? '', now)
      ws.send(JSON.stringify({ type: 'ack', conversationId: f.conversationId, clientMsgId: f.clientMsgId, seq, serverTs: now }))
      const event = JSON.stringify({ type: 'event', event: { type: 'message', conversationId: f.conversationId, seq, senderId: user, clientMsgId: f.clientMsgId, serverTs: now, body: { kind: 'text', text: f.body?.text ?? '' } } })
      for (const other of this.ctx.getWebSockets()) if (other !== ws) other.send(event)
      return
    }
    if (f.type === 'sync') {
      const rows = this.sql.exec<{ seq: number; sender: string; client_msg_id: string; text: string; created_at: number }>('SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?', f.afterSeq ?? 0, PAGE + 1).toArray()
      const events = rows.slice(0, PAGE).map((r) => ({ type: 'message', conversationId: f.conversationId, seq: r.seq, senderId: r.sender, clientMsgId: r.client_msg_id, serverTs: r.created_at, body: { kind: 'text', text: r.text } }))
      ws.send(JSON.stringify({ type: 'events', conversationId: f.conversationId, events, hasMore: rows.length > PAGE, lastSeq: this.lastSeq, receipts: [] }))
    }
  }
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url)
    if (url.pathname === '/api/health/live') return new Response('ok')
    const conv = url.searchParams.get('conv')
    if (url.pathname !== '/ws' || !conv || request.headers.get('upgrade') !== 'websocket') return new Response('not found', { status: 404 })
    return env.ROOM.get(env.ROOM.idFromName(conv)).fetch(request)
  },
} satisfies ExportedHandler<Env>
