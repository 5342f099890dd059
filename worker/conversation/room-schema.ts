/** Bumped when the room's SQLite layout changes; migrateRoom brings older rooms up to date. */
export const ROOM_SCHEMA_VERSION = 4

export function migrateRoom(sql: SqlStorage) {
  // One read when the layout is current: a room wakes often, and a write here would be a commit per wake.
  try {
    if (sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'version'`).toArray()[0]?.value === String(ROOM_SCHEMA_VERSION)) return
  } catch {
    // A new room: no meta table yet.
  }
  sql.exec(`
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS members (
      user_id TEXT PRIMARY KEY,
      role TEXT NOT NULL,
      delivered_seq INTEGER NOT NULL DEFAULT 0,
      read_seq INTEGER NOT NULL DEFAULT 0,
      joined_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS events (
      seq INTEGER PRIMARY KEY,
      type TEXT NOT NULL,
      sender_id TEXT NOT NULL,
      client_msg_id TEXT NOT NULL,
      kind TEXT,
      body TEXT,
      target_seq INTEGER,
      edited_at INTEGER,
      recalled_by TEXT,
      recalled_by_admin INTEGER,
      created_at INTEGER NOT NULL,
      UNIQUE (sender_id, client_msg_id)
    );
    -- Earlier events changed after D1 got them (edits, recalls): rewritten by the next flush.
    -- gen is the seq of the change, so a flush in flight never forgets a newer one.
    CREATE TABLE IF NOT EXISTS d1_dirty (seq INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
    -- Uploads of recalled messages whose R2 blob is still to be deleted.
    CREATE TABLE IF NOT EXISTS media_purge (media_id TEXT PRIMARY KEY);
    -- Writer sockets' tickets, spent once (version 3).
    CREATE TABLE IF NOT EXISTS used_tickets (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL);
  `)
  const version = Number(sql.exec<{ value: string }>(`SELECT value FROM meta WHERE key = 'version'`).toArray()[0]?.value ?? ROOM_SCHEMA_VERSION)
  if (version < 2) fromOutboxRows(sql)
  // Rooms before version 4 stored a sender's cursors with each event: they are current to the log's end.
  if (version < 4) sql.exec(`INSERT OR IGNORE INTO meta (key, value) SELECT 'cursors_seq', coalesce(max(seq), 0) FROM events`)
  sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('version', ?)`, String(ROOM_SCHEMA_VERSION))
}

/**
 * Version 1 kept a D1 outbox row per event and per moved read cursor. Version 2 keeps a flushed-up-to
 * mark: everything after the oldest queued event is flushed again (idempotent upserts), and queued
 * cursors are flushed by marking them D1-dirty (`d1_read_pending`).
 */
function fromOutboxRows(sql: SqlStorage) {
  const hasOutbox = sql.exec(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'd1_outbox'`).toArray().length > 0
  if (!hasOutbox) return
  const oldest = sql.exec<{ s: number | null }>('SELECT min(seq) AS s FROM d1_outbox').one().s
  const last = sql.exec<{ s: number | null }>('SELECT max(seq) AS s FROM events').one().s ?? 0
  sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('d1_seq', ?)`, String(oldest === null ? last : oldest - 1))
  sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('d1_read_pending', (SELECT coalesce(json_group_array(user_id), '[]') FROM cursor_outbox))`)
  sql.exec('DROP TABLE d1_outbox')
  sql.exec('DROP TABLE IF EXISTS cursor_outbox')
}
