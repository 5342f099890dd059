// One load-generator connection. It speaks echovalley's frames, which the reference server also
// speaks, and behaves like a real client: one write per conversation in flight, a `delivered`
// cursor after each event (product only), sync by pages.
import { randomUUID } from 'node:crypto'
import WebSocket from 'ws'

/** A server that stops answering fails the scenario instead of hanging the run. */
const TIMEOUT_MS = 30_000

interface EventFrame {
  type: 'event'
  event: { type: string; conversationId: string; seq: number; senderId: string; clientMsgId: string }
}
interface EventsFrame {
  type: 'events'
  conversationId: string
  events: { seq: number }[]
  hasMore: boolean
  lastSeq: number
}

/** What every workload drives; BenchClient speaks echovalley's frames, bench/prosody.ts XMPP. */
export interface LoadClient {
  /** Called with every live message: (conversationId, seq, clientMsgId, receivedAt = performance.now()). */
  onEvent: ((conversationId: string, seq: number, clientMsgId: string, at: number) => void) | null
  /** Sends one text message; resolves when the server has durably accepted it (-1 when refused). */
  send(conversationId: string, text: string, clientMsgId?: string): Promise<number>
  /** Fetches every message after `afterSeq` (0: all), page by page; resolves with how many arrived. */
  syncAll(conversationId: string, afterSeq: number): Promise<number>
  /** Opens what writing to a conversation needs, as a client does when a chat opens (not timed). */
  ready?(conversationId: string): Promise<void>
  close(): void
}

export class BenchClient implements LoadClient {
  private acks = new Map<string, (seq: number) => void>()
  private pages: ((f: EventsFrame) => void)[] = []
  /** The last error frame not tied to a send, to explain a sync that never answers. */
  private lastError = ''
  /** Called with every live event: (conversationId, seq, clientMsgId, receivedAt). */
  onEvent: ((conversationId: string, seq: number, clientMsgId: string, at: number) => void) | null = null

  private constructor(
    private ws: WebSocket,
    private confirmDelivery: boolean,
  ) {
    ws.on('message', (data) => {
      const at = performance.now()
      const text = data.toString()
      if (text === 'pong') return
      const msg = JSON.parse(text) as { type: string } & Record<string, unknown>
      if (msg.type === 'ack') {
        const done = this.acks.get(msg.clientMsgId as string)
        this.acks.delete(msg.clientMsgId as string)
        done?.(msg.seq as number)
      } else if (msg.type === 'event') {
        const e = (msg as unknown as EventFrame).event
        this.onEvent?.(e.conversationId, e.seq, e.clientMsgId, at)
        if (this.confirmDelivery) this.confirm(e.conversationId, e.seq)
      } else if (msg.type === 'events') {
        this.pages.shift()?.(msg as unknown as EventsFrame)
      } else if (msg.type === 'error' && !msg.ref) {
        this.lastError = JSON.stringify(msg)
      } else if (msg.type === 'error' && msg.ref) {
        const done = this.acks.get(msg.ref as string)
        this.acks.delete(msg.ref as string)
        done?.(-1)
      }
    })
  }

  private confirmTimers = new Map<string, { seq: number; timer: NodeJS.Timeout }>()

