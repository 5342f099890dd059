// The soak's population written straight into the local main D1 database before the runtime
// starts: people with a signed-in session each, the friendships its chats need, and the
// conversations with their members, in the rows the API writes. Through the API the full
// population took 24–35 minutes (a PBKDF2 hash per sign-up, two calls per friendship, a group's
// members befriended one by one); this takes seconds, so the day can be run again. Rooms read their
// members from these rows when first used, as after any deploy. A group seeded this way has no
// "members added" event at seq 1; its first message is seq 1.
import { createHash, pbkdf2Sync, randomBytes } from 'node:crypto'
import { readdirSync } from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { fnv1a, newId } from '../worker/ids'

export interface SeedPerson {
  id: string
  handle: string
  displayName: string
  sessionId: string
  /** Live: the soak's first refresh turns it into an access token. */
  refreshToken: string
}
export interface SeedConversation {
  id: string
  kind: 'direct' | 'group'
  /** Indexes into the people; the first is the owner of a group. */
  members: number[]
}

export const SEED_PASSWORD = 'soak-password-1'
const REFRESH_TTL_MS = 60 * 24 * 3600 * 1000

/** The people to write (handles `s<run>_<i>`), each with a session and a live refresh token. */
export function seedPeople(run: string, count: number): SeedPerson[] {
  return Array.from({ length: count }, (_, i) => ({ id: newId(), handle: `s${run}_${i}`, displayName: `Soak ${i}`, sessionId: newId(), refreshToken: newId(43) }))
}

/** The main database wrangler's local D1 keeps under `stateDir`: the one with a users table. */
function mainDatabase(stateDir: string): string {
  const dir = path.join(stateDir, 'v3', 'd1', 'miniflare-D1DatabaseObject')
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.sqlite') && f !== 'metadata.sqlite')) {
    const db = new Database(path.join(dir, f), { readonly: true })
    const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'").get()
    db.close()
    if (has) return path.join(dir, f)
  }
  throw new Error(`no migrated main database under ${dir}`)
}

/** Writes people, sessions, friendships (both ways), conversations and members in one transaction. */
export async function writeSeed(stateDir: string, people: SeedPerson[], conversations: SeedConversation[], historyShards: string): Promise<void> {
  // The formats of worker/auth/password.ts and worker/ids.ts (sha256), made with Node's crypto:
  // the worker's modules type-check against the Workers runtime, not Node.
  const salt = randomBytes(16)
  const passwordHash = `pbkdf2-sha256$100000$${salt.toString('base64url')}$${pbkdf2Sync(SEED_PASSWORD, salt, 100_000, 32, 'sha256').toString('base64url')}`
  const tokenHashes = people.map((p) => createHash('sha256').update(p.refreshToken).digest('base64url'))
  // Placed as worker/db/history.ts places a new conversation; the room reads the recorded shard.
  const shards = historyShards.split(',')
  const now = Date.now()
  const db = new Database(mainDatabase(stateDir))
  const user = db.prepare('INSERT INTO users (id, handle, display_name, password_hash, created_at) VALUES (?, ?, ?, ?, ?)')
  const session = db.prepare("INSERT INTO sessions (id, user_id, device_name, created_at, last_seen_at) VALUES (?, ?, 'soak', ?, ?)")
  const token = db.prepare('INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES (?, ?, ?)')
  const friend = db.prepare('INSERT OR IGNORE INTO friendships (user_id, friend_id, created_at) VALUES (?, ?, ?)')
  const conversation = db.prepare(
    'INSERT INTO conversations (id, kind, title, direct_key, created_by, created_at, last_seq, last_activity_at, history_shard) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)',
  )
  const member = db.prepare('INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)')
  db.transaction(() => {
    people.forEach((p, i) => {
      user.run(p.id, p.handle, p.displayName, passwordHash, now)
      session.run(p.sessionId, p.id, now, now)
      token.run(tokenHashes[i], p.sessionId, now + REFRESH_TTL_MS)
    })
    conversations.forEach((c, i) => {
      const ids = c.members.map((m) => people[m]!.id)
      const owner = ids[0]!
      // The API lets people start a chat or a group only with friends.
      for (const other of ids.slice(1)) (friend.run(owner, other, now), friend.run(other, owner, now))
      const direct = c.kind === 'direct' ? [...ids].sort().join(':') : null
      conversation.run(c.id, c.kind, direct ? null : `group ${i}`, direct, owner, now, now, shards[fnv1a(c.id) % shards.length]!)
      ids.forEach((id, j) => member.run(c.id, id, c.kind === 'group' && j === 0 ? 'owner' : 'member', now))
    })
  })()
  db.close()
}
