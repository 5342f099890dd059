import { sql } from 'drizzle-orm'
import { index, integer, primaryKey, sqliteTable, text, uniqueIndex } from 'drizzle-orm/sqlite-core'

const now = sql`(unixepoch('subsec') * 1000)`

export const users = sqliteTable('users', {
  id: text('id').primaryKey(),
  handle: text('handle').notNull().unique(),
  displayName: text('display_name').notNull(),
  passwordHash: text('password_hash').notNull(),
  /** Whether push notifications may show sender and text; off means "New message" only. */
  pushPreviews: integer('push_previews', { mode: 'boolean' }).notNull().default(true),
  statusLine: text('status_line').notNull().default(''),
  avatarKey: text('avatar_key'),
  /** Who sees online state and last seen: everyone, friends, or nobody. */
  presenceVisibility: text('presence_visibility', { enum: ['everyone', 'friends', 'nobody'] }).notNull().default('everyone'),
  lastSeenAt: integer('last_seen_at'),
  createdAt: integer('created_at').notNull().default(now),
  /** Operators of the whole service (monitoring, reports, suspensions); granted only from the command line. */
  isAdmin: integer('is_admin', { mode: 'boolean' }).notNull().default(false),
  /** Set while the account is suspended: its sessions are revoked and sign-in is refused. */
  suspendedAt: integer('suspended_at'),
  suspendedReason: text('suspended_reason'),
}, (t) => [index('users_display_name_idx').on(sql`lower(${t.displayName})`)])
export type User = typeof users.$inferSelect

/** One row per signed-in device. */
export const sessions = sqliteTable(
  'sessions',
  {
    id: text('id').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id),
    deviceName: text('device_name').notNull(),
    createdAt: integer('created_at').notNull().default(now),
    lastSeenAt: integer('last_seen_at').notNull().default(now),
    revokedAt: integer('revoked_at'),
    /** Where the device signed in or last refreshed ("Lisbon, PT"), from Cloudflare's request data. */
    place: text('place'),
  },
  (t) => [index('sessions_user_idx').on(t.userId)],
)
export type Session = typeof sessions.$inferSelect

/** Refresh tokens are stored as SHA-256 hashes; a used one stays to detect reuse. */
export const refreshTokens = sqliteTable(
  'refresh_tokens',
  {
    tokenHash: text('token_hash').primaryKey(),
    sessionId: text('session_id')
      .notNull()
      .references(() => sessions.id),
    expiresAt: integer('expires_at').notNull(),
    usedAt: integer('used_at'),
    /** The hash of the token this one was rotated into... */
    replacedBy: text('replaced_by'),
    /** ...and of the retry key the device sent with it: a retry after a lost answer presents both again, a replay does not. */
    retryKey: text('retry_key'),
  },
  (t) => [index('refresh_tokens_session_idx').on(t.sessionId)],
)

export const conversations = sqliteTable('conversations', {
  id: text('id').primaryKey(),
  kind: text('kind', { enum: ['direct', 'group'] }).notNull(),
  title: text('title'),
  /** Sorted member ids of a direct chat, so each pair has exactly one. */
  directKey: text('direct_key').unique(),
  createdBy: text('created_by').notNull(),
  createdAt: integer('created_at').notNull().default(now),
  lastSeq: integer('last_seq').notNull().default(0),
  lastActivityAt: integer('last_activity_at').notNull().default(now),
  /** When its voice room started, while one is live (the list shows it); null otherwise. */
  voiceLiveSince: integer('voice_live_since'),
  /**
   * The D1 binding that holds its history (worker/db/history.ts), chosen once at creation. 'DB' is
   * this database: conversations from before history was sharded keep theirs here.
   */
  historyShard: text('history_shard').notNull().default('DB'),
  /** Keep history this many days (0: forever); null follows the deployment's RETENTION_DAYS. Mirrored from the room. */
  retentionDays: integer('retention_days'),
  /** When some of its history is next due to expire (the retention sweep's index); null when none is. */
  historyExpiresAt: integer('history_expires_at'),
}, (t) => [index('conversations_expiry_idx').on(t.historyExpiresAt)])
export type Conversation = typeof conversations.$inferSelect

