const cache = new WeakMap<WebSocket, unknown>()

/**
 * A hibernatable socket's attachment, deserialized once per socket object: each read is a
 * structured clone, and fan-out and every frame ask for it. Only for attachments set once at
 * accept (a later serializeAttachment would not be seen). After hibernation the sockets are new
 * objects, read again.
 */
export function attachmentOf<T>(ws: WebSocket): T {
  let a = cache.get(ws)
  if (a === undefined) cache.set(ws, (a = ws.deserializeAttachment()))
  return a as T
}
