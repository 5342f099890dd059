import { APP_CLOSE_CODE, ErrorCode, errorBody } from '../shared/errors'
import { PROTOCOL_VERSION, WriterMessage } from '../shared/protocol'
import { attachmentOf } from '../ws/attachment'
import { errorFrame, parseFrame, send, type ErrorFrame } from '../ws/frames'
import { FrameBudget, type Spent } from '../ws/frame-budget'
import type { TicketClaims } from '../ws/upgrade'

export interface WriterAttachment {
  userId: string
  sessionId: string
  conversationId: string
}

/** A room asks a writer's hub for their sockets again after this long (the hub may have forgotten the room). */
export const WRITER_PEERS_TTL_MS = 30_000
/** Writer sockets one person may hold in one conversation (their devices' tabs with it open). */
export const MAX_WRITERS_PER_USER = 10

/** Sockets of two unknown sessions: every write reaches the writer's hub. */
const ALWAYS = ['', '']

const userTag = (userId: string) => `u:${userId}`
const sessionTag = (sessionId: string) => `s:${sessionId}`

/**
 * A conversation's writer sockets: a device with the chat open writes straight to the room (one
 * hop, like the platform floor) instead of through its UserHub. Events reach a member straight on
 * their writer sockets when those are all their open tabs (`directTo`), else through their hub.
 * The room must tell the writer's hub of a write only when another device of the writer is
 * online; the hub reports its devices (`peers`), versioned so a late report never wins.
 */
export class WriterSockets {
  private peers = new Map<string, { version: number; sockets: string[]; at: number }>()
  /** Each person's writer sockets here, read from the runtime once per change, not once per event. */
  private byUser = new Map<string, WebSocket[]>()

  constructor(
    private readonly ctx: DurableObjectState,
    private readonly budget: FrameBudget,
  ) {}

  /** Accepts a verified upgrade from a member (the room checked membership). */
  accept(claims: TicketClaims, conversationId: string): Response {
    if (this.ctx.getWebSockets(userTag(claims.userId)).length >= MAX_WRITERS_PER_USER) {
      return Response.json(errorBody(ErrorCode.RATE_LIMITED, `at most ${MAX_WRITERS_PER_USER} writer connections per person and conversation`), { status: 429 })
    }
    const { 0: client, 1: server } = new WebSocketPair()
    this.ctx.acceptWebSocket(server, [userTag(claims.userId), sessionTag(claims.sessionId)])
    this.byUser.delete(claims.userId)
    server.serializeAttachment({ userId: claims.userId, sessionId: claims.sessionId, conversationId } satisfies WriterAttachment)
    send(server, { type: 'hello', protocol: PROTOCOL_VERSION, userId: claims.userId, sessionId: claims.sessionId })
    return new Response(null, { status: 101, webSocket: client })
  }

  /**
   * The frame as a write of this socket's conversation, or null when it is refused (the client is
   * told, within its frame budget). `refused` counts refusals by code.
   */
  parse(ws: WebSocket, data: string | ArrayBuffer, now: number, refused: (code: ErrorCode) => void): { msg: WriterMessage; who: WriterAttachment } | null {
    const who = attachmentOf<WriterAttachment>(ws)
    const refuse = (error: ErrorFrame) => {
      refused(error.code)
      if (this.spent(ws, now) === 'ok') send(ws, error)
      return null
    }
    const parsed = parseFrame(WriterMessage, data)
    if (!parsed.ok) return refuse(parsed.error)
    const ref = 'clientMsgId' in parsed.msg ? parsed.msg.clientMsgId : undefined
    if (parsed.msg.conversationId !== who.conversationId) return refuse(errorFrame(ErrorCode.BAD_REQUEST, 'this socket writes to its own conversation only', ref))
    const verdict = this.spent(ws, now)
    if (verdict !== 'ok') {
      refused(ErrorCode.RATE_LIMITED)
      if (verdict === 'tell') send(ws, errorFrame(ErrorCode.RATE_LIMITED, 'too many frames: slow down', ref))
      return null
    }
    return { msg: parsed.msg, who }
  }

  private spent(ws: WebSocket, now: number): Spent {
    const verdict = this.budget.spend(ws, 1, now)
    if (verdict === 'close') ws.close(APP_CLOSE_CODE, ErrorCode.RATE_LIMITED)
    return verdict
  }

  /** A socket closed: its person's list is read again. */
  closed(ws: WebSocket) {
    this.byUser.delete(attachmentOf<WriterAttachment>(ws).userId)
  }

