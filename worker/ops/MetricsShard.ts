import { DurableObject } from 'cloudflare:workers'
import type { Env } from '../env'
import { MAX_GAUGES, MetricsBatch } from '../shared/metrics'

/** Per-minute rows are kept this long: the monitoring view shows at most a day. */
const KEEP_MINUTES = 25 * 60
/** A gauge nobody refreshed for this long is left out (its object is gone: a crash, a deploy). */
const GAUGE_TTL_MS = 6 * 60 * 60 * 1000

export interface ShardReading {
  /** Counter deltas: [minute, series key, value]. */
  minutes: [number, string, number][]
  /** Counter totals since the shard began (monotonic, for Prometheus). */
  totals: [string, number][]
  /** This shard's gauge totals now (sum, or max for lag gauges). */
  gauges: [string, number][]
  /** The shard's gauge totals at the end of each minute something was reported: [minute, name, value]. */
  gaugeMinutes: [number, string, number][]
}

/**
 * One of METRICS_SHARDS objects that add up the counts objects hand over (each object at most once
 * a minute). Nothing on the message path waits for it; the admin routes read every shard.
 */
export class MetricsShard extends DurableObject<Env> {
  private sql = this.ctx.storage.sql

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql.exec(`
      CREATE TABLE IF NOT EXISTS minutes (minute INTEGER NOT NULL, key TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (minute, key));
      CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, value REAL NOT NULL);
      CREATE TABLE IF NOT EXISTS gauges (source TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (source, name));
      CREATE TABLE IF NOT EXISTS gauge_minutes (minute INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (minute, name));
    `)
  }

  /** Adds one object's hand-over; one transaction. */
  async record(input: MetricsBatch): Promise<void> {
    const batch = MetricsBatch.parse(input)
    const now = Date.now()
    const minute = Math.floor(now / 60_000)
    this.ctx.storage.transactionSync(() => {
      for (const [m, series] of Object.entries(batch.minutes)) {
        for (const [key, value] of Object.entries(series)) {
          this.sql.exec('INSERT INTO minutes (minute, key, value) VALUES (?, ?, ?) ON CONFLICT (minute, key) DO UPDATE SET value = value + excluded.value', Number(m), key, value)
          this.sql.exec('INSERT INTO totals (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + excluded.value', key, value)
        }
      }
      for (const [name, value] of Object.entries(batch.gauges)) {
        // Zero is the resting state: forgetting the row keeps the table to the objects that are busy.
        if (value === 0) this.sql.exec('DELETE FROM gauges WHERE source = ? AND name = ?', batch.source, name)
        else this.sql.exec('INSERT OR REPLACE INTO gauges (source, name, value, at) VALUES (?, ?, ?, ?)', batch.source, name, value, now)
      }
      const current = new Map(this.currentGauges(now))
      for (const name of new Set([...current.keys(), ...Object.keys(batch.gauges)])) {
        this.sql.exec('INSERT OR REPLACE INTO gauge_minutes (minute, name, value) VALUES (?, ?, ?)', minute, name, current.get(name) ?? 0)
      }
      this.sql.exec('DELETE FROM minutes WHERE minute < ?', minute - KEEP_MINUTES)
      this.sql.exec('DELETE FROM gauge_minutes WHERE minute < ?', minute - KEEP_MINUTES)
      this.sql.exec('DELETE FROM gauges WHERE at < ?', now - GAUGE_TTL_MS)
    })
  }

  /** For GET /api/health: a Durable Object answers. */
  async ping(): Promise<number> {
    return Date.now()
  }

  async read(sinceMinute: number): Promise<ShardReading> {
    const now = Date.now()
    return {
      minutes: this.sql.exec<{ minute: number; key: string; value: number }>('SELECT minute, key, value FROM minutes WHERE minute >= ? ORDER BY minute', sinceMinute).toArray().map((r) => [r.minute, r.key, r.value]),
      totals: this.sql.exec<{ key: string; value: number }>('SELECT key, value FROM totals').toArray().map((r) => [r.key, r.value]),
      gauges: this.currentGauges(now),
      gaugeMinutes: this.sql
        .exec<{ minute: number; name: string; value: number }>('SELECT minute, name, value FROM gauge_minutes WHERE minute >= ? ORDER BY minute', sinceMinute)
        .toArray()
        .map((r) => [r.minute, r.name, r.value]),
    }
  }

  private currentGauges(now: number): [string, number][] {
    return this.sql
      .exec<{ name: string; total: number; top: number }>('SELECT name, sum(value) AS total, max(value) AS top FROM gauges WHERE at >= ? GROUP BY name', now - GAUGE_TTL_MS)
      .toArray()
      .map((r) => [r.name, MAX_GAUGES.has(r.name) ? r.top : r.total])
  }
}
