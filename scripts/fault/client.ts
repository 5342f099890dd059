// A chat client for fault runs, with the PWA's guarantees: an outbox whose writes go out several
// at a time per conversation, in order (resent under the same clientMsgId), reconnect with backoff and jitter,
// a heartbeat that detects silent stalls, sync from the last contiguous seq, gap repair, dedup by seq.
import WebSocket from 'ws'
import type { AuthResult, ConversationEvent, ServerMessage } from '../../worker/shared/protocol'

export interface Held {
  senderId: string
  clientMsgId: string
  text: string | null
}

interface ConvState {
  held: Map<number, Held>
  contiguous: number
  outbox: { clientMsgId: string; text: string }[]
  /** Sent and unanswered, clientMsgId → ack timer; the PWA keeps up to 20, this client MAX_IN_FLIGHT. */
  inFlight: Map<string, NodeJS.Timeout>
  /** Every write in the order it was queued, to check that seqs follow it. */
  written: string[]
}

const MAX_IN_FLIGHT = 4

const HEARTBEAT_MS = 1_000
const SILENCE_MS = 4_000
const ACK_TIMEOUT_MS = 3_000
const HTTP_TIMEOUT_MS = 3_000

async function http<T>(url: string, init: RequestInit = {}): Promise<T> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(HTTP_TIMEOUT_MS) })
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${url}: ${res.status} ${await res.text()}`)
  return (await res.json()) as T
}

/** Retries a request through crashes and network faults until it succeeds or time runs out. */
export async function persist<T>(what: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (let attempt = 0; ; attempt++) {
    try {
      return await what()
    } catch (e) {
      if (Date.now() > deadline) throw e
      await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt) * Math.random() + 20))
    }
  }
}

export async function registerUser(baseUrl: string, handle: string): Promise<AuthResult> {
  return persist(() =>
    http<AuthResult>(`${baseUrl}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ handle, password: 'fault-password-1', displayName: handle }),
    }),
  )
}

/** Makes a and b friends and opens their chat; returns its id. */
export async function directChat(baseUrl: string, a: AuthResult, b: AuthResult): Promise<string> {
  const auth = (t: string) => ({ authorization: `Bearer ${t}`, 'content-type': 'application/json' })
  const req = await persist(() =>
    http<{ id?: string }>(`${baseUrl}/api/friends/requests`, { method: 'POST', headers: auth(a.accessToken), body: JSON.stringify({ handle: b.user.handle }) }),
  )
  if (req.id) await persist(() => http(`${baseUrl}/api/friends/requests/${req.id}/accept`, { method: 'POST', headers: auth(b.accessToken) }))
  const { conversation } = await persist(() =>
    http<{ conversation: { id: string } }>(`${baseUrl}/api/conversations`, { method: 'POST', headers: auth(a.accessToken), body: JSON.stringify({ peerHandle: b.user.handle }) }),
  )
  return conversation.id
}

export class FaultClient {
  /** clientMsgId → where the server said it stored it. */
  readonly acked = new Map<string, { conversationId: string; seq: number }>()
  readonly convs = new Map<string, ConvState>()
  reconnects = 0
  /** A retried write acked under a different seq than before: a duplicate in the making. */
  ackConflicts = 0
  private ws: WebSocket | null = null
  private stopped = false
  private lastFrameAt = 0
  private heartbeat: NodeJS.Timeout | null = null
  private attempt = 0
  private sent = 0

  constructor(
    private readonly baseUrl: string,
    readonly auth: AuthResult,
    conversationIds: string[],
  ) {
    for (const id of conversationIds) this.convs.set(id, { held: new Map(), contiguous: 0, outbox: [], inFlight: new Map(), written: [] })
  }

  get userId() {
    return this.auth.user.id
  }

  start() {
    this.stopped = false
    void this.connect()
  }

  stop() {
    this.stopped = true
    if (this.heartbeat) clearInterval(this.heartbeat)
    for (const c of this.convs.values()) this.land(c)
    this.ws?.terminate()
  }

