import type { z } from 'zod'
import { ErrorCode } from '../shared/errors'
import { MAX_FRAME_BYTES, type ServerMessage } from '../shared/protocol'

export type ErrorFrame = Extract<ServerMessage, { type: 'error' }>

/** Sends one frame; a socket that closed under us is let go (its client resends or syncs when it reconnects). */
export function send(ws: WebSocket, msg: ServerMessage | string) {
  try {
    ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg))
  } catch {
    // Closed under us.
  }
}

export function errorFrame(code: ErrorCode, message: string, ref?: string): ErrorFrame {
  return { type: 'error', code, message, ...(ref ? { ref } : {}) }
}

/**
 * An inbound frame checked against `schema` (chat sockets and writer sockets alike), or the error
 * that refuses it, naming the clientMsgId it carried when it had one.
 */
export function parseFrame<T>(schema: z.ZodType<T>, data: string | ArrayBuffer): { ok: true; msg: T } | { ok: false; error: ErrorFrame } {
  const refuse = (code: ErrorCode, message: string, ref?: string) => ({ ok: false as const, error: errorFrame(code, message, ref) })
  if (typeof data !== 'string') return refuse(ErrorCode.BAD_REQUEST, 'binary frames are not accepted here')
  if (data.length > MAX_FRAME_BYTES) return refuse(ErrorCode.PAYLOAD_TOO_LARGE, `frames are limited to ${MAX_FRAME_BYTES} bytes`)
  let json: unknown
  try {
    json = JSON.parse(data)
  } catch {
    return refuse(ErrorCode.BAD_REQUEST, 'frame is not valid JSON')
  }
  const parsed = schema.safeParse(json)
  if (parsed.success) return { ok: true, msg: parsed.data }
  const ref = (json as { clientMsgId?: unknown } | null)?.clientMsgId
  const issue = parsed.error.issues[0]
  return refuse(ErrorCode.BAD_REQUEST, issue ? `${issue.path.join('.') || 'frame'}: ${issue.message}` : 'invalid frame', typeof ref === 'string' ? ref : undefined)
}
