/** A token bucket's state: tokens left at time `at` (ms). */
export interface Bucket {
  tokens: number
  at: number
}

/** The bucket's tokens at `now`: refilled at `perSecond` since `at`, never above `burst`. */
export function refill(b: Bucket, now: number, burst: number, perSecond: number): number {
  return Math.min(burst, b.tokens + ((now - b.at) / 1000) * perSecond)
}

/** A "burst/perUnit" setting (WRITE_RATE, FRAME_RATE, REGISTER_RATE); `fallback` when unset or malformed. */
export function parseRate(spec: string | undefined, fallback: [number, number]): [number, number] {
  if (spec === undefined) return fallback
  const [burst, per] = spec.split('/').map(Number)
  return burst! > 0 && per! > 0 ? [burst!, per!] : fallback
}

/** Token bucket per key: `burst` writes at once, refilled at `perSecond`. In memory on purpose:
 *  a room restart forgets the buckets, which only ever lets a sender through, never loses data. */
export class RateLimiter {
  private buckets = new Map<string, Bucket>()

  constructor(
    private readonly burst: number,
    private readonly perSecond: number,
  ) {}

  /** Gives back a token taken for a write that turned out to be a retry. */
  give(key: string) {
    const b = this.buckets.get(key)
    if (b) b.tokens = Math.min(this.burst, b.tokens + 1)
  }

  take(key: string, now: number): boolean {
    const tokens = refill(this.buckets.get(key) ?? { tokens: this.burst, at: now }, now, this.burst, this.perSecond)
    if (tokens < 1) {
      this.buckets.set(key, { tokens, at: now })
      return false
    }
    this.buckets.set(key, { tokens: tokens - 1, at: now })
    return true
  }
}