  /** Closes a person's writer sockets (one session's, or all); true when the person still has or had any. */
  close(userId: string, sessionId: string | null, reason: ErrorCode): boolean {
    const sockets = this.ctx.getWebSockets(userTag(userId))
    for (const ws of sockets) {
      if (sessionId && attachmentOf<WriterAttachment>(ws).sessionId !== sessionId) continue
      try {
        ws.close(APP_CLOSE_CODE, reason)
      } catch {
        // Already closed.
      }
    }
    if (!sessionId) this.peers.delete(userId)
    return sockets.length > 0
  }

  /**
   * The writer's hub reported its open sockets (a session per socket; null: it will not report
   * again, so deliver always); false when this room holds none of the person's writer sockets.
   */
  setPeers(userId: string, version: number, sockets: string[] | null): boolean {
    const open = this.ctx.getWebSockets(userTag(userId)).some((ws) => ws.readyState === WebSocket.OPEN)
    if (!open) {
      this.peers.delete(userId)
      return false
    }
    const known = this.peers.get(userId)
    if (!known || known.version < version) this.peers.set(userId, { version, sockets: sockets ?? ALWAYS, at: Date.now() })
    return true
  }

  /**
   * The writer sockets to give a member's event straight from the room, or null when their hub
   * must deliver it: the hub's report names at least one open chat socket, and each is matched by
   * a writer socket here of the same session, so every tab that would show the event has this
   * chat open. Only writer sockets of reported sessions get it (a socket whose session is not
   * online, such as a revoked one's, never does). A tab without the chat, or a report not in yet,
   * sends it through the hub. `ask`: the report is missing (a new instance) or older than
   * WRITER_PEERS_TTL_MS; the room asks the hub, once per TTL, and uses the hub meanwhile.
   */
  directTo(userId: string, now: number): { sockets: { ws: WebSocket; sessionId: string }[] | null; ask?: true } {
    let all = this.byUser.get(userId)
    if (!all) this.byUser.set(userId, (all = this.ctx.getWebSockets(userTag(userId))))
    if (all.length === 0) return { sockets: null }
    const known = this.peers.get(userId)
    if (!known || now - known.at > WRITER_PEERS_TTL_MS) {
      // Any real report wins over this placeholder; until one comes, the hub delivers.
      this.peers.set(userId, known ? { ...known, at: now } : { version: -1, sockets: ALWAYS, at: now })
      return { sockets: null, ask: true }
    }
    if (known.sockets.length === 0) return { sockets: null }
    const online = new Set(known.sockets)
    const writers: { ws: WebSocket; sessionId: string }[] = []
    const spare = new Map<string, number>()
    for (const ws of all) {
      if (ws.readyState !== WebSocket.OPEN) continue
      const { sessionId } = attachmentOf<WriterAttachment>(ws)
      if (!online.has(sessionId)) continue
      writers.push({ ws, sessionId })
      spare.set(sessionId, (spare.get(sessionId) ?? 0) + 1)
    }
    for (const session of known.sockets) {
      const n = spare.get(session) ?? 0
      if (n === 0) return { sockets: null }
      spare.set(session, n - 1)
    }
    return { sockets: writers }
  }

  /**
   * Which of a writer's hub sockets must get a write made on `sessionId`: none when that device is
   * the only one online with one socket (its ack is enough); all but that device's when other
   * devices are online; all when the device has more tabs (each shows its own). While the room does
   * not know, it delivers (`ask` then says to ask the hub, once per person and instance).
   */
  writerHub(userId: string, sessionId: string): { deliver: boolean; skipSession?: string; ask?: true | undefined } {
    let known = this.peers.get(userId)
    if (!known) {
      // Until the hub answers, deliver; any real report wins over this placeholder.
      this.peers.set(userId, { version: -1, sockets: ALWAYS, at: Date.now() })
      return { deliver: true, skipSession: sessionId, ask: true }
    }
    let ask: true | undefined
    if (Date.now() - known.at > WRITER_PEERS_TTL_MS) {
      // Asked again now and then: a hub that forgot this room (it restarted) reports again.
      known = { ...known, at: Date.now() }
      this.peers.set(userId, known)
      ask = true
    }
    const mine = known.sockets.filter((s) => s === sessionId).length
    if (mine > 1) return { deliver: true, ask }
    return known.sockets.length > mine ? { deliver: true, skipSession: sessionId, ask } : { deliver: false, ask }
  }
}
