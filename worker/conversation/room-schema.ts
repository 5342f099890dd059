/** Bumped when the room's SQLite layout changes; migrateRoom brings older rooms up to date. */
export const ROOM_SCHEMA_VERSION = 1

export function migrateRoom(sql: SqlStorage) {
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
    CREATE TABLE IF NOT EXISTS d1_outbox (seq INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
    -- Members whose read cursor D1 has not caught up with (it feeds unread counts).
    CREATE TABLE IF NOT EXISTS cursor_outbox (user_id TEXT PRIMARY KEY, read_seq INTEGER NOT NULL);
    -- Uploads of recalled messages whose R2 blob is still to be deleted.
    CREATE TABLE IF NOT EXISTS media_purge (media_id TEXT PRIMARY KEY);
  `)
}
