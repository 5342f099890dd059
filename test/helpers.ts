import { runInDurableObject } from 'cloudflare:test'
import { env, exports } from 'cloudflare:workers'
import type { ConversationRoom } from '../worker/conversation/ConversationRoom'
import { getConversationRoom } from '../worker/durable-objects'
import { historyDb } from '../worker/db/history'
import type { AuthResult, ClientMessage, ConversationSummary, Receipt, ServerMessage } from '../worker/shared/protocol'

const BASE = 'http://echovalley.test'
let counter = 0

export function uniqueHandle(prefix = 'user'): string {
  return `${prefix}_${Date.now().toString(36)}${(counter++).toString(36)}`.slice(0, 32)
}

export function randomAddress(): string {
  return `10.${Math.floor(Math.random() * 256)}.${Math.floor(Math.random() * 256)}.${1 + Math.floor(Math.random() * 254)}`
}

export async function api(path: string, init: { method?: string; body?: unknown; token?: string; headers?: Record<string, string> } = {}) {
  const raw = init.body instanceof Uint8Array || init.body instanceof ReadableStream || typeof init.body === 'string'
  // Each call from its own client address, so the per-address limits (sign-ups, sign-in tries)
  // meet only the tests that set one on purpose.
  const headers: Record<string, string> = { 'cf-connecting-ip': randomAddress(), ...init.headers }
  if (init.body !== undefined) headers['content-type'] ??= 'application/json'
  if (init.token) headers.authorization = `Bearer ${init.token}`
  return exports.default.fetch(
    new Request(`${BASE}${path}`, {
      method: init.method ?? (init.body !== undefined ? 'POST' : 'GET'),
      headers,
      body: init.body === undefined ? undefined : raw ? (init.body as BodyInit) : JSON.stringify(init.body),
    }),
  )
}

export async function json<T = any>(res: Response): Promise<T> {
  return (await res.json()) as T
}

export async function register(handle = uniqueHandle(), password = 'correct horse battery'): Promise<AuthResult> {
  const res = await api('/api/auth/register', { body: { handle, password, displayName: handle.toUpperCase() } })
  if (res.status !== 201) throw new Error(`register failed: ${res.status} ${await res.text()}`)
  return json<AuthResult>(res)
}

/** a asks, b accepts: the two are friends afterwards. */
export async function befriend(a: AuthResult, b: AuthResult) {
  const asked = await api('/api/friends/requests', { token: a.accessToken, body: { handle: b.user.handle } })
  if (asked.status === 200) return
  if (asked.status !== 201) throw new Error(`friend request failed: ${asked.status} ${await asked.text()}`)
  const { id } = await json<{ id: string }>(asked)
  const accepted = await api(`/api/friends/requests/${id}/accept`, { method: 'POST', token: b.accessToken })
  if (accepted.status !== 200) throw new Error(`accept failed: ${accepted.status} ${await accepted.text()}`)
}

/** Befriends the two (1:1 chats are between friends) and opens their chat. */
export async function openChat(a: AuthResult, b: AuthResult): Promise<ConversationSummary> {
  const existing = await api('/api/conversations', { token: a.accessToken, body: { peerHandle: b.user.handle } })
  if (existing.status === 200 || existing.status === 201) return (await json<{ conversation: ConversationSummary }>(existing)).conversation
  await befriend(a, b)
  const res = await api('/api/conversations', { token: a.accessToken, body: { peerHandle: b.user.handle } })
  if (res.status !== 201 && res.status !== 200) throw new Error(`open chat failed: ${res.status} ${await res.text()}`)
  return (await json<{ conversation: ConversationSummary }>(res)).conversation
}

export async function ticketFor(a: AuthResult): Promise<string> {
  const res = await api('/api/ws/ticket', { method: 'POST', token: a.accessToken })
  if (res.status !== 200) throw new Error(`ticket failed: ${res.status}`)
  return (await json<{ ticket: string }>(res)).ticket
}

export async function upgrade(ticket: string, headers: Record<string, string> = {}) {
  return exports.default.fetch(
    new Request(`${BASE}/api/ws?ticket=${encodeURIComponent(ticket)}`, { headers: { upgrade: 'websocket', ...headers } }),
  )
}

/** A writer socket's upgrade: an open chat's writes straight to its room. */
export async function writerUpgrade(ticket: string, conversationId: string) {
  return exports.default.fetch(
    new Request(`${BASE}/api/ws/conversations/${conversationId}?ticket=${encodeURIComponent(ticket)}`, { headers: { upgrade: 'websocket' } }),
  )
}

/** A connected device: collects every server frame and lets a test wait for one. */
export class Device {
  readonly frames: ServerMessage[] = []
  /** The session this device's socket belongs to (from its hello). */
  sessionId = ''
  private waiters: { match: (m: ServerMessage) => boolean; resolve: (m: ServerMessage) => void }[] = []

  constructor(readonly ws: WebSocket) {
    ws.addEventListener('message', (e) => {
      if (typeof e.data !== 'string' || e.data === 'pong') return
      const msg = JSON.parse(e.data) as ServerMessage
      this.frames.push(msg)
      this.waiters = this.waiters.filter((w) => (w.match(msg) ? (w.resolve(msg), false) : true))
    })
  }

