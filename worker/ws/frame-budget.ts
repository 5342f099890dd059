import { refill } from '../conversation/rate-limit'

/** Frames per socket, "burst/perSecond"; env FRAME_RATE overrides it. */
export const DEFAULT_FRAME_RATE: [number, number] = [200, 50]
/** A socket refused more than ABUSE_DROPS frames over at least ABUSE_MIN_MS (within a 10 s window) is closed: one burst is only trimmed. */
const ABUSE_WINDOW_MS = 10_000
const ABUSE_MIN_MS = 2_000
const ABUSE_DROPS = 500

interface Budget {
  tokens: number
  at: number
  dropped: number
  since: number
  warnedAt: number
}

/** What to do with a frame: run it, drop it and tell the client (once a second), drop it quietly, or close the socket. */
export type Spent = 'ok' | 'tell' | 'drop' | 'close'

/**
 * Frame budget per socket, a token bucket: over budget, frames are dropped with one refusal a
 * second; a socket that keeps going is closed, so one client cannot take the object (and everyone
 * it serves) for itself. Chat sockets in a UserHub and writer sockets in a room share it.
 */
export class FrameBudget {
  private budgets = new WeakMap<WebSocket, Budget>()

  constructor(private readonly rate: [burst: number, perSecond: number]) {}

  /** Spends `cost` of `ws`'s budget; `alwaysTell`: a refusal the client must hear of every time (it asks again only then). */
  spend(ws: WebSocket, cost: number, now: number, alwaysTell = false): Spent {
    const [burst, perSecond] = this.rate
    let b = this.budgets.get(ws)
    if (!b) this.budgets.set(ws, (b = { tokens: burst, at: now, dropped: 0, since: now, warnedAt: 0 }))
    b.tokens = refill(b, now, burst, perSecond)
    b.at = now
    if (b.tokens >= cost) {
      b.tokens -= cost
      return 'ok'
    }
    if (now - b.since > ABUSE_WINDOW_MS) {
      b.since = now
      b.dropped = 0
    }
    if (b.dropped === 0) b.since = now
    if (++b.dropped > ABUSE_DROPS && now - b.since >= ABUSE_MIN_MS) return 'close'
    if (now - b.warnedAt >= 1000 || alwaysTell) {
      b.warnedAt = now
      return 'tell'
    }
    return 'drop'
  }
}