  /** Confirms delivery as the PWA does: the newest seq of a conversation, 150 ms after the first unconfirmed event. */
  confirm(conversationId: string, seq: number) {
    const pending = this.confirmTimers.get(conversationId)
    if (pending) {
      pending.seq = Math.max(pending.seq, seq)
      return
    }
    const entry = {
      seq,
      timer: setTimeout(() => {
        this.confirmTimers.delete(conversationId)
        if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'delivered', conversationId, seq: entry.seq }))
      }, 150),
    }
    this.confirmTimers.set(conversationId, entry)
  }

  static open(url: string, confirmDelivery: boolean): Promise<BenchClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false })
      const client = new BenchClient(ws, confirmDelivery)
      ws.once('error', reject)
      const timer = setTimeout(() => (ws.terminate(), reject(new Error(`no hello within ${TIMEOUT_MS} ms`))), TIMEOUT_MS)
      ws.on('message', function hello(data) {
        if (data.toString().includes('"hello"')) {
          ws.off('message', hello)
          clearTimeout(timer)
          resolve(client)
        }
      })
    })
  }

  /** Sends one message; resolves with its seq when acked (-1 when refused). */
  send(conversationId: string, text: string, clientMsgId: string = randomUUID()): Promise<number> {
    return new Promise((resolve) => {
      this.acks.set(clientMsgId, resolve)
      this.ws.send(JSON.stringify({ type: 'send', conversationId, clientMsgId, body: { kind: 'text', text } }))
    })
  }

  /** Marks everything up to seq as read, as an open chat does. */
  read(conversationId: string, seq: number) {
    this.ws.send(JSON.stringify({ type: 'read', conversationId, seq }))
  }

  /** Every event after `afterSeq`, page by page; resolves with how many arrived. */
  async syncAll(conversationId: string, afterSeq: number): Promise<number> {
    let got = 0
    let cursor = afterSeq
    // BENCH_SYNC_TRACE=1 prints each page's wait: a slow sync is one stalled page or all pages slow.
    const trace = process.env.BENCH_SYNC_TRACE ? [] as string[] : null
    for (;;) {
      const asked = performance.now()
      const page = await new Promise<EventsFrame>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`sync page after ${cursor} not answered within ${TIMEOUT_MS} ms ${this.lastError}`)), TIMEOUT_MS)
        this.pages.push((f) => (clearTimeout(timer), resolve(f)))
        this.ws.send(JSON.stringify({ type: 'sync', conversationId, afterSeq: cursor }))
      })
      got += page.events.length
      trace?.push(`${page.events.length}:${(performance.now() - asked).toFixed(0)}ms`)
      if (page.events.length) cursor = page.events[page.events.length - 1]!.seq
      if (!page.hasMore) {
        if (trace) console.log(`  sync pages after ${afterSeq} (events:wait): ${trace.join(' ')}`)
        return got
      }
    }
  }

  close() {
    this.ws.close()
  }
}

/**
 * A floor user: one socket per conversation, straight into that conversation's object (the floor
 * has no per-user hub). Opens the first at connect and others when first used.
 */
export class FloorClient implements LoadClient {
  private sockets = new Map<string, Promise<BenchClient>>()
  onEvent: LoadClient['onEvent'] = null

  private constructor(
    private readonly base: string,
    private readonly userId: string,
  ) {}

  static async open(base: string, userId: string, firstConversation: string): Promise<FloorClient> {
    const client = new FloorClient(base, userId)
    await client.socket(firstConversation)
    return client
  }

  private socket(conversationId: string): Promise<BenchClient> {
    let s = this.sockets.get(conversationId)
    if (!s) {
      s = BenchClient.open(`${this.base}/ws?conv=${encodeURIComponent(conversationId)}&user=${encodeURIComponent(this.userId)}`, false).then((c) => {
        c.onEvent = (...args) => this.onEvent?.(...args)
        return c
      })
      this.sockets.set(conversationId, s)
    }
    return s
  }

  async send(conversationId: string, text: string, clientMsgId?: string): Promise<number> {
    return (await this.socket(conversationId)).send(conversationId, text, clientMsgId)
  }

  async syncAll(conversationId: string, afterSeq: number): Promise<number> {
    return (await this.socket(conversationId)).syncAll(conversationId, afterSeq)
  }

  close() {
    for (const s of this.sockets.values()) void s.then((c) => c.close())
  }
}

/**
 * An echovalley device as the PWA runs it: its chat socket (deliveries, receipts, sync) plus a
 * writer socket per conversation it writes to, opened when first used, which takes the writes
 * straight to the conversation's room.
 */
export class WriterClient implements LoadClient {
  private writers = new Map<string, Promise<BenchClient>>()

  constructor(
    private readonly chat: BenchClient,
    private readonly openWriter: (conversationId: string) => Promise<BenchClient>,
  ) {}

  get onEvent() {
    return this.chat.onEvent
  }

  set onEvent(f: LoadClient['onEvent']) {
    this.chat.onEvent = f
  }

  private writer(conversationId: string): Promise<BenchClient> {
    let w = this.writers.get(conversationId)
    if (!w) {
      w = this.openWriter(conversationId).then((c) => {
        // The room sends an open chat's events on its writer socket (when it is the person's only
        // tab): the PWA shows them and confirms on both sockets.
        c.onEvent = (conv, seq, clientMsgId, at) => {
          this.chat.onEvent?.(conv, seq, clientMsgId, at)
          this.chat.confirm(conv, seq)
        }
        return c
      })
      this.writers.set(conversationId, w)
    }
    return w
  }

  async send(conversationId: string, text: string, clientMsgId?: string): Promise<number> {
    return (await this.writer(conversationId)).send(conversationId, text, clientMsgId)
  }

  async ready(conversationId: string): Promise<void> {
    await this.writer(conversationId)
  }

  syncAll(conversationId: string, afterSeq: number): Promise<number> {
    return this.chat.syncAll(conversationId, afterSeq)
  }

  close() {
    this.chat.close()
    for (const w of this.writers.values()) void w.then((c) => c.close())
  }
}