  static async connect(a: AuthResult): Promise<Device> {
    const res = await upgrade(await ticketFor(a))
    if (res.status !== 101 || !res.webSocket) throw new Error(`upgrade failed: ${res.status}`)
    res.webSocket.accept()
    const device = new Device(res.webSocket)
    device.sessionId = (await device.next('hello')).sessionId
    return device
  }

  /** A writer socket of `a`'s session for one conversation (it answers writes with acks). */
  static async writer(a: AuthResult, conversationId: string): Promise<Device> {
    const res = await writerUpgrade(await ticketFor(a), conversationId)
    if (res.status !== 101 || !res.webSocket) throw new Error(`writer upgrade failed: ${res.status} ${await res.text()}`)
    res.webSocket.accept()
    const device = new Device(res.webSocket)
    device.sessionId = (await device.next('hello')).sessionId
    return device
  }

  send(msg: ClientMessage | string) {
    this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg))
  }

  /** Sends a write and waits for its ack; clients keep one write per conversation in flight. */
  async sendAndAck(msg: ClientMessage) {
    this.send(msg)
    const ref = (msg as { clientMsgId?: string }).clientMsgId
    return this.next((m) => m.type === 'ack' && m.clientMsgId === ref) as Promise<Extract<ServerMessage, { type: 'ack' }>>
  }

  /** Resolves with the first frame (already received or future) that matches. */
  next<T extends ServerMessage['type']>(
    match: ((m: ServerMessage) => boolean) | T,
    timeoutMs = 5000,
  ): Promise<Extract<ServerMessage, { type: T }>> {
    const pred = typeof match === 'string' ? (m: ServerMessage) => m.type === match : match
    const seen = this.frames.find(pred)
    if (seen) {
      this.frames.splice(this.frames.indexOf(seen), 1)
      return Promise.resolve(seen as Extract<ServerMessage, { type: T }>)
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for a frame; got ${JSON.stringify(this.frames)}`)), timeoutMs)
      this.waiters.push({
        match: pred,
        resolve: (m) => {
          clearTimeout(timer)
          this.frames.splice(this.frames.indexOf(m), 1)
          resolve(m as Extract<ServerMessage, { type: T }>)
        },
      })
    })
  }

  /** Waits for a receipt about `userId`, alone or among a room's gathered `receipts`, that satisfies `pred`. */
  async receiptOf(userId: string, pred: (r: Receipt) => boolean = () => true, timeoutMs = 5000): Promise<Receipt> {
    const match = (r: Receipt) => r.userId === userId && pred(r)
    const frame = await this.next((m) => (m.type === 'receipt' && match(m.receipt)) || (m.type === 'receipts' && m.receipts.some(match)), timeoutMs)
    return frame.type === 'receipt' ? frame.receipt : (frame as Extract<ServerMessage, { type: 'receipts' }>).receipts.find(match)!
  }

  close() {
    this.ws.close(1000, 'done')
  }
}

export function textSend(conversationId: string, text: string, clientMsgId: string = crypto.randomUUID()): ClientMessage {
  return { type: 'send', conversationId, clientMsgId, body: { kind: 'text', text } }
}

/** The owner befriends everyone and creates a group with them. */
export async function createGroup(owner: AuthResult, others: AuthResult[], title = 'Book club'): Promise<ConversationSummary> {
  for (const o of others) await befriend(owner, o)
  const res = await api('/api/conversations/groups', { token: owner.accessToken, body: { title, memberIds: others.map((o) => o.user.id) } })
  if (res.status !== 201) throw new Error(`group: ${res.status} ${await res.text()}`)
  return (await json<{ conversation: ConversationSummary }>(res)).conversation
}

/** The shard recorded with a conversation: the name of the D1 binding that holds its history. */
export async function historyShardOf(conversationId: string): Promise<string> {
  const row = await env.DB.prepare('SELECT history_shard FROM conversations WHERE id = ?').bind(conversationId).first<{ history_shard: string }>()
  if (!row) throw new Error(`no conversation ${conversationId}`)
  return row.history_shard
}

/** The D1 database that holds a conversation's history. */
export async function historyOf(conversationId: string): Promise<D1Database> {
  return historyDb(env, await historyShardOf(conversationId))
}

/** Waits until the room has the hub's report of a person's sockets (it asks when their writer socket opens). */
export async function roomKnowsSockets(conversationId: string, userId: string, count: number) {
  for (let i = 0; i < 100; i++) {
    const known = await runInDurableObject<ConversationRoom, number>(getConversationRoom(env, conversationId), (room) => {
      const p = room['writers']['peers'].get(userId)
      return p && p.version >= 0 ? p.sockets.length : -1
    })
    if (known === count) return
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error(`the room never learned ${userId}'s ${count} sockets`)
}

/**
 * Alice and Bob in a direct chat, both online: Alice's chat socket, and Bob's chat socket with his
 * writer socket for the chat (it is on his screen), once the room knows of his one chat socket.
 */
export async function bobWithChatOpen() {
  const alice = await register()
  const bob = await register()
  const conv = await openChat(alice, bob)
  const a = await Device.connect(alice)
  const bobChat = await Device.connect(bob)
  const bobWriter = await Device.writer(bob, conv.id)
  await roomKnowsSockets(conv.id, bob.user.id, 1)
  return { alice, bob, conv, a, bobChat, bobWriter }
}
