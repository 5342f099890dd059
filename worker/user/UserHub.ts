import { DurableObject } from 'cloudflare:workers'
import type { Ack, RoomResult } from '../conversation/ConversationRoom'
import { getConversationRoom } from '../durable-objects'
import type { Env } from '../env'
import { APP_CLOSE_CODE, ErrorCode } from '../shared/errors'
import { ClientMessage, MAX_FRAME_BYTES, PROTOCOL_VERSION, type ConversationEvent, type ServerMessage } from '../shared/protocol'
import { assertNever } from '../shared/assert'

export interface DeviceAttachment {
  userId: string
  sessionId: string
}

/** Headers the Worker sets after verifying a ticket; never taken from the client. */
export const UPGRADE_HEADERS = {
  userId: 'x-ev-user-id',
  sessionId: 'x-ev-session-id',
  jti: 'x-ev-ticket-jti',
  exp: 'x-ev-ticket-exp',
} as const

function send(ws: WebSocket, msg: ServerMessage) {
  try {
    ws.send(JSON.stringify(msg))
  } catch {
    // The socket closed under us; the device syncs when it reconnects.
  }
}

/**
 * One per user: holds that user's device sockets (hibernating), routes their frames to
 * conversations and receives fan-out from ConversationRooms.
 */
export class UserHub extends DurableObject<Env> {
  private sql: SqlStorage
  /** Per-conversation chains keep one user's sends in the order their frames arrived. */
  private chains = new Map<string, Promise<unknown>>()

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('ping', 'pong'))
    void ctx.blockConcurrencyWhile(async () => {
      this.sql.exec('CREATE TABLE IF NOT EXISTS used_tickets (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL)')
    })
  }

  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get('upgrade') !== 'websocket') return new Response('expected websocket', { status: 426 })
    const userId = request.headers.get(UPGRADE_HEADERS.userId)
    const sessionId = request.headers.get(UPGRADE_HEADERS.sessionId)
    const jti = request.headers.get(UPGRADE_HEADERS.jti)
    const exp = Number(request.headers.get(UPGRADE_HEADERS.exp))
    if (!userId || !sessionId || !jti || !Number.isFinite(exp)) return new Response('bad upgrade', { status: 400 })

    // Single use: a replayed ticket finds its jti already spent.
    const nowS = Math.floor(Date.now() / 1000)
    this.sql.exec('DELETE FROM used_tickets WHERE exp < ?', nowS)
    const spent = this.sql.exec('SELECT 1 FROM used_tickets WHERE jti = ?', jti).toArray().length > 0
    if (spent) return new Response(JSON.stringify({ error: { code: ErrorCode.UNAUTHORIZED, message: 'ticket already used' } }), { status: 401 })
    this.sql.exec('INSERT INTO used_tickets (jti, exp) VALUES (?, ?)', jti, exp)

    const { 0: client, 1: server } = new WebSocketPair()
    this.ctx.acceptWebSocket(server, [sessionId])
    server.serializeAttachment({ userId, sessionId } satisfies DeviceAttachment)
    send(server, { type: 'hello', protocol: PROTOCOL_VERSION, userId, sessionId })
    return new Response(null, { status: 101, webSocket: client })
  }

  override async webSocketMessage(ws: WebSocket, data: string | ArrayBuffer) {
    const device = ws.deserializeAttachment() as DeviceAttachment
    if (typeof data !== 'string') return send(ws, { type: 'error', code: ErrorCode.BAD_REQUEST, message: 'binary frames are not accepted here' })
    if (data.length > MAX_FRAME_BYTES) return send(ws, { type: 'error', code: ErrorCode.PAYLOAD_TOO_LARGE, message: `frames are limited to ${MAX_FRAME_BYTES} bytes` })
    let json: unknown
    try {
      json = JSON.parse(data)
    } catch {
      return send(ws, { type: 'error', code: ErrorCode.BAD_REQUEST, message: 'frame is not valid JSON' })
    }
    const parsed = ClientMessage.safeParse(json)
    if (!parsed.success) {
      const ref = (json as { clientMsgId?: unknown } | null)?.clientMsgId
      const issue = parsed.error.issues[0]
      return send(ws, {
        type: 'error',
        code: ErrorCode.BAD_REQUEST,
        message: issue ? `${issue.path.join('.') || 'frame'}: ${issue.message}` : 'invalid frame',
        ...(typeof ref === 'string' ? { ref } : {}),
      })
    }
    await this.handle(ws, device, parsed.data)
  }

  private async handle(ws: WebSocket, device: DeviceAttachment, msg: ClientMessage) {
    switch (msg.type) {
      case 'send': {
        const room = getConversationRoom(this.env, msg.conversationId)
        const result = await this.inOrder(msg.conversationId, async (): Promise<RoomResult<Ack>> =>
          room.appendMessage(msg.conversationId, device.userId, msg.clientMsgId, msg.body),
        )
        if (!result.ok) return send(ws, { type: 'error', code: result.code, message: result.message, ref: msg.clientMsgId })
        const { conversationId, clientMsgId, seq, serverTs } = result.value
        return send(ws, { type: 'ack', conversationId, clientMsgId, seq, serverTs })
      }
      case 'sync': {
        const result = await getConversationRoom(this.env, msg.conversationId).eventsAfter(msg.conversationId, device.userId, msg.afterSeq, msg.limit)
        if (!result.ok) return send(ws, { type: 'error', code: result.code, message: result.message })
        return send(ws, { type: 'events', conversationId: msg.conversationId, ...result.value })
      }
      default:
        assertNever(msg)
    }
  }

  private inOrder<T>(key: string, task: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(key) ?? Promise.resolve()
    const next = prev.then(task, task)
    const tail = next.catch(() => undefined)
    this.chains.set(key, tail)
    void tail.then(() => {
      // Only forget the chain if no later task was queued behind this one.
      if (this.chains.get(key) === tail) this.chains.delete(key)
    })
    return next
  }

  /** Fan-out entry point: sends the event to every connected device; returns how many. */
  async deliver(event: ConversationEvent): Promise<number> {
    const sockets = this.ctx.getWebSockets()
    for (const ws of sockets) send(ws, { type: 'event', event })
    return sockets.length
  }

  /** Closes the sockets of a revoked session. */
  async closeSession(sessionId: string): Promise<void> {
    for (const ws of this.ctx.getWebSockets(sessionId)) ws.close(APP_CLOSE_CODE, ErrorCode.UNAUTHORIZED)
  }

  async connectedDevices(): Promise<number> {
    return this.ctx.getWebSockets().length
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string) {
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason)
    } catch {
      // Already closed.
    }
  }

  override async webSocketError(ws: WebSocket) {
    try {
      ws.close(1011, 'socket error')
    } catch {
      // Already closed.
    }
  }
}
