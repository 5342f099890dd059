/** Wrong passwords counted per handle (and per known device) over this window... */
export const FAILURE_WINDOW_MS = 15 * 60 * 1000
/** ...of which this many are free; after them every try waits twice as long as the one before. */
export const FREE_FAILURES = 10
const FIRST_DELAY_MS = 30_000

export type Verdict = { allowed: true } | { allowed: false; retryAfterMs: number }

/** Failures still inside the window, oldest first. */
export function recent(failures: number[], now: number): number[] {
  return failures.filter((t) => now - t < FAILURE_WINDOW_MS)
}

/**
 * May someone try a password now, given the failures on record? The first FREE_FAILURES in a
 * window are free; then the next try waits 30 s after the last failure, then 60 s, 2 min…, never
 * longer than the window, so the owner is never locked out for more than 15 minutes.
 */
export function loginVerdict(failures: number[], now: number): Verdict {
  const inWindow = recent(failures, now)
  if (inWindow.length < FREE_FAILURES) return { allowed: true }
  const delay = Math.min(FAILURE_WINDOW_MS, FIRST_DELAY_MS * 2 ** (inWindow.length - FREE_FAILURES))
  const retryAfterMs = inWindow[inWindow.length - 1]! + delay - now
  return retryAfterMs > 0 ? { allowed: false, retryAfterMs } : { allowed: true }
}
