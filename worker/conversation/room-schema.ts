/** Bumped when the room's SQLite layout changes; migrateRoom brings older rooms up to date. */
export const ROOM_SCHEMA_VERSION = 1

export function migrateRoom(sql: SqlStorage) {
  sql.exec(`
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS members (
      user_id TEXT PRIMARY KEY,
      role TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS events (
      seq INTEGER PRIMARY KEY,
      type TEXT NOT NULL,
      sender_id TEXT NOT NULL,
      client_msg_id TEXT NOT NULL,
      body TEXT NOT NULL,
      server_ts INTEGER NOT NULL,
      UNIQUE (sender_id, client_msg_id)
    );
    CREATE TABLE IF NOT EXISTS d1_outbox (seq INTEGER PRIMARY KEY);
  `)
}
