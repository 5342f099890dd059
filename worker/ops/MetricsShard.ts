import { DurableObject } from 'cloudflare:workers'
import type { Env } from '../env'
import { MAX_GAUGES, MetricsBatch } from '../shared/metrics'

/** Per-minute rows are kept this long: the monitoring view shows at most a day. */
const KEEP_MINUTES = 25 * 60
/**
 * A gauge nobody refreshed for this long is dropped (its object is gone: a crash, a deploy). A hub
 * reports again whenever it wakes; one whose sockets sat idle a whole day drops out until it does.
 */
const GAUGE_TTL_MS = 24 * 60 * 60 * 1000

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
  /** Old rows are swept at most once a minute, not on every hand-over. */
  private sweptAt = 0

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS minutes (minute INTEGER NOT NULL, key TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (minute, key));
      CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, value REAL NOT NULL);
      CREATE TABLE IF NOT EXISTS gauges (source TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (source, name));
      CREATE INDEX IF NOT EXISTS gauges_at ON gauges (at);
      CREATE INDEX IF NOT EXISTS gauges_top ON gauges (name, value);
      -- The sum of each gauge over its sources, kept as reports change it: reading it costs one row.
      CREATE TABLE IF NOT EXISTS gauge_sums (name TEXT PRIMARY KEY, total REAL NOT NULL);
      CREATE TABLE IF NOT EXISTS gauge_minutes (minute INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (minute, name));
    `)
    if (this.sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'version'`).toArray()[0]?.value !== '2') {
      this.ctx.storage.transactionSync(() => {
        this.sql.exec('DELETE FROM gauge_sums')
        this.sql.exec('INSERT INTO gauge_sums (name, total) SELECT name, sum(value) FROM gauges GROUP BY name')
        this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('version', '2')`)
      })
    }
  }

  /** Adds one object's hand-over in one transaction; the cost is its own rows, not the table's size. */
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
      for (const [name, value] of Object.entries(batch.gauges)) this.setGauge(batch.source, name, value, now)
      if (now - this.sweptAt >= 60_000) this.sweep(now, minute)
      for (const name of Object.keys(batch.gauges)) {
        this.sql.exec('INSERT OR REPLACE INTO gauge_minutes (minute, name, value) VALUES (?, ?, ?)', minute, name, this.gaugeNow(name))
      }
    })
  }

  private setGauge(source: string, name: string, value: number, now: number) {
    const old = this.sql.exec<{ value: number }>('SELECT value FROM gauges WHERE source = ? AND name = ?', source, name).toArray()[0]?.value ?? 0
    // Zero is the resting state: forgetting the row keeps the table to the objects that are busy.
    if (value === 0) this.sql.exec('DELETE FROM gauges WHERE source = ? AND name = ?', source, name)
    else this.sql.exec('INSERT OR REPLACE INTO gauges (source, name, value, at) VALUES (?, ?, ?, ?)', source, name, value, now)
    if (value !== old) this.sql.exec('INSERT INTO gauge_sums (name, total) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET total = total + excluded.total', name, value - old)
  }

  /** Per-minute rows past the view's day, and gauges nobody refreshed (their objects are gone). */
  private sweep(now: number, minute: number) {
    this.sweptAt = now
    this.sql.exec('DELETE FROM minutes WHERE minute < ?', minute - KEEP_MINUTES)
    this.sql.exec('DELETE FROM gauge_minutes WHERE minute < ?', minute - KEEP_MINUTES)
    const stale = this.sql.exec<{ source: string; name: string }>('SELECT source, name FROM gauges WHERE at < ? LIMIT 1000', now - GAUGE_TTL_MS).toArray()
    for (const g of stale) this.setGauge(g.source, g.name, 0, now)
  }

  private gaugeNow(name: string): number {
    if (MAX_GAUGES.has(name)) return this.sql.exec<{ top: number | null }>('SELECT max(value) AS top FROM gauges WHERE name = ?', name).one().top ?? 0
    return this.sql.exec<{ total: number }>('SELECT total FROM gauge_sums WHERE name = ?', name).toArray()[0]?.total ?? 0
  }

  /** For GET /api/health: a Durable Object answers. */
  async ping(): Promise<number> {
    return Date.now()
  }

  async read(sinceMinute: number): Promise<ShardReading> {
    return {
      minutes: this.sql.exec<{ minute: number; key: string; value: number }>('SELECT minute, key, value FROM minutes WHERE minute >= ? ORDER BY minute', sinceMinute).toArray().map((r) => [r.minute, r.key, r.value]),
      totals: this.sql.exec<{ key: string; value: number }>('SELECT key, value FROM totals').toArray().map((r) => [r.key, r.value]),
      gauges: this.currentGauges(),
      gaugeMinutes: this.sql
        .exec<{ minute: number; name: string; value: number }>('SELECT minute, name, value FROM gauge_minutes WHERE minute >= ? ORDER BY minute', sinceMinute)
        .toArray()
        .map((r) => [r.minute, r.name, r.value]),
    }
  }

  private currentGauges(): [string, number][] {
    const names = this.sql.exec<{ name: string }>('SELECT name FROM gauge_sums UNION SELECT DISTINCT name FROM gauges').toArray().map((r) => r.name)
    return names.map((name) => [name, this.gaugeNow(name)])
  }

}
