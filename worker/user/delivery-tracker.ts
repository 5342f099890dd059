/** A device that has not confirmed an event this long after it was sent gets it again. */
export const DELIVERY_TIMEOUT_MS = 5_000
/** Resends before what is unconfirmed is handed to the push queue. */
export const MAX_DELIVERY_RETRIES = 3
/** A delivery unconfirmed this long is written down, so a crash still ends in a push. */
export const PERSIST_AFTER_MS = 1_000

interface Track {
  /** The device holds every event up to here. */
  confirmed: number
  /** Newest seq sent to it. */
  sent: number
  /** Newest message from someone else among what it was sent (0: none): what a push would announce. */
  pushSeq: number
  /** Resends so far. */
  attempts: number
  /** When the device first owed a confirmation. */
  since: number
  /** When to resend, or push. */
  due: number
  /** pushSeq as last written to storage (null: not written). */
  stored: number | null
}

export interface Key {
  sessionId: string
  conversationId: string
}

/** How long a confirmation of something this hub did not send is kept, for a room's hand-off that may follow it. */
const EARLY_CONFIRM_MS = 30_000

const earlyKey = (sessionId: string, conversationId: string) => `${sessionId} ${conversationId}`

/**
 * What each device has yet to confirm, per conversation, as two cursors: the newest seq it was
 * sent and the newest it confirmed. What is owed is everything between them, read from the room's
 * log when it is resent, so a resend carries events as they are now. Pure and in memory: the hub
 * persists what `toPersist` names, at most once per tick.
 */
export class DeliveryTracker {
  private tracks = new Map<string, Map<string, Track>>()
  /** Confirmations that found no track (the room sent those events straight to a writer socket), by session and conversation. */
  private early = new Map<string, { seq: number; at: number }>()
  private removed: Key[] = []
  private count = 0

  get size() {
    return this.count
  }

  has(sessionId: string, conversationId: string): boolean {
    return this.tracks.get(sessionId)?.has(conversationId) ?? false
  }

  /** An event went to a device. A device with nothing owed is assumed to hold everything before it (a gap makes it sync). */
  sent(sessionId: string, conversationId: string, seq: number, pushable: boolean, now: number) {
    const t = this.tracks.get(sessionId)?.get(conversationId)
    if (!t) return this.start(sessionId, conversationId, { confirmed: seq - 1, sent: seq, pushSeq: pushable ? seq : 0, attempts: 0, since: now, due: now + DELIVERY_TIMEOUT_MS, stored: null })
    t.sent = Math.max(t.sent, seq)
    if (pushable) t.pushSeq = Math.max(t.pushSeq, seq)
  }

  private start(sessionId: string, conversationId: string, track: Track) {
    let bySession = this.tracks.get(sessionId)
    if (!bySession) this.tracks.set(sessionId, (bySession = new Map()))
    bySession.set(conversationId, track)
    this.count++
  }

  /**
   * A room sent events straight to the device (an open chat's writer socket) and it did not confirm
   * (confirmed, sent] there in time: owed from `since`, merged with what this hub sent it, less
   * what the device confirmed on its chat socket meanwhile. Due at `since` + the usual timeout, or
   * `dueAt` (a closed writer socket: at once).
   */
  owe(sessionId: string, conversationId: string, confirmed: number, sent: number, pushSeq: number, since: number, dueAt = since + DELIVERY_TIMEOUT_MS) {
    confirmed = Math.max(confirmed, this.early.get(earlyKey(sessionId, conversationId))?.seq ?? 0)
    const t = this.tracks.get(sessionId)?.get(conversationId)
    if (!t) {
      if (confirmed < sent) this.start(sessionId, conversationId, { confirmed, sent, pushSeq, attempts: 0, since, due: dueAt, stored: null })
      return
    }
    t.confirmed = Math.min(t.confirmed, confirmed)
    t.sent = Math.max(t.sent, sent)
    t.pushSeq = Math.max(t.pushSeq, pushSeq)
    t.since = Math.min(t.since, since)
    t.due = Math.min(t.due, dueAt)
  }

  /**
   * The device holds everything up to seq. A device that confirms progress is alive: what it still
   * owes was sent after what it confirmed, so its clock starts again from now.
   */
  confirm(sessionId: string, conversationId: string, seq: number, now: number) {
    const t = this.tracks.get(sessionId)?.get(conversationId)
    if (!t) {
      const key = earlyKey(sessionId, conversationId)
      this.early.set(key, { seq: Math.max(seq, this.early.get(key)?.seq ?? 0), at: now })
      return
    }
    if (seq <= t.confirmed) return
    t.confirmed = seq
    if (t.confirmed >= t.sent) return this.forget(sessionId, conversationId)
    t.since = now
    t.due = now + DELIVERY_TIMEOUT_MS
    t.attempts = 0
  }

  forget(sessionId: string, conversationId: string) {
    const bySession = this.tracks.get(sessionId)
    const t = bySession?.get(conversationId)
    if (!bySession || !t) return
    bySession.delete(conversationId)
    if (bySession.size === 0) this.tracks.delete(sessionId)
    this.count--
    if (t.stored !== null) this.removed.push({ sessionId, conversationId })
  }

  /**
   * What is due: a resend of everything after the confirmed cursor while the device is connected
   * and has had fewer than MAX_DELIVERY_RETRIES; otherwise a push of the newest message it owes.
   */
  due(now: number, connected: (sessionId: string) => boolean) {
    for (const [key, e] of this.early) if (now - e.at > EARLY_CONFIRM_MS) this.early.delete(key)
    const resend: (Key & { afterSeq: number })[] = []
    const push: { conversationId: string; seq: number }[] = []
    for (const [sessionId, bySession] of this.tracks) {
      for (const [conversationId, t] of bySession) {
        if (t.due > now) continue
        if (connected(sessionId) && t.attempts < MAX_DELIVERY_RETRIES) {
          t.attempts++
          t.due = now + DELIVERY_TIMEOUT_MS
          resend.push({ sessionId, conversationId, afterSeq: t.confirmed })
          continue
        }
        if (t.pushSeq > t.confirmed) push.push({ conversationId, seq: t.pushSeq })
        this.forget(sessionId, conversationId)
      }
    }
    return { resend, push }
  }

  /** Rows to write (owed for over PERSIST_AFTER_MS and changed since written) and to delete. */
  toPersist(now: number) {
    const upsert: (Key & { pushSeq: number })[] = []
    for (const [sessionId, bySession] of this.tracks) {
      for (const [conversationId, t] of bySession) {
        if (now - t.since < PERSIST_AFTER_MS || t.stored === t.pushSeq) continue
        t.stored = t.pushSeq
        upsert.push({ sessionId, conversationId, pushSeq: t.pushSeq })
      }
    }
    const remove = this.removed
    this.removed = []
    return { upsert, remove }
  }
}