  /** Queues a message; it goes out behind the ones queued before it, up to MAX_IN_FLIGHT unanswered. */
  write(conversationId: string) {
    const c = this.convs.get(conversationId)!
    const clientMsgId = crypto.randomUUID()
    c.outbox.push({ clientMsgId, text: `${this.auth.user.handle} #${++this.sent}` })
    c.written.push(clientMsgId)
    this.pump(conversationId)
  }

  /** Forgets what is in flight (the socket went): it is all sent again, in order. */
  private land(c: ConvState) {
    for (const timer of c.inFlight.values()) clearTimeout(timer)
    c.inFlight.clear()
  }

  pending(): number {
    let n = 0
    for (const c of this.convs.values()) n += c.outbox.length
    return n
  }

  private async connect() {
    if (this.stopped) return
    let ticket: string
    try {
      ticket = (
        await http<{ ticket: string }>(`${this.baseUrl}/api/ws/ticket`, { method: 'POST', headers: { authorization: `Bearer ${this.auth.accessToken}` } })
      ).ticket
    } catch {
      return this.retry()
    }
    const ws = new WebSocket(`${this.baseUrl.replace(/^http/, 'ws')}/api/ws?ticket=${encodeURIComponent(ticket)}`)
    this.ws = ws
    this.lastFrameAt = Date.now()
    ws.on('message', (data) => {
      this.lastFrameAt = Date.now()
      const text = data.toString()
      if (text === 'pong') return
      let msg: ServerMessage
      try {
        msg = JSON.parse(text) as ServerMessage
      } catch {
        return
      }
      this.onMessage(msg)
    })
    const down = () => {
      if (this.ws !== ws) return
      this.ws = null
      if (this.heartbeat) clearInterval(this.heartbeat)
      for (const c of this.convs.values()) this.land(c)
      this.retry()
    }
    ws.on('close', down)
    ws.on('error', down)
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastFrameAt > SILENCE_MS) {
        // Silence beyond the limit: the connection is dead even if TCP has not said so.
        ws.terminate()
        down()
        return
      }
      if (ws.readyState === WebSocket.OPEN) ws.send('ping')
    }, HEARTBEAT_MS)
  }

  private retry() {
    if (this.stopped) return
    this.reconnects++
    const delay = Math.random() * Math.min(1000, 50 * 2 ** this.attempt++)
    setTimeout(() => void this.connect(), delay)
  }

  private send(frame: object): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false
    this.ws.send(JSON.stringify(frame))
    return true
  }

  private sync(conversationId: string) {
    this.send({ type: 'sync', conversationId, afterSeq: this.convs.get(conversationId)!.contiguous })
  }

  private pump(conversationId: string) {
    const c = this.convs.get(conversationId)!
    for (const next of c.outbox) {
      if (c.inFlight.has(next.clientMsgId)) continue
      if (c.inFlight.size >= MAX_IN_FLIGHT) return
      if (!this.send({ type: 'send', conversationId, clientMsgId: next.clientMsgId, body: { kind: 'text', text: next.text } })) return
      c.inFlight.set(
        next.clientMsgId,
        setTimeout(() => {
          c.inFlight.delete(next.clientMsgId)
          this.pump(conversationId)
        }, ACK_TIMEOUT_MS),
      )
    }
  }

  private hold(conversationId: string, events: ConversationEvent[]) {
    const c = this.convs.get(conversationId)
    if (!c) return
    for (const e of events) {
      if (e.type !== 'message') continue
      c.held.set(e.seq, { senderId: e.senderId, clientMsgId: e.clientMsgId, text: e.body?.kind === 'text' ? e.body.text : null })
    }
    while (c.held.has(c.contiguous + 1)) c.contiguous++
    if (c.contiguous > 0) this.send({ type: 'delivered', conversationId, seq: c.contiguous })
  }

  private onMessage(msg: ServerMessage) {
    switch (msg.type) {
      case 'hello':
        this.attempt = 0
        for (const id of this.convs.keys()) {
          this.sync(id)
          this.pump(id)
        }
        return
      case 'ack': {
        const c = this.convs.get(msg.conversationId)
        if (!c) return
        const prev = this.acked.get(msg.clientMsgId)
        if (prev !== undefined && prev.seq !== msg.seq) this.ackConflicts++
        this.acked.set(msg.clientMsgId, { conversationId: msg.conversationId, seq: msg.seq })
        clearTimeout(c.inFlight.get(msg.clientMsgId))
        c.inFlight.delete(msg.clientMsgId)
        // The server does not echo a text message to the device that sent it: the ack is its copy.
        const sent = c.outbox.find((o) => o.clientMsgId === msg.clientMsgId)
        if (sent) this.hold(msg.conversationId, [{ type: 'message', conversationId: msg.conversationId, seq: msg.seq, senderId: this.userId, clientMsgId: msg.clientMsgId, serverTs: msg.serverTs, body: { kind: 'text', text: sent.text } }])
        c.outbox = c.outbox.filter((o) => o.clientMsgId !== msg.clientMsgId)
        this.pump(msg.conversationId)
        return
      }
      case 'event': {
        const c = this.convs.get(msg.event.conversationId)
        if (!c) return
        const gap = msg.event.seq > c.contiguous + 1
        this.hold(msg.event.conversationId, [msg.event])
        if (gap && msg.event.seq > c.contiguous + 1) this.sync(msg.event.conversationId)
        return
      }
      case 'events':
        this.hold(msg.conversationId, msg.events)
        if (msg.hasMore) this.sync(msg.conversationId)
        return
      case 'error': {
        // A refused write (rate limit, restart in progress) is simply retried after a pause.
        if (!msg.ref) return
        for (const [id, c] of this.convs) {
          if (c.inFlight.has(msg.ref)) {
            clearTimeout(c.inFlight.get(msg.ref))
            c.inFlight.delete(msg.ref)
            setTimeout(() => this.pump(id), 200)
          }
        }
        return
      }
      default:
        return
    }
  }
}

