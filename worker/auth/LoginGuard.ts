import { DurableObject } from 'cloudflare:workers'
import { refill } from '../conversation/rate-limit'
import type { Env } from '../env'
import { loginVerdict, recent, type Verdict } from './login-limits'

/** A device that signed in keeps being known for this long. */
const KNOWN_DEVICE_MS = 90 * 24 * 3600 * 1000
const MAX_KNOWN_DEVICES = 20

/**
 * Exact counters where a guess must be counted exactly: one object per handle (wrong passwords,
 * overall and per known device) and one per client address (sign-ups). Counting happens before
 * the password hash is computed, so a refused try costs no PBKDF2.
 */
export class LoginGuard extends DurableObject<Env> {
  private sql = this.ctx.storage.sql

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql.exec(`
      CREATE TABLE IF NOT EXISTS failures (device TEXT NOT NULL, at INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS failures_device ON failures (device, at);
      CREATE TABLE IF NOT EXISTS known_devices (token_hash TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS signup_bucket (id INTEGER PRIMARY KEY CHECK (id = 1), tokens REAL NOT NULL, at INTEGER NOT NULL);
    `)
  }

  private failuresOf(device: string, now: number): number[] {
    return recent(this.sql.exec<{ at: number }>('SELECT at FROM failures WHERE device = ? ORDER BY at', device).toArray().map((r) => r.at), now)
  }

  /** Whose failures a try counts against: a known device's own, or everyone else's ('*'). */
  private counterOf(tokenHash: string | null, now: number): string {
    const known = tokenHash !== null && this.sql.exec('SELECT 1 FROM known_devices WHERE token_hash = ? AND expires_at > ?', tokenHash, now).toArray().length > 0
    return known ? tokenHash : '*'
  }

  /**
   * Whether a password may be tried for this handle now. A device that signed in before is
   * counted on its own, so an attacker guessing the handle does not lock its owner out.
   */
  async check(deviceTokenHash: string | null, now = Date.now()): Promise<Verdict> {
    return loginVerdict(this.failuresOf(this.counterOf(deviceTokenHash, now), now), now)
  }

  async failed(deviceTokenHash: string | null, now = Date.now()): Promise<Verdict> {
    const device = this.counterOf(deviceTokenHash, now)
    this.sql.exec('DELETE FROM failures WHERE at < ?', now - 24 * 3600 * 1000)
    this.sql.exec('INSERT INTO failures (device, at) VALUES (?, ?)', device, now)
    return loginVerdict(this.failuresOf(device, now), now)
  }

  /** A right password: that device's failures are forgotten and it becomes (or stays) known. */
  async succeeded(deviceTokenHash: string, now = Date.now()): Promise<void> {
    this.sql.exec('DELETE FROM failures WHERE device = ?', deviceTokenHash)
    this.sql.exec('INSERT OR REPLACE INTO known_devices (token_hash, expires_at) VALUES (?, ?)', deviceTokenHash, now + KNOWN_DEVICE_MS)
    this.sql.exec(
      `DELETE FROM known_devices WHERE expires_at <= ? OR token_hash NOT IN (SELECT token_hash FROM known_devices ORDER BY expires_at DESC LIMIT ?)`,
      now, MAX_KNOWN_DEVICES,
    )
  }

  /**
   * One sign-up from this address, within `burst` at once and `perHour` after that: a token bucket
   * kept in storage, since an object idle for seconds is evicted and must not come back full.
   */
  async takeSignup(burst: number, perHour: number, now = Date.now()): Promise<Verdict> {
    const row = this.sql.exec<{ tokens: number; at: number }>('SELECT tokens, at FROM signup_bucket WHERE id = 1').toArray()[0]
    const tokens = refill(row ?? { tokens: burst, at: now }, now, burst, perHour / 3600)
    if (tokens < 1) return { allowed: false, retryAfterMs: Math.ceil(((1 - tokens) * 3600_000) / perHour) }
    this.sql.exec('INSERT OR REPLACE INTO signup_bucket (id, tokens, at) VALUES (1, ?, ?)', tokens - 1, now)
    return { allowed: true }
  }
}
