/** Token bucket per key: `burst` writes at once, refilled at `perSecond`. In memory on purpose:
 *  a room restart forgets the buckets, which only ever lets a sender through, never loses data. */
export class RateLimiter {
  private buckets = new Map<string, { tokens: number; at: number }>()

  constructor(
    private readonly burst: number,
    private readonly perSecond: number,
  ) {}

  take(key: string, now: number): boolean {
    const b = this.buckets.get(key) ?? { tokens: this.burst, at: now }
    const tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond)
    if (tokens < 1) {
      this.buckets.set(key, { tokens, at: now })
      return false
    }
    this.buckets.set(key, { tokens: tokens - 1, at: now })
    return true
  }
}