/** The authoritative log of a conversation, read by syncing a fresh socket from seq 0. */
export async function readLog(baseUrl: string, auth: AuthResult, conversationId: string): Promise<Map<number, Held>> {
  const client = new FaultClient(baseUrl, auth, [conversationId])
  client.start()
  const c = client.convs.get(conversationId)!
  const deadline = Date.now() + 60_000
  let last = -1
  let stableSince = Date.now()
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200))
    if (c.contiguous !== last) {
      last = c.contiguous
      stableSince = Date.now()
    } else if (c.contiguous > 0 && Date.now() - stableSince > 1500) break
  }
  client.stop()
  return c.held
}

export interface Verdict {
  conversations: number
  acknowledged: number
  stored: number
  lost: number
  duplicates: number
  gaps: number
  clientsDiverged: number
  d1Mismatches: number
  /** Acked writes of one client whose seqs do not follow the order it sent them in. */
  outOfOrder: number
}

/** Compares what was acknowledged and what every client holds with the server's log (and D1). */
export async function verify(baseUrl: string, clients: FaultClient[], options: { checkD1: boolean }): Promise<Verdict & { problems: string[] }> {
  const problems: string[] = []
  const verdict: Verdict = { conversations: 0, acknowledged: 0, stored: 0, lost: 0, duplicates: 0, gaps: 0, clientsDiverged: 0, d1Mismatches: 0, outOfOrder: 0 }
  const convIds = [...new Set(clients.flatMap((c) => [...c.convs.keys()]))]
  verdict.conversations = convIds.length
  const logs = new Map<string, Map<string, number>>()
  for (const id of convIds) {
    const members = clients.filter((c) => c.convs.has(id))
    const log = await readLog(baseUrl, members[0]!.auth, id)
    verdict.stored += log.size
    const lastSeq = Math.max(0, ...log.keys())
    for (let s = 1; s <= lastSeq; s++) if (!log.has(s)) (verdict.gaps++, problems.push(`${id}: gap at seq ${s}`))
    const bySender = new Map<string, number>()
    for (const [seq, h] of log) {
      const before = bySender.get(h.clientMsgId)
      if (before !== undefined) (verdict.duplicates++, problems.push(`${id}: ${h.clientMsgId} stored at ${before} and ${seq}`))
      bySender.set(h.clientMsgId, seq)
    }
    logs.set(id, bySender)
    for (const client of members) {
      const held = client.convs.get(id)!.held
      const same = held.size === log.size && [...log].every(([seq, h]) => held.get(seq)?.clientMsgId === h.clientMsgId)
      if (!same) (verdict.clientsDiverged++, problems.push(`${id}: ${client.auth.user.handle} holds ${held.size}, the server ${log.size}`))
    }
    if (options.checkD1) {
      const mismatches = await compareWithD1(baseUrl, members[0]!.auth, id, log)
      verdict.d1Mismatches += mismatches.length
      problems.push(...mismatches)
    }
  }
  // Nothing acknowledged is ever lost: every ack names where its message still is.
  for (const client of clients) {
    verdict.duplicates += client.ackConflicts
    for (const [clientMsgId, { conversationId, seq }] of client.acked) {
      verdict.acknowledged++
      if (logs.get(conversationId)?.get(clientMsgId) !== seq) (verdict.lost++, problems.push(`acked ${clientMsgId} (seq ${seq}) is not in the log`))
    }
    // Pipelined writes keep their order: seqs of one client's writes rise in the order they were written.
    for (const [conversationId, c] of client.convs) {
      const seqs = c.written.map((id) => client.acked.get(id)?.seq).filter((s): s is number => s !== undefined)
      for (let i = 1; i < seqs.length; i++) if (seqs[i]! < seqs[i - 1]!) (verdict.outOfOrder++, problems.push(`${conversationId}: ${client.auth.user.handle}'s writes acked out of order (${seqs[i - 1]} then ${seqs[i]})`))
    }
  }
  return { ...verdict, problems }
}

