import { APP_CLOSE_CODE, ErrorCode } from '../../worker/shared/errors'
import { PROTOCOL_VERSION } from '../../worker/shared/limits'
import type { ClientMessage, ServerMessage } from '../../worker/shared/protocol'
import { api } from './api'
import { backoffDelay } from './backoff'

export type SocketStatus = 'connecting' | 'online' | 'offline'

const HEARTBEAT_MS = 10_000
/** No frame at all for this long means the connection is dead, even if the OS has not noticed. */
const SILENCE_LIMIT_MS = 25_000

export interface SocketOptions {
  /** Where it connects: the device's chat socket, or an open chat's writer socket (`/api/ws/conversations/:id`). */
  path?: string
  /** A close with the app code and one of these reasons ends it for good (onShutOut). */
  shutOutReasons?: string[]
  /** Gives up (onShutOut) after this many connects in a row that got no hello; the chat socket never does. */
  maxFailures?: number
  /** It went down and will try again: what was sent on it may need another way. */
  onDown?: () => void
}

/**
 * A WebSocket to the server: fetches a single-use ticket per connect, reconnects with backoff
 * and jitter, and detects silent stalls with a heartbeat. The device's chat socket is one; an
 * open chat's writer socket another.
 */
export class ChatSocket {
  /** This device's session, from the server's hello (calls address devices by it). */
  sessionId: string | null = null
  #status = $state<SocketStatus>('offline')
  #ws: WebSocket | null = null
  #attempt = 0
  #timer: ReturnType<typeof setTimeout> | null = null
  #heartbeat: ReturnType<typeof setInterval> | null = null
  #lastFrameAt = 0
  /** When the current outage began (0: connected). */
  #outageSince = 0
  #stopped = true
  /** Bumped by every connect, drop and stop, so an attempt that was overtaken while awaiting its ticket gives up. */
  #generation = 0
  /** Connects in a row that ended without a hello. */
  #failures = 0

  constructor(
    private readonly onMessage: (msg: ServerMessage) => void,
    private readonly onOpen: () => void,
    /** The server closed the socket for good (the account was suspended): no reconnecting. */
    private readonly onShutOut: () => void = () => undefined,
    private readonly options: SocketOptions = {},
  ) {}

  get status() {
    return this.#status
  }

  start() {
    if (!this.#stopped) return
    this.#stopped = false
    window.addEventListener('online', this.#nudge)
    window.addEventListener('offline', this.#drop)
    void this.#connect()
  }

  stop() {
    this.#stopped = true
    this.#generation++
    window.removeEventListener('online', this.#nudge)
    window.removeEventListener('offline', this.#drop)
    if (this.#timer) clearTimeout(this.#timer)
    this.#teardown()
    this.#status = 'offline'
  }

  /** Sends if connected; callers keep what must survive (the outbox) and resend on open. */
  send(msg: ClientMessage): boolean {
    if (this.#ws?.readyState !== WebSocket.OPEN) return false
    this.#ws.send(JSON.stringify(msg))
    return true
  }

  /** The browser says the network is gone: stop pretending; writes wait in the outbox. */
  #drop = () => {
    if (this.#stopped) return
    this.#generation++
    if (this.#timer) clearTimeout(this.#timer)
    this.#teardown()
    this.#status = 'offline'
  }

  #nudge = () => {
    if (this.#status === 'offline' && !this.#stopped) {
      if (this.#timer) clearTimeout(this.#timer)
      this.#attempt = 0
      void this.#connect()
    }
  }

  async #connect() {
    if (this.#stopped) return
    const generation = ++this.#generation
    this.#status = 'connecting'
    let ticket: string
    try {
      ticket = (await api<{ ticket: string }>('/api/ws/ticket', { method: 'POST' })).ticket
    } catch {
      if (generation === this.#generation) this.#retry()
      return
    }
    if (this.#stopped || generation !== this.#generation) return
    this.#teardown()
    const url = new URL(this.options.path ?? '/api/ws', location.href)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    url.searchParams.set('ticket', ticket)
    const ws = new WebSocket(url)
    this.#ws = ws
    ws.onmessage = (e) => {
      this.#lastFrameAt = Date.now()
      if (typeof e.data !== 'string' || e.data === 'pong') return
      let msg: ServerMessage
      try {
        msg = JSON.parse(e.data) as ServerMessage
      } catch {
        return
      }
      if (msg.type === 'hello') {
        if (msg.protocol !== PROTOCOL_VERSION) console.warn('server speaks protocol', msg.protocol)
        this.sessionId = msg.sessionId
        this.#failures = 0
        this.#attempt = 0
        this.#outageSince = 0
        this.#status = 'online'
        this.onOpen()
        return
      }
      this.onMessage(msg)
    }
    ws.onclose = (e) => {
      if (this.#ws !== ws) return
      const { shutOutReasons = [ErrorCode.SUSPENDED], maxFailures = Infinity } = this.options
      const failed = this.#status !== 'online' && ++this.#failures >= maxFailures
      if ((e.code === APP_CLOSE_CODE && shutOutReasons.includes(e.reason)) || failed) {
        this.stop()
        this.onShutOut()
        return
      }
      this.#teardown()
      this.#retry()
    }
    this.#lastFrameAt = Date.now()
    this.#heartbeat = setInterval(() => {
      if (Date.now() - this.#lastFrameAt > SILENCE_LIMIT_MS) {
        // A silent stall: drop the socket and start over.
        ws.close()
        this.#teardown()
        this.#retry()
        return
      }
      if (ws.readyState === WebSocket.OPEN) ws.send('ping')
    }, HEARTBEAT_MS)
  }

  #teardown() {
    if (this.#heartbeat) clearInterval(this.#heartbeat)
    this.#heartbeat = null
    const ws = this.#ws
    this.#ws = null
    if (ws && ws.readyState <= WebSocket.OPEN) {
      ws.onclose = null
      ws.close()
    }
  }

  #retry() {
    if (this.#stopped) return
    const wasOnline = this.#status === 'online'
    this.#status = 'offline'
    if (wasOnline) this.options.onDown?.()
    if (this.#timer) clearTimeout(this.#timer)
    this.#outageSince ||= Date.now()
    const delay = backoffDelay(this.#attempt++, Date.now() - this.#outageSince)
    this.#timer = setTimeout(() => void this.#connect(), delay)
  }
}