export const members = sqliteTable(
  'members',
  {
    conversationId: text('conversation_id')
      .notNull()
      .references(() => conversations.id),
    userId: text('user_id')
      .notNull()
      .references(() => users.id),
    role: text('role', { enum: ['owner', 'admin', 'member'] }).notNull(),
    joinedAt: integer('joined_at').notNull().default(now),
    /** First seq this member may see; earlier history stays private to earlier members. */
    joinedSeq: integer('joined_seq').notNull().default(0),
    /** The read cursor as rooms mirrored it before cursors moved to `read_cursors` on the history shard (the list takes the larger). */
    readSeq: integer('read_seq').notNull().default(0),
    /** No push until then (ms); MUTED_FOREVER for "always". */
    mutedUntil: integer('muted_until'),
    /** Pinned to the top of the list, most recently pinned first. */
    pinnedAt: integer('pinned_at'),
    /** Moved out of the list into Archived. */
    archivedAt: integer('archived_at'),
  },
  (t) => [primaryKey({ columns: [t.conversationId, t.userId] }), index('members_user_idx').on(t.userId)],
)

/**
 * Read cursors, beside the history they count unread messages of: a room writes its members'
 * cursors into the same D1 batch as its events, on its shard (this table for the conversations
 * whose history is here, migrations-history/ for the others), so a tick costs one batch, not two.
 */
export const readCursors = sqliteTable(
  'read_cursors',
  {
    conversationId: text('conversation_id').notNull(),
    userId: text('user_id').notNull(),
    readSeq: integer('read_seq').notNull(),
  },
  (t) => [primaryKey({ columns: [t.conversationId, t.userId] })],
)

/**
 * History mirror of the conversation logs, one row per event. Kept here for the conversations
 * whose history_shard is 'DB'; the others' is on their shard (migrations-history/, same layout); (conversation_id, seq) makes inserts
 * idempotent. Message rows are rewritten in place by later edits and erased by recalls.
 */
export const messages = sqliteTable(
  'messages',
  {
    conversationId: text('conversation_id').notNull(),
    seq: integer('seq').notNull(),
    type: text('type', { enum: ['message', 'edit', 'recall'] }).notNull(),
    senderId: text('sender_id').notNull(),
    clientMsgId: text('client_msg_id').notNull(),
    /** Body kind (text, image, …) for messages; null for other events and once recalled. */
    kind: text('kind'),
    body: text('body', { mode: 'json' }),
    targetSeq: integer('target_seq'),
    editedAt: integer('edited_at'),
    recalledBy: text('recalled_by'),
    recalledByAdmin: integer('recalled_by_admin', { mode: 'boolean' }),
    createdAt: integer('created_at').notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.conversationId, t.seq] }),
    index('messages_time_idx').on(t.conversationId, t.createdAt),
    uniqueIndex('messages_client_idx').on(t.conversationId, t.senderId, t.clientMsgId),
  ],
)
export type MessageRow = typeof messages.$inferSelect

export const pushSubscriptions = sqliteTable(
  'push_subscriptions',
  {
    endpoint: text('endpoint').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id),
    sessionId: text('session_id').notNull(),
    p256dh: text('p256dh').notNull(),
    auth: text('auth').notNull(),
    createdAt: integer('created_at').notNull().default(now),
  },
  (t) => [index('push_subscriptions_user_idx').on(t.userId)],
)

/** One row per notification sent, so a duplicated queue job cannot notify twice. */
export const pushDeliveries = sqliteTable(
  'push_deliveries',
  {
    endpoint: text('endpoint').notNull(),
    conversationId: text('conversation_id').notNull(),
    seq: integer('seq').notNull(),
    sentAt: integer('sent_at').notNull().default(now),
  },
  (t) => [primaryKey({ columns: [t.endpoint, t.conversationId, t.seq] })],
)

/** Jobs that exhausted their retries, kept for the monitoring view. */
export const pushDeadLetters = sqliteTable('push_dead_letters', {
  id: integer('id').primaryKey({ autoIncrement: true }),
  userId: text('user_id').notNull(),
  conversationId: text('conversation_id').notNull(),
  seq: integer('seq').notNull(),
  attempts: integer('attempts').notNull(),
  failedAt: integer('failed_at').notNull().default(now),
})

export const friendRequests = sqliteTable(
  'friend_requests',
  {
    id: text('id').primaryKey(),
    fromId: text('from_id').notNull().references(() => users.id),
    toId: text('to_id').notNull().references(() => users.id),
    note: text('note').notNull().default(''),
    status: text('status', { enum: ['pending', 'accepted', 'declined', 'cancelled'] }).notNull(),
    /** "from:to" while pending, else null: its unique index allows one pending request per direction. */
    pendingKey: text('pending_key'),
    createdAt: integer('created_at').notNull().default(now),
    respondedAt: integer('responded_at'),
  },
  (t) => [
    index('friend_requests_to_idx').on(t.toId, t.status),
    index('friend_requests_from_idx').on(t.fromId, t.status),
    // Not a partial index: D1's SQLite fails to plan ORs over one ("internal query planner error").
    uniqueIndex('friend_requests_pending_key').on(t.pendingKey),
  ],
)