async function compareWithD1(baseUrl: string, auth: AuthResult, conversationId: string, log: Map<number, Held>): Promise<string[]> {
  // The room drains its outbox into D1 on alarms; give it time to catch up.
  const deadline = Date.now() + 30_000
  let rows = new Map<number, Held>()
  while (Date.now() < deadline) {
    rows = new Map()
    let before: number | null = null
    for (;;) {
      const url = `${baseUrl}/api/conversations/${conversationId}/messages?limit=100${before ? `&before=${before}` : ''}`
      const page: { events: ConversationEvent[]; nextBefore: number | null } = await persist(() => http(url, { headers: { authorization: `Bearer ${auth.accessToken}` } }))
      for (const e of page.events) if (e.type === 'message') rows.set(e.seq, { senderId: e.senderId, clientMsgId: e.clientMsgId, text: e.body?.kind === 'text' ? e.body.text : null })
      if (page.nextBefore === null) break
      before = page.nextBefore
    }
    if (rows.size >= log.size) break
    await new Promise((r) => setTimeout(r, 500))
  }
  const problems: string[] = []
  for (const [seq, h] of log) {
    const d = rows.get(seq)
    if (!d || d.clientMsgId !== h.clientMsgId || d.senderId !== h.senderId || d.text !== h.text) problems.push(`${conversationId}: D1 differs at seq ${seq}`)
  }
  if (rows.size !== log.size) problems.push(`${conversationId}: D1 has ${rows.size} messages, the room ${log.size}`)
  return problems
}

/** Keeps every client's outboxes topped up until stopped; returns the stopper. */
export function keepWriting(clients: FaultClient[], everyMs: number): () => Promise<void> {
  let on = true
  const loop = (async () => {
    while (on) {
      for (const c of clients) for (const id of c.convs.keys()) if (c.convs.get(id)!.outbox.length < 6) c.write(id)
      await new Promise((r) => setTimeout(r, everyMs))
    }
  })()
  return async () => {
    on = false
    await loop
  }
}

/** Waits until every outbox is empty (or a minute has passed), then lets last events land. */
export async function drain(clients: FaultClient[], settleMs: number) {
  const deadline = Date.now() + 60_000
  while (clients.some((c) => c.pending() > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200))
  await new Promise((r) => setTimeout(r, settleMs))
}
