/**
 * A writer socket that has not confirmed an event this long after the room sent it hands what it
 * owes to its hub, which resends and pushes as for any delivery. The hub writes down what is owed
 * after the same second (PERSIST_AFTER_MS), so a crash loses no more here than there.
 */
export const HANDOFF_AFTER_MS = 1_000

/** What one writer socket owes, as the hub's tracker holds it: everything in (confirmed, sent]. */
export interface Owed {
  userId: string
  sessionId: string
  confirmed: number
  sent: number
  /** Newest message from someone else among what was sent (0: none): what a push would announce. */
  pushSeq: number
  /** When the socket first owed a confirmation. */
  since: number
}

/**
 * Events a room sent straight to recipients' writer sockets (an open chat), until each socket
 * confirms or its debt goes to the hub. Two cursors per socket, in memory, no storage write.
 */
export class DirectDeliveries {
  private owed = new Map<WebSocket, Owed>()

  get size() {
    return this.owed.size
  }

  /** An event went to a writer socket; with nothing owed, the socket is assumed to hold everything before it (a gap makes it sync). */
  sent(ws: WebSocket, userId: string, sessionId: string, seq: number, pushable: boolean, now: number) {
    const o = this.owed.get(ws)
    if (!o) {
      this.owed.set(ws, { userId, sessionId, confirmed: seq - 1, sent: seq, pushSeq: pushable ? seq : 0, since: now })
      return
    }
    o.sent = Math.max(o.sent, seq)
    if (pushable) o.pushSeq = Math.max(o.pushSeq, seq)
  }

  /** The socket holds everything up to seq; progress shows it alive, so what it still owes waits from now (as in the hub). */
  confirm(ws: WebSocket, seq: number, now: number) {
    const o = this.owed.get(ws)
    if (!o || seq <= o.confirmed) return
    if (seq >= o.sent) return void this.owed.delete(ws)
    o.confirmed = seq
    o.since = now
  }

  /** What the socket still owes, taken out (it closed). */
  take(ws: WebSocket): Owed | undefined {
    const o = this.owed.get(ws)
    this.owed.delete(ws)
    return o
  }

  /** Debts older than HANDOFF_AFTER_MS, taken out for the hubs. */
  due(now: number): Owed[] {
    const out: Owed[] = []
    for (const [ws, o] of this.owed) {
      if (now - o.since < HANDOFF_AFTER_MS) continue
      this.owed.delete(ws)
      out.push(o)
    }
    return out
  }
}