/** Two rows per friendship, one from each side, so "my friends" is one index range. */
export const friendships = sqliteTable(
  'friendships',
  {
    userId: text('user_id').notNull().references(() => users.id),
    friendId: text('friend_id').notNull().references(() => users.id),
    createdAt: integer('created_at').notNull().default(now),
  },
  (t) => [primaryKey({ columns: [t.userId, t.friendId] })],
)

export const blocks = sqliteTable(
  'blocks',
  {
    blockerId: text('blocker_id').notNull().references(() => users.id),
    blockedId: text('blocked_id').notNull().references(() => users.id),
    createdAt: integer('created_at').notNull().default(now),
  },
  (t) => [primaryKey({ columns: [t.blockerId, t.blockedId] }), index('blocks_blocked_idx').on(t.blockedId)],
)

/**
 * A finished upload. Fields other than the client's file name come from the server's reading of
 * the bytes. It belongs to its uploader until a message claims it for one conversation; from
 * then on members of that conversation may download it.
 */
export const media = sqliteTable(
  'media',
  {
    id: text('id').primaryKey(),
    ownerId: text('owner_id').notNull().references(() => users.id),
    kind: text('kind', { enum: ['voice', 'image', 'file'] }).notNull(),
    mime: text('mime').notNull(),
    size: integer('size').notNull(),
    name: text('name'),
    durationMs: integer('duration_ms'),
    width: integer('width'),
    height: integer('height'),
    conversationId: text('conversation_id').references(() => conversations.id),
    /** The seq of the message that carries it (set when D1 gets that message). */
    seq: integer('seq'),
    /** A lower bound on that seq, set when the message claims the upload: members who joined after it cannot read it. */
    minSeq: integer('min_seq'),
    /** 'ready' until a recall purges the blob ('deleted'). */
    status: text('status', { enum: ['ready', 'deleted'] }).notNull().default('ready'),
    transcript: text('transcript'),
    createdAt: integer('created_at').notNull().default(now),
  },
  (t) => [index('media_owner_idx').on(t.ownerId), index('media_conversation_idx').on(t.conversationId)],
)

/**
 * A person's report of a message or a user. A message report keeps a copy of the message for the
 * moderators (it survives a recall) until the case is closed; then the copy is deleted.
 */
export const reports = sqliteTable(
  'reports',
  {
    id: text('id').primaryKey(),
    reporterId: text('reporter_id').notNull().references(() => users.id),
    /** The reported person: the user reported, or the message's sender. */
    targetUserId: text('target_user_id').notNull().references(() => users.id),
    conversationId: text('conversation_id'),
    seq: integer('seq'),
    reason: text('reason').notNull(),
    note: text('note').notNull().default(''),
    /** JSON of the message as it was reported; null for a user report and once the case is closed. */
    messageCopy: text('message_copy'),
    status: text('status', { enum: ['open', 'dismissed', 'actioned'] }).notNull().default('open'),
    createdAt: integer('created_at').notNull().default(now),
    closedAt: integer('closed_at'),
    closedBy: text('closed_by'),
  },
  (t) => [
    index('reports_status_idx').on(t.status, t.createdAt),
    uniqueIndex('reports_once_idx').on(t.reporterId, t.targetUserId, t.conversationId, t.seq),
    // NULLs are distinct in a unique index: reports of a person are one open case per reporter here.
    uniqueIndex('reports_user_once_idx').on(t.reporterId, t.targetUserId).where(sql`${t.conversationId} IS NULL AND ${t.status} = 'open'`),
  ],
)

/** Every action an operator took, newest last; never edited. */
export const auditLog = sqliteTable(
  'audit_log',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    /** The admin's user id, or "cli" for the command line. */
    actor: text('actor').notNull(),
    action: text('action').notNull(),
    targetUserId: text('target_user_id'),
    reportId: text('report_id'),
    detail: text('detail').notNull().default(''),
    at: integer('at').notNull().default(now),
  },
  (t) => [index('audit_log_at_idx').on(t.at)],
)
