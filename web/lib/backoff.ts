// How long a client waits before it connects again: the PWA's sockets, and the soak's simulated
// people (bench/soak.ts), who must retry as the app does. A plain module so Node can import it.

/**
 * The first retry goes almost at once (a deploy closes every socket, and the new version is already
 * there); later ones wait an exponentially growing time with jitter (half to all of it, so many
 * clients spread out), capped by how long the outage has lasted: 1 s for the first 30 s, so a
 * restart is noticed within a second of its end, 5 s up to two minutes, then 30 s.
 */
export function backoffDelay(attempt: number, outageMs: number): number {
  if (attempt === 0) return 50 + Math.random() * 150
  const cap = outageMs < 30_000 ? 1_000 : outageMs < 120_000 ? 5_000 : 30_000
  return Math.min(cap, 250 * 2 ** attempt) * (0.5 + Math.random() * 0.5)
}
