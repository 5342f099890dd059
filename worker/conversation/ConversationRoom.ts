import { DurableObject } from 'cloudflare:workers'
import { dropFromCall } from '../calls/CallRoom'
import { getUserHub, getVoiceRoom } from '../durable-objects'
import { mediaKey } from '../media/UploadSession'
import type { Env } from '../env'
import type { UserHub } from '../user/UserHub'
import { APP_CLOSE_CODE, ErrorCode, errorBody } from '../shared/errors'
import {
  type CallOutcome,
  EDIT_WINDOW_MS,
  MessageBody,
  RECALL_WINDOW_MS,
  SYNC_PAGE_BYTES,
  SYNC_PAGE_LIMIT,
  TextBody,
  mediaIdsOf,
  worthPush,
  type ConversationEvent,
  type KeepDays,
  type ServerMessage,
  type MediaBody,
  type MemberEvent,
  type Receipt,
  type Role,
} from '../shared/protocol'
import { EVENT_COLUMNS, eventToRow, MODERATOR, MODERATOR_ID, rowToEvent, type EventRow } from './event-rows'
import { fail, ok, type RoomResult } from '../do-result'
import { historyDb, MAIN } from '../db/history'
import { DAY_MS, defaultKeepDays, EXPIRE_BATCH, NOTHING_KEPT, parseKeepDays } from './retention'
import { parseRate, RateLimiter } from './rate-limit'
import { migrateRoom, ROOM_SCHEMA_VERSION } from './room-schema'
import { Metrics } from '../ops/metrics'
import { Counter, Gauge } from '../shared/metrics'
import { DEFAULT_FRAME_RATE, FrameBudget } from '../ws/frame-budget'
import { spendTicket, upgradeClaims, UPGRADE_HEADERS } from '../ws/upgrade'
import { errorFrame, send } from '../ws/frames'
import { WriterSockets } from './writer-sockets'
import { DirectDeliveries, HANDOFF_AFTER_MS, type Owed } from './direct-deliveries'

export type { RoomResult } from '../do-result'
export interface Ack {
  conversationId: string
  clientMsgId: string
  seq: number
  serverTs: number
  duplicate: boolean
  /** The event as stored, for the sender's own hub to show on the user's devices (absent on a repeat). */
  event?: ConversationEvent
  /** Receipts waiting for the writer, carried by the ack instead of a call of their own. */
  receipts?: Receipt[]
}
/** What a hub needs to know of an event it delivers; the devices get the room's serialised frame. */
export type DeliveredEvent = Pick<ConversationEvent, 'type' | 'conversationId' | 'seq' | 'senderId'> & { body?: { kind: string } | null }
/**
 * What a member's hub hands back with a delivery: its devices' newest confirmation in that
 * conversation, or that no device of the member is online (the room then stops calling; see `away`).
 */
export type DeliveryReply = { delivered: number } | { away: true } | null
/** One event for one member's hub: `frame` is serialised once for every member; `skipSession` has the ack already. */
export interface Delivery {
  meta: DeliveredEvent
  frame: string
  skipSession?: string
}
export interface SyncPage {
  events: ConversationEvent[]
  hasMore: boolean
  lastSeq: number
  receipts: Receipt[]
  /** The oldest seq retention has kept, once it has deleted any. */
  historyFrom?: number
}
interface Member {
  role: Role
  deliveredSeq: number
  readSeq: number
  /** First seq this member may see. */
  joinedSeq: number
}
/**
 * Where a write came from, which decides who shows its event on the writer's own devices: the
 * writer's hub (from the ack), the room (an HTTP write), or a writer socket of session `session`
 * (the room tells the writer's hub, for the other devices, when any is online).
 */
export type WriteOrigin = 'hub' | 'http' | { session: string }
/** Groups hold at most this many people (live voice rooms use the same ceiling). */
export const MAX_GROUP_MEMBERS = 50
/** The group ceiling; GROUP_LIMIT raises it only for the fan-out benchmark. */
export const groupLimit = (env: Env) => Math.max(MAX_GROUP_MEMBERS, Number(env.GROUP_LIMIT) || 0)

/** D1 gets what the log gained at most this long after it was acked, in one batch... */
export const FLUSH_DELAY_MS = 250
/**
 * ...but a room that keeps talking starts a flush at most once this often: each batch costs D1 a
 * commit whatever it holds, and D1 is shared by every room (with 100 busy rooms, 400 batches/s
 * instead of 100 held the benchmark's 100-conversation rate at 740 msg/s; bench/results.md)...
 */
export const FLUSH_MIN_GAP_MS = 1000
/** ...or at once when this many events wait. */
const FLUSH_BATCH = 100
/**
 * The directory's last_seq / last_activity_at in the main database only choose a long list's first
 * 200 rows (the list takes exact figures from the shards), so a room mirrors them at most this
 * often, or with a main-database write it makes anyway: a busy room's tick is one D1 batch, not two.
 */
export const ACTIVITY_MIRROR_MS = 5 * 60_000
/**
 * The alarm that retries a flush after a crash or a D1 failure. The tick does the flushing; the
 * alarm only has to be there when a crash takes the tick with it, so it is armed once per interval
 * (an alarm write is a commit of its own).
 */
const FLUSH_RETRY_MS = 10_000
/** Rows per upsert statement are bounded by this much JSON (D1 takes up to 2 MB in one bound value). */
const UPSERT_CHUNK_BYTES = 512 * 1024
const UPSERT_SQL = `INSERT INTO messages (conversation_id, ${EVENT_COLUMNS})
  SELECT ?1, ${EVENT_COLUMNS.split(', ').map((_, i) => `json_extract(r.value, '$[${i}]')`).join(', ')} FROM json_each(?2) r WHERE true
  ON CONFLICT (conversation_id, seq) DO UPDATE SET kind = excluded.kind, body = excluded.body,
    edited_at = excluded.edited_at, recalled_by = excluded.recalled_by, recalled_by_admin = excluded.recalled_by_admin`

/**
 * Upserts of event rows into D1's history, many rows to a statement (as one JSON array in one
 * bound value): a statement per row made D1's per-statement work the larger part of a flush.
 */
function upsertStatements(db: D1Database, conversationId: string, rows: EventRow[]): D1PreparedStatement[] {
  const statements: D1PreparedStatement[] = []
  let chunk: string[] = []
  let bytes = 0
  const close = () => {
    if (chunk.length > 0) statements.push(db.prepare(UPSERT_SQL).bind(conversationId, `[${chunk.join(',')}]`))
    chunk = []
    bytes = 0
  }
  for (const r of rows) {
    const json = JSON.stringify([r.seq, r.type, r.sender_id, r.client_msg_id, r.kind, r.body, r.target_seq, r.edited_at, r.recalled_by, r.recalled_by_admin, r.created_at])
    if (bytes + json.length > UPSERT_CHUNK_BYTES) close()
    chunk.push(json)
    bytes += json.length
  }
  close()
  return statements
}

/** Receipts for one member's devices gather this long, so a group's confirmations are one call per member, not one per reader. */
const RECEIPT_BATCH_MS = 50
const TYPING_MIN_INTERVAL_MS = 1_000
const RANK: Record<Role, number> = { owner: 2, admin: 1, member: 0 }
/** How many of the newest events' senders the room keeps in memory for receipts. */
const RECENT_EVENTS = 256
/**
 * Deliveries issued per turn when a big group fans out (groups hold 50, so only the benchmark's
 * lifted ceiling meets it). Each further turn lets hubs' and devices' work in ahead of the rest of
 * the group: at 1,000 members, 128 per turn measured 475–860 ms to the last receive at p99, 512
 * about 280 ms; a writer in the same room waits at most one turn (~85 ms at 512) for its ack.
 */
const FANOUT_CHUNK = 512
/** Per-member write limit, "burst/perSecond"; env WRITE_RATE overrides it. */
const DEFAULT_WRITE_RATE: [number, number] = [30, 10]

/**
 * One per conversation. Its SQLite log is authoritative: it assigns seq and acks only after the
 * write. Everything else a message causes is derived and batched: fan-out to members' UserHubs,
 * receipt cursors kept in memory and persisted once per tick, and D1 written once per tick from a
 * flushed-up-to mark (plus a small dirty set for edits and recalls).
 */
export class ConversationRoom extends DurableObject<Env> {
  private sql: SqlStorage
  private conversationId: string | null = null
  private kind: 'direct' | 'group' = 'direct'
  /** The D1 binding that holds this conversation's history (worker/db/history.ts). */
  private historyShard = MAIN
  /** Its own retention setting (null: the deployment's default); see retention.ts. */
  private keepDays: KeepDays | null = null
  /** The oldest seq still kept: retention deletes the log from the front, never inside it. */
  private historyFrom = 1
  /** D1 must lose every row up to d1ExpireTo; it has lost those up to d1Expired. */
  private d1ExpireTo = 0
  private d1Expired = 0
  /** The expiry time D1's directory holds for the sweep (undefined: not known since the wake). */
  private expiresMirrored: number | null | undefined = undefined
  /** A direct chat between two people where one blocked the other takes no writes. */
  private blocked = false
  private members = new Map<string, Member>()
  readonly metrics: Metrics
  private lastSeq = 0
  /** Every event up to here is in D1. */
  private d1Seq = 0
  /**
   * The mark as storage holds it. A flush moves d1Seq without a commit of its own: the mark (and
   * the cursors that moved) ride on the next event's commit or the alarm's, within 10 s. A crash
   * before that only repeats upserts, which change nothing, and sends receipts again; at the pace
   * people type it saves a commit per message.
   */
  private d1SeqSaved = 0
  /** A version-1 room's cursors still owed to D1 (see room-schema.ts). */
  private readPendingStored = false
  /** Members whose cursors moved since they were last written to this object's storage. */
  private cursorsDirty = new Set<string>()
  /** Members whose cursors moved by their own writes: the log says so until they are stored. */
  private ownDirty = new Set<string>()
  /** The log's seq the stored cursors are current to (senders' own moves after it are in the log). */
  private cursorsSeqSaved = 0
  /** Members whose read cursor D1 has not caught up with (it feeds unread counts). */
  private readDirty = new Set<string>()
  /** When this room last mirrored its activity to the directory (wall time), and what storage holds of it. */
  private activityMirroredAt = 0
  private activityMirroredSaved = 0
  /** The newest seq the directory has (as far as this instance knows: after a wake, the D1 mark). */
  private activitySeq = 0
  /** lastSeq when the last alarm ran: unchanged at the next one means the room went quiet. */
  private alarmSeenSeq = -1
  private flushing: Promise<void> | null = null
  private flushAgain = false
  /** D1 batches this instance sent (stats, for tests of the flush pace). */
  private d1Batches = 0
  private flushTimer: ReturnType<typeof setTimeout> | null = null
  /** When the last flush started (wall time), for FLUSH_MIN_GAP_MS. */
  private lastFlushAt = 0
  /** Unknown after a wake, so the first flush looks; then known from the recalls this object makes. */
  private purgePending = true
  private loading: Promise<RoomResult<null>> | null = null
  /** Writes of one sender that wait for I/O (a media claim, the first load) hold that sender's later writes, so seqs follow send order. */
  private senderTails = new Map<string, Promise<unknown>>()
  private lastTyping = new Map<string, number>()
  /** Receipts waiting to go out, by the member whose devices get them. */
  private receiptsOut = new Map<string, Map<string, Receipt>>()
  private receiptTimer: ReturnType<typeof setTimeout> | null = null
  private hubs = new Map<string, DurableObjectStub<UserHub>>()
  /** The newest events' senders, so a receipt finds whom it concerns without reading the log. */
  private recent: { seq: number; senderId: string; message: boolean }[] = []
  private fanOutQueue: (Delivery & { userId: string })[] = []
  /**
   * Members whose hub answered that none of their devices is online: they are not called per event.
   * `newest` is the newest event skipped for them, `push` the newest one worth a push (a message or
   * call from someone else). A reminder timer hands the hub those events (its push, coalesced there
   * as before); the hub says when a device is back. In memory only: a new instance calls everyone.
   */
  private away = new Map<string, { newest: number; push: number }>()
  private remindTimer: ReturnType<typeof setTimeout> | null = null
  private lastRemindAt = 0
  /** The call last started in this conversation (an ended one ignores a drop, so it need not be forgotten). */
  private liveCall: string | null = null
  private fanOutTimer: ReturnType<typeof setTimeout> | null = null
  /** When the safety-net alarm is due, as far as this instance knows (null: none set by it). */
  private alarmAt: number | null = null
  private writers: WriterSockets
  /** Events sent straight to writer sockets, until confirmed or handed to the hubs. */
  private direct = new DirectDeliveries()
  private handoffTimer: ReturnType<typeof setTimeout> | null = null
  /** Hand-offs whose call failed, tried again at the next hand-off tick. */
  private handoffRetry: Owed[] = []
  /** Calls to a member's hub not answered yet: their events stay on that path until then, so a switch to writer sockets cannot overtake them. */
  private hubCalls = new Map<string, number>()
  /** Replaceable so load tests and benchmarks can lift the per-member limit. */
  limiter: RateLimiter
  /** Injectable clock so time boundaries are testable. */
  now: () => number = () => Date.now()

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env)
    this.sql = ctx.storage.sql
    this.limiter = new RateLimiter(...parseRate(env.WRITE_RATE, DEFAULT_WRITE_RATE))
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('ping', 'pong'))
    this.writers = new WriterSockets(ctx, new FrameBudget(parseRate(env.FRAME_RATE, DEFAULT_FRAME_RATE)))
    // Handed over from the room's alarm, which activity arms anyway: no timer keeps the room awake for it.
    this.metrics = new Metrics(env, `room:${ctx.id.toString()}`, { refresh: () => this.metrics.gauge(Gauge.d1FlushLag, this.flushLagSeconds()), quietMs: 'owner' })
    // Synchronous: nothing to wait for, and no extra turn before the first call.
    migrateRoom(this.sql)
    this.loadState()
  }

  private loadState() {
    const meta = new Map(this.sql.exec<{ key: string; value: string }>('SELECT key, value FROM meta').toArray().map((r) => [r.key, r.value]))
    this.conversationId = meta.get('conversation_id') ?? null
    this.kind = meta.get('kind') === 'group' ? 'group' : 'direct'
    // Rooms loaded before history was sharded have no entry: their history is in the main database.
    this.historyShard = meta.get('history_shard') ?? MAIN
    this.keepDays = parseKeepDays(meta.get('keep_days'))
    this.historyFrom = Number(meta.get('history_from') ?? 1)
    this.d1ExpireTo = Number(meta.get('d1_expire_to') ?? 0)
    this.d1Expired = Number(meta.get('d1_expired') ?? 0)
    this.blocked = meta.get('blocked') === '1'
    this.members = new Map(
      this.sql
        .exec<{ user_id: string; role: Role; delivered_seq: number; read_seq: number; joined_seq: number }>('SELECT * FROM members')
        .toArray()
        .map((m) => [m.user_id, { role: m.role, deliveredSeq: m.delivered_seq, readSeq: m.read_seq, joinedSeq: m.joined_seq }]),
    )
    // An expired log may be empty: seqs go on from where it ended, never from 1 again.
    this.lastSeq = Math.max(this.sql.exec<{ s: number | null }>('SELECT max(seq) AS s FROM events').one().s ?? 0, this.historyFrom - 1)
    // A sender's cursors move with each event they write but are stored a tick later: events after
    // the stored mark say how far each sender had read (a crash in between loses no own message to
    // "unread"). Other members' moves since the mark are lost, which costs only resends.
    this.cursorsSeqSaved = Number(meta.get('cursors_seq') ?? 0)
    for (const r of this.sql.exec<{ sender_id: string; s: number }>('SELECT sender_id, max(seq) AS s FROM events WHERE seq > ? GROUP BY sender_id', this.cursorsSeqSaved)) {
      const m = this.members.get(r.sender_id)
      // Someone who left and came back since: what they wrote before does not count for now.
      if (m && m.readSeq < r.s && r.s >= m.joinedSeq) this.movedByOwnWrite(r.sender_id, m, r.s)
    }
    this.d1Seq = Math.min(this.lastSeq, Number(meta.get('d1_seq') ?? 0))
    this.d1SeqSaved = this.d1Seq
    this.activityMirroredAt = this.activityMirroredSaved = Number(meta.get('activity_mirrored_at') ?? 0)
    this.activitySeq = this.d1Seq
    this.readPendingStored = meta.has('d1_read_pending')
    for (const id of JSON.parse(meta.get('d1_read_pending') ?? '[]') as string[]) this.readDirty.add(id)
    if (this.pendingD1() > 0) this.scheduleFlush()
  }

  /**
   * The first call for a conversation copies its membership from D1, where the Worker created it.
   * Calls that arrive meanwhile wait on the same load, and resume in arrival order.
   */
  private ensureLoaded(conversationId: string): RoomResult<null> | Promise<RoomResult<null>> {
    if (this.conversationId === conversationId) return ok(null)
    if (this.conversationId !== null) return fail(ErrorCode.NOT_FOUND, 'conversation not found')
    this.loading ??= this.load(conversationId).finally(() => {
      this.loading = null
    })
    return this.loading.then((r) => (r.ok && this.conversationId !== conversationId ? fail(ErrorCode.NOT_FOUND, 'conversation not found') : r))
  }

  private async load(conversationId: string): Promise<RoomResult<null>> {
    const [conv, people, blockRows] = await this.env.DB.batch<{ kind?: string; history_shard?: string; retention_days?: number | null; user_id?: string; role?: Role; joined_seq?: number; n?: number }>([
      this.env.DB.prepare('SELECT kind, history_shard, retention_days FROM conversations WHERE id = ?').bind(conversationId),
      this.env.DB.prepare('SELECT user_id, role, joined_seq FROM members WHERE conversation_id = ?').bind(conversationId),
      // A direct chat takes writes between friends only, and not across a block (see social/direct-room.ts).
      this.env.DB.prepare(
        `SELECT (SELECT count(*) FROM blocks WHERE blocker_id IN (SELECT user_id FROM members WHERE conversation_id = ?1)
           AND blocked_id IN (SELECT user_id FROM members WHERE conversation_id = ?1))
         + (SELECT CASE WHEN count(*) = 2 THEN 0 ELSE 1 END FROM friendships WHERE user_id IN (SELECT user_id FROM members WHERE conversation_id = ?1)
           AND friend_id IN (SELECT user_id FROM members WHERE conversation_id = ?1)) AS n`,
      ).bind(conversationId),
    ])
    const kind = conv!.results[0]?.kind
    if (!kind || people!.results.length === 0) return fail(ErrorCode.NOT_FOUND, 'conversation not found')
    const blocked = kind === 'direct' && (blockRows!.results[0]?.n ?? 0) > 0
    this.ctx.storage.transactionSync(() => {
      this.sql.exec(
        `INSERT OR REPLACE INTO meta (key, value) VALUES ('conversation_id', ?), ('kind', ?), ('version', ?), ('blocked', ?), ('d1_seq', '0'), ('history_shard', ?), ('keep_days', ?)`,
        conversationId, kind, String(ROOM_SCHEMA_VERSION), blocked ? '1' : '0', conv!.results[0]!.history_shard ?? MAIN, String(conv!.results[0]!.retention_days ?? ''),
      )
      for (const m of people!.results) {
        this.sql.exec('INSERT OR IGNORE INTO members (user_id, role, joined_seq) VALUES (?, ?, ?)', m.user_id!, m.role!, m.joined_seq ?? 0)
      }
    })
    this.loadState()
    return ok(null)
  }

  private async authorize(conversationId: string, userId: string): Promise<RoomResult<Member>> {
    const loaded = await this.ensureLoaded(conversationId)
    if (!loaded.ok) return loaded
    const member = this.members.get(userId)
    return member ? ok(member) : fail(ErrorCode.NOT_MEMBER, 'not a member of this conversation')
  }

  /**
   * Runs one sender's writes in the order they arrived. A write that waits for nothing runs at
   * once; only writes behind one that awaits I/O (a media claim, the first load) queue up.
   */
  private inSenderOrder<T>(senderId: string, task: () => Promise<T>): Promise<T> {
    const prev = this.senderTails.get(senderId)
    const run = prev ? prev.then(task, task) : task()
    const tail = run.catch(() => undefined)
    this.senderTails.set(senderId, tail)
    void tail.then(() => {
      if (this.senderTails.get(senderId) === tail) this.senderTails.delete(senderId)
    })
    return run
  }

  /**
   * Every write: check the actor may, answer a retry with its first ack, then `act`. `act` is
   * synchronous, so nothing interleaves between reading lastSeq and the commit: seq stays gapless.
   */
  private write(
    conversationId: string,
    actorId: string,
    clientMsgId: string,
    need: 'member' | 'admin' | 'owner',
    act: (member: Member) => RoomResult<Ack>,
  ): Promise<RoomResult<Ack>> {
    return this.inSenderOrder(actorId, async () => this.counted(await this.writeNow(conversationId, actorId, clientMsgId, need, act)))
  }

  /** A write's outcome, counted: refusals by code. */
  private counted(result: RoomResult<Ack>): RoomResult<Ack> {
    if (result.ok) return result
    this.metrics.count(Counter.messagesRefused, result.code)
    if (result.code === ErrorCode.RATE_LIMITED) this.metrics.count(Counter.rateLimited, 'room')
    // A refusal commits nothing, so no alarm may come to hand its count over: a timer then.
    if (this.alarmAt === null) this.metrics.handOverLater()
    return result
  }

  /** `write` for a caller already in its sender's order. */
  private async writeNow(
    conversationId: string,
    actorId: string,
    clientMsgId: string,
    need: 'member' | 'admin' | 'owner',
    act: (member: Member) => RoomResult<Ack>,
  ): Promise<RoomResult<Ack>> {
    const auth = await this.authorize(conversationId, actorId)
    if (!auth.ok) return auth
    // A retry of an acked write is answered with its ack whatever changed since (a block, the
    // rate, the recall window): a refusal looks for it first. A write that passes finds it at the
    // insert (commit), so the usual write pays no lookup of its own.
    const refused = (failure: RoomResult<never>) => {
      const dup = this.findBySender(actorId, clientMsgId)
      return dup ? ok(dup) : failure
    }
    if (this.blocked) return refused(fail(ErrorCode.FORBIDDEN, 'you can message this person only while you are friends and neither has blocked the other'))
    if (need !== 'member') {
      if (this.kind !== 'group') return refused(fail(ErrorCode.NOT_ALLOWED, 'only groups have members to manage'))
      const allowed = need === 'owner' ? auth.value.role === 'owner' : auth.value.role === 'owner' || auth.value.role === 'admin'
      if (!allowed) return refused(fail(ErrorCode.NOT_ALLOWED, need === 'owner' ? 'only the owner can do that' : 'only admins can do that'))
    }
    if (!this.limiter.take(actorId, this.now())) return refused(fail(ErrorCode.RATE_LIMITED, 'slow down: too many messages'))
    const result = act(auth.value)
    if (!result.ok) return refused(result)
    // A retry found at the insert took a token it must not be charged.
    if (result.value.duplicate) this.limiter.give(actorId)
    return result
  }

  private findBySender(senderId: string, clientMsgId: string): Ack | null {
    const row = this.sql
      .exec<{ seq: number; created_at: number }>('SELECT seq, created_at FROM events WHERE sender_id = ? AND client_msg_id = ?', senderId, clientMsgId)
      .toArray()[0]
    return row ? { conversationId: this.conversationId!, clientMsgId, seq: row.seq, serverTs: row.created_at, duplicate: true } : null
  }

  /** A message the member may see: sent at or after their joining point, as history and sync hold them to. */
  private visibleMessage(member: Member, seq: number): EventRow | undefined {
    if (seq < member.joinedSeq) return undefined
    const row = this.eventRow(seq)
    return row?.type === 'message' ? row : undefined
  }

  private eventRow(seq: number): EventRow | undefined {
    return this.sql.exec<EventRow>(`SELECT ${EVENT_COLUMNS} FROM events WHERE seq = ?`, seq).toArray()[0]
  }

  /**
   * Appends one event and whatever it changes in earlier rows: one transaction, with no await
   * between it and the ack, so events that arrive together share a commit. `mutate` returns
   * earlier seqs whose D1 copy must be rewritten. Fan-out goes to every member but the writer when
   * the writer's own hub shows it (`origin: 'hub'`), plus `alsoTell` (people just removed).
   */
  private commit(event: ConversationEvent, mutate: () => number[] = () => [], alsoTell: string[] = [], origin: WriteOrigin = 'http'): Ack {
    const row = eventToRow(event)
    let duplicate = false
    this.ctx.storage.transactionSync(() => {
      // A retry of an acked write: (sender, clientMsgId) is taken, and nothing is written.
      duplicate = this.sql.exec(
        `INSERT INTO events (${EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sender_id, client_msg_id) DO NOTHING`,
        row.seq, row.type, row.sender_id, row.client_msg_id, row.kind, row.body, row.target_seq, row.edited_at, row.recalled_by, row.recalled_by_admin, row.created_at,
      ).rowsWritten === 0
      if (duplicate) return
      for (const seq of mutate()) {
        this.sql.exec('INSERT INTO d1_dirty (seq, gen) VALUES (?, ?) ON CONFLICT (seq) DO UPDATE SET gen = excluded.gen', seq, event.seq)
      }
      this.saveD1Mark()
      this.persistCursors()
    })
    if (duplicate) return this.findBySender(event.senderId, event.clientMsgId)!
    this.lastSeq = event.seq
    if (event.type === 'message') this.metrics.count(Counter.messagesAccepted)
    this.recent.push({ seq: event.seq, senderId: event.senderId, message: event.type === 'message' })
    if (this.recent.length > RECENT_EVENTS) this.recent.splice(0, this.recent.length - RECENT_EVENTS)
    if (event.type === 'member') this.reloadMembers()
    // Sending implies having read everything before it. Not written with the event (a second
    // statement in every commit cost ~8 % of the 100-conversation rate) nor by a commit of its own
    // (one more a tick at the pace people type): the log says it, so it is stored when a commit
    // that is made anyway carries it (the alarm's, a flush's), and a wake reads it back (loadState).
    // Looked up again: someone who just left is no longer a member.
    const writer = this.members.get(event.senderId)
    if (writer) this.movedByOwnWrite(event.senderId, writer, event.seq)
    this.armFlushAlarm()
    this.fanOut(event, origin === 'hub' ? event.senderId : null, alsoTell, typeof origin === 'object' ? origin.session : undefined)
    this.scheduleFlush()
    const receipts = origin === 'hub' ? this.takeReceipts(event.senderId) : undefined
    return { conversationId: event.conversationId, clientMsgId: event.clientMsgId, seq: event.seq, serverTs: event.serverTs, duplicate: false, event, ...(receipts ? { receipts } : {}) }
  }

  async appendMessage(conversationId: string, senderId: string, clientMsgId: string, body: unknown, origin: WriteOrigin = 'http'): Promise<RoomResult<Ack>> {
    // A hub or a writer socket parsed the whole frame with the same schema; HTTP bodies are checked here.
    const parsed = origin !== 'http' ? { success: true as const, data: body as MessageBody } : MessageBody.safeParse(body)
    if (!parsed.success) return fail(ErrorCode.BAD_REQUEST, parsed.error.issues[0]?.message ?? 'invalid body')
    let message: MessageBody = parsed.data
    const replyTo = message.kind === 'text' ? message.replyTo?.seq : undefined
    if (message.kind !== 'text') {
      const media = message
      // The claim waits for D1: later writes of this sender wait behind it, so order holds.
      return this.inSenderOrder(senderId, async () => {
        // Membership first, so nobody claims an upload into a conversation they are not in.
        const auth = await this.authorize(conversationId, senderId)
        if (!auth.ok) return auth
        if (!this.findBySender(senderId, clientMsgId)) {
          const filled = await this.claimMedia(conversationId, senderId, media)
          if (!filled.ok) return filled
          message = filled.value
        }
        return this.counted(await this.writeNow(conversationId, senderId, clientMsgId, 'member', this.messageWriter(conversationId, senderId, clientMsgId, message, undefined, origin)))
      })
    }
    return this.write(conversationId, senderId, clientMsgId, 'member', this.messageWriter(conversationId, senderId, clientMsgId, message, replyTo, origin))
  }

  private messageWriter(conversationId: string, senderId: string, clientMsgId: string, message: MessageBody, replyTo: number | undefined, origin: WriteOrigin) {
    return (member: Member): RoomResult<Ack> => {
      if (replyTo !== undefined && (replyTo < member.joinedSeq || this.eventRow(replyTo)?.type !== 'message')) return fail(ErrorCode.BAD_REQUEST, 'replyTo: no such message')
      return ok(this.commit({ type: 'message', conversationId, seq: this.lastSeq + 1, senderId, clientMsgId, serverTs: this.now(), body: message }, undefined, [], origin))
    }
  }

  /**
   * Ties the sender's finished uploads to this conversation (so its members may download them)
   * and fills the body with what the server read from the bytes. Claiming is idempotent for the
   * same conversation, so a retried send works; an upload cannot move to another conversation.
   */
  private async claimMedia(conversationId: string, senderId: string, body: MediaBody): Promise<RoomResult<MediaBody>> {
    const ids = mediaIdsOf(body)
    // min_seq: the message will get a seq after everything the log holds now, so members who
    // join later are never let in; D1's copy of the message sets the exact seq.
    const claim = this.env.DB.prepare(
      `UPDATE media SET conversation_id = ?1, min_seq = coalesce(min_seq, ?4) WHERE id = ?2 AND owner_id = ?3 AND status = 'ready' AND (conversation_id IS NULL OR conversation_id = ?1)`,
    )
    const results = await this.env.DB.batch<{ id: string; kind: string; mime: string; size: number; duration_ms: number | null; width: number | null; height: number | null; conversation_id: string | null; owner_id: string; status: string }>([
      ...ids.map((id) => claim.bind(conversationId, id, senderId, this.lastSeq + 1)),
      this.env.DB.prepare(`SELECT * FROM media WHERE id IN (${ids.map(() => '?').join(', ')})`).bind(...ids),
    ])
    const rows = new Map(results[results.length - 1]!.results.map((r) => [r.id, r]))
    const want = body.kind === 'file' ? 'file' : body.kind === 'voice' ? 'voice' : 'image'
    for (const id of ids) {
      const r = rows.get(id)
      if (!r || r.owner_id !== senderId || r.status !== 'ready' || r.conversation_id !== conversationId) return fail(ErrorCode.NOT_FOUND, 'no such upload: finish uploading before sending')
      if (r.kind !== want) return fail(ErrorCode.BAD_REQUEST, `a ${body.kind} message needs a ${want} upload`)
    }
    const main = rows.get(body.mediaId)!
    const server = { mime: main.mime, size: main.size }
    switch (body.kind) {
      case 'voice':
        return ok({ ...body, ...server, durationMs: main.duration_ms ?? 0 })
      case 'image':
        return ok({ ...body, ...server, width: main.width ?? undefined, height: main.height ?? undefined })
      case 'file':
        return ok({ ...body, ...server })
    }
  }

  /** A reaction is an event of its own; clients fold it into the message it points at. */
  async react(conversationId: string, userId: string, clientMsgId: string, targetSeq: number, emoji: string, on: boolean, origin: WriteOrigin = 'http'): Promise<RoomResult<Ack>> {
    return this.write(conversationId, userId, clientMsgId, 'member', (member) => {
      const target = this.visibleMessage(member, targetSeq)
      if (!target || target.recalled_by !== null) return fail(ErrorCode.NOT_FOUND, 'no such message')
      return ok(this.commit({ type: 'reaction', conversationId, seq: this.lastSeq + 1, senderId: userId, clientMsgId, serverTs: this.now(), targetSeq, emoji, on }, undefined, [], origin))
    })
  }

  async edit(conversationId: string, userId: string, clientMsgId: string, targetSeq: number, body: unknown, origin: WriteOrigin = 'http'): Promise<RoomResult<Ack>> {
    const parsed = TextBody.safeParse(body)
    if (!parsed.success) return fail(ErrorCode.BAD_REQUEST, parsed.error.issues[0]?.message ?? 'invalid body')
    return this.write(conversationId, userId, clientMsgId, 'member', (member) => {
      const target = this.visibleMessage(member, targetSeq)
      if (!target) return fail(ErrorCode.NOT_FOUND, 'no such message')
      if (target.sender_id !== userId) return fail(ErrorCode.NOT_ALLOWED, 'only the sender can edit a message')
      if (target.recalled_by !== null) return fail(ErrorCode.NOT_ALLOWED, 'the message was recalled')
      if (target.kind !== 'text') return fail(ErrorCode.NOT_ALLOWED, 'only text messages can be edited')
      const now = this.now()
      if (now - target.created_at > EDIT_WINDOW_MS) return fail(ErrorCode.TOO_LATE, 'the message is too old to edit')
      const text = JSON.stringify(parsed.data)
      return ok(
        this.commit({ type: 'edit', conversationId, seq: this.lastSeq + 1, senderId: userId, clientMsgId, serverTs: now, targetSeq, body: parsed.data }, () => {
          this.sql.exec('UPDATE events SET body = ?, edited_at = ? WHERE seq = ?', text, now, targetSeq)
          return [targetSeq]
        }, [], origin),
      )
    })
  }

  /** Erases a message's content from the log (and so from D1 and every device): the sender within the window, or a group admin. */
  async recall(conversationId: string, userId: string, clientMsgId: string, targetSeq: number, origin: WriteOrigin = 'http'): Promise<RoomResult<Ack>> {
    return this.write(conversationId, userId, clientMsgId, 'member', (member) => {
      const target = this.visibleMessage(member, targetSeq)
      if (!target) return fail(ErrorCode.NOT_FOUND, 'no such message')
      if (target.recalled_by !== null) return fail(ErrorCode.NOT_ALLOWED, 'the message was already recalled')
      const now = this.now()
      const isSender = target.sender_id === userId
      const isModerator = this.kind === 'group' && (member.role === 'owner' || member.role === 'admin')
      if (!isSender && !isModerator) return fail(ErrorCode.NOT_ALLOWED, 'only the sender or a group admin can recall a message')
      // Moderation goes down the ranks: an admin removes members' messages, only the owner an admin's, nobody the owner's.
      if (!isSender && RANK[member.role] <= RANK[this.members.get(target.sender_id)?.role ?? 'member']) {
        return fail(ErrorCode.NOT_ALLOWED, 'admins can remove messages of members, and only the owner those of admins')
      }
      if (isSender && !isModerator && now - target.created_at > RECALL_WINDOW_MS) {
        return fail(ErrorCode.TOO_LATE, `messages can be recalled for ${RECALL_WINDOW_MS / 1000} seconds`)
      }
      const byAdmin = !isSender
      return ok(this.commit({ type: 'recall', conversationId, seq: this.lastSeq + 1, senderId: userId, clientMsgId, serverTs: now, targetSeq, byAdmin }, () => this.erase(target, userId, Number(byAdmin)), [], origin))
    })
  }

  /** Inside a recall's commit: the content goes from the log (and its edits); D1 gets the rewrite. */
  private erase(target: EventRow, by: string, byCode: number): number[] {
    this.purgeMediaOf(target)
    this.sql.exec('UPDATE events SET body = NULL, kind = NULL, recalled_by = ?, recalled_by_admin = ? WHERE seq = ?', by, byCode, target.seq)
    const edits = this.sql.exec<{ seq: number }>(`SELECT seq FROM events WHERE type = 'edit' AND target_seq = ?`, target.seq).toArray().map((r) => r.seq)
    this.sql.exec(`UPDATE events SET body = NULL WHERE type = 'edit' AND target_seq = ?`, target.seq)
    return [target.seq, ...edits]
  }

  /**
   * The one erase path of recall and retention, part of their transaction: a message's blobs are
   * queued, and the flush deletes them from R2 and marks them gone in D1 (purgeMedia).
   */
  private purgeMediaOf(row: Pick<EventRow, 'type' | 'body'>) {
    if (row.type !== 'message' || !row.body) return
    for (const id of mediaIdsOf(JSON.parse(row.body) as MessageBody)) {
      this.sql.exec('INSERT OR IGNORE INTO media_purge (media_id) VALUES (?)', id)
      this.purgePending = true
    }
  }

  // ---- retention ----

  /** Who may: anyone in a direct chat, admins in a group. Recorded as an event, so every member sees the change. */
  async setRetention(conversationId: string, actorId: string, clientMsgId: string, keepDays: KeepDays | null): Promise<RoomResult<Ack>> {
    const loaded = await this.ensureLoaded(conversationId)
    if (!loaded.ok) return loaded
    return this.flushedFirst(this.write(conversationId, actorId, clientMsgId, this.kind === 'group' ? 'admin' : 'member', () => {
      const ack = this.commit({ type: 'retention', conversationId, seq: this.lastSeq + 1, senderId: actorId, clientMsgId, serverTs: this.now(), keepDays }, () => {
        this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('keep_days', ?)`, String(keepDays ?? ''))
        return []
      })
      if (!ack.duplicate) this.keepDays = keepDays
      return ok(ack)
    }))
  }

  /** The days history is kept now (0: forever). */
  private retentionDays(): number {
    return this.keepDays ?? defaultKeepDays(this.env)
  }

  /**
   * Deletes the front of the log older than the retention allows, at most EXPIRE_BATCH events a
   * call, with their blobs; D1 follows in the flush this call waits for. `now` is the sweep's clock.
   */
  async expire(conversationId: string, now: number): Promise<RoomResult<{ expired: number; more: boolean }>> {
    const loaded = await this.ensureLoaded(conversationId)
    if (!loaded.ok) return loaded
    const days = this.retentionDays()
    let expired = 0
    let more = false
    if (days > 0) {
      const cutoff = now - days * DAY_MS
      // Only what D1 already has, as it is now: an event's own mirror (members, title) must not be skipped.
      const firstDirty = this.sql.exec<{ s: number | null }>('SELECT min(seq) AS s FROM d1_dirty').one().s
      const ceiling = Math.min(this.d1Seq, (firstDirty ?? Infinity) - 1)
      const rows = this.sql.exec<Pick<EventRow, 'seq' | 'type' | 'body' | 'created_at'>>('SELECT seq, type, body, created_at FROM events WHERE seq <= ? ORDER BY seq LIMIT ?', ceiling, EXPIRE_BATCH + 1).toArray()
      // A prefix: the first event still inside the window keeps everything after it.
      const kept = rows.findIndex((r) => r.created_at >= cutoff)
      const due = rows.slice(0, Math.min(EXPIRE_BATCH, kept < 0 ? rows.length : kept))
      expired = due.length
      more = expired === EXPIRE_BATCH && (rows[EXPIRE_BATCH]?.created_at ?? Infinity) < cutoff
      const through = due[due.length - 1]?.seq
      if (through !== undefined) {
        this.ctx.storage.transactionSync(() => {
          for (const r of due) this.purgeMediaOf(r)
          this.sql.exec('DELETE FROM events WHERE seq <= ?', through)
          this.sql.exec('DELETE FROM d1_dirty WHERE seq <= ?', through)
          this.historyFrom = through + 1
          this.d1ExpireTo = through
          this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('history_from', ?), ('d1_expire_to', ?)`, String(this.historyFrom), String(through))
          // The log rows that would say how far senders had read go now: their cursors are stored first.
          this.persistAllCursors()
        })
        this.recent = this.recent.filter((r) => r.seq > through)
        // Should D1 fail now, the alarm deletes there later.
        this.armFlushAlarm()
      }
    }
    await this.flushNow()
    return ok({ expired, more })
  }

  /**
   * When the oldest kept event expires, for the sweep's index in D1: null when history is kept
   * forever, NOTHING_KEPT when retention is on and the log is empty (so the sweep need not ask).
   */
  private nextExpiry(): number | null {
    const days = this.retentionDays()
    if (days === 0) return null
    const first = this.sql.exec<{ created_at: number }>('SELECT created_at FROM events ORDER BY seq LIMIT 1').toArray()[0]
    return first ? first.created_at + days * DAY_MS : NOTHING_KEPT
  }

  // ---- moderation of the service ----

  /** A copy of a message a member reports, as the member sees it now. */
  async reportedMessage(conversationId: string, reporterId: string, seq: number): Promise<RoomResult<{ senderId: string; serverTs: number; body: MessageBody }>> {
    const auth = await this.authorize(conversationId, reporterId)
    if (!auth.ok) return auth
    const target = this.visibleMessage(auth.value, seq)
    if (!target || target.body === null) return fail(ErrorCode.NOT_FOUND, 'no such message')
    return ok({ senderId: target.sender_id, serverTs: target.created_at, body: JSON.parse(target.body) as MessageBody })
  }

  /**
   * A moderator removes a message after a report: a recall with no time limit, by someone who is
   * not a member, shown as "removed by a moderator". Erased everywhere like any recall.
   */
  async removeByModerator(conversationId: string, clientMsgId: string, targetSeq: number): Promise<RoomResult<Ack>> {
    const loaded = await this.ensureLoaded(conversationId)
    if (!loaded.ok) return loaded
    return this.inSenderOrder(MODERATOR_ID, async () => {
      const dup = this.findBySender(MODERATOR_ID, clientMsgId)
      if (dup) return ok(dup)
      const target = this.eventRow(targetSeq)
      if (!target || target.type !== 'message') return fail(ErrorCode.NOT_FOUND, 'no such message')
      if (target.recalled_by !== null) return fail(ErrorCode.CONFLICT, 'the message was already removed')
      // Members see "a moderator", never which one: the audit log keeps who.
      return ok(this.commit({ type: 'recall', conversationId, seq: this.lastSeq + 1, senderId: MODERATOR_ID, clientMsgId, serverTs: this.now(), targetSeq, byAdmin: true, byModerator: true }, () => this.erase(target, MODERATOR_ID, MODERATOR)))
    })
  }

  // ---- membership (groups) ----

  async setBlocked(conversationId: string, blocked: boolean): Promise<void> {
    if (!(await this.ensureLoaded(conversationId)).ok) return
    this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('blocked', ?)`, blocked ? '1' : '0')
    this.blocked = blocked
  }


  private memberEvent(conversationId: string, actorId: string, clientMsgId: string, action: MemberEvent['action'], userIds: string[], role?: Role): MemberEvent {
    return { type: 'member', conversationId, seq: this.lastSeq + 1, senderId: actorId, clientMsgId, serverTs: this.now(), action, userIds, ...(role ? { role } : {}) }
  }

  /** Records a new group's first members (already in D1 and loaded) as the log's first event. */
  async announceMembers(conversationId: string, actorId: string, clientMsgId: string): Promise<RoomResult<Ack>> {
    return this.flushedFirst(this.write(conversationId, actorId, clientMsgId, 'owner', () => {
      if (this.lastSeq > 0) return fail(ErrorCode.CONFLICT, 'the group already has history')
      const others = [...this.members.keys()].filter((id) => id !== actorId)
      return ok(this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'added', others)))
    }))
  }

  /** Adds people (the Worker has checked they exist and may be added by this actor). */
  async addMembers(conversationId: string, actorId: string, clientMsgId: string, userIds: string[]): Promise<RoomResult<Ack>> {
    return this.flushedFirst(this.write(conversationId, actorId, clientMsgId, 'admin', () => {
      const fresh = [...new Set(userIds)].filter((id) => !this.members.has(id))
      if (fresh.length === 0) return fail(ErrorCode.CONFLICT, 'they are already members')
      if (this.members.size + fresh.length > groupLimit(this.env)) return fail(ErrorCode.NOT_ALLOWED, `a group holds at most ${groupLimit(this.env)} people`)
      const event = this.memberEvent(conversationId, actorId, clientMsgId, 'added', fresh)
      return ok(
        this.commit(event, () => {
          for (const id of fresh) this.sql.exec(`INSERT INTO members (user_id, role, joined_seq) VALUES (?, 'member', ?)`, id, event.seq)
          return []
        }),
      )
    }))
  }

  /** An admin removes a member; only the owner removes admins; nobody removes the owner. */
  async removeMember(conversationId: string, actorId: string, clientMsgId: string, targetId: string): Promise<RoomResult<Ack>> {
    return this.flushedFirst(this.write(conversationId, actorId, clientMsgId, 'admin', (member) => {
      const target = this.members.get(targetId)
      if (!target) return fail(ErrorCode.NOT_FOUND, 'not a member')
      if (targetId === actorId) return fail(ErrorCode.BAD_REQUEST, 'use leave to leave a group')
      if (target.role === 'owner' || (target.role === 'admin' && member.role !== 'owner')) {
        return fail(ErrorCode.NOT_ALLOWED, 'only the owner can remove an admin, and nobody can remove the owner')
      }
      return ok(this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'removed', [targetId]), () => this.dropMember(targetId), [targetId]))
    }))
  }

  /** Leaving as owner hands the group to the longest-standing admin, else member. */
  async leave(conversationId: string, userId: string, clientMsgId: string): Promise<RoomResult<Ack>> {
    return this.flushedFirst(this.write(conversationId, userId, clientMsgId, 'member', (member) => {
      if (this.kind !== 'group') return fail(ErrorCode.NOT_ALLOWED, 'you can leave groups, not direct chats')
      const ack = this.commit(this.memberEvent(conversationId, userId, clientMsgId, 'left', [userId]), () => this.dropMember(userId), [userId])
      if (member.role === 'owner' && this.members.size > 0) {
        const heir = [...this.members].sort(([, a], [, b]) => (a.role === 'admin' ? 0 : 1) - (b.role === 'admin' ? 0 : 1) || a.joinedSeq - b.joinedSeq)[0]![0]
        this.commit(this.memberEvent(conversationId, userId, `${clientMsgId}:heir`, 'role', [heir], 'owner'), () => this.setRoleRow(heir, 'owner'))
      }
      return ok(ack)
    }))
  }

  async setRole(conversationId: string, actorId: string, clientMsgId: string, targetId: string, role: 'admin' | 'member'): Promise<RoomResult<Ack>> {
    return this.flushedFirst(this.write(conversationId, actorId, clientMsgId, 'owner', () => {
      const target = this.members.get(targetId)
      if (!target || targetId === actorId) return fail(ErrorCode.NOT_FOUND, 'not another member')
      return ok(this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'role', [targetId], role), () => this.setRoleRow(targetId, role)))
    }))
  }

  /** The owner makes another member owner and becomes an admin. */
  async transferOwnership(conversationId: string, actorId: string, clientMsgId: string, targetId: string): Promise<RoomResult<Ack>> {
    return this.flushedFirst(this.write(conversationId, actorId, clientMsgId, 'owner', () => {
      if (!this.members.has(targetId) || targetId === actorId) return fail(ErrorCode.NOT_FOUND, 'not another member')
      const ack = this.commit(this.memberEvent(conversationId, actorId, clientMsgId, 'role', [targetId], 'owner'), () => this.setRoleRow(targetId, 'owner'))
      this.commit(this.memberEvent(conversationId, actorId, `${clientMsgId}:demote`, 'role', [actorId], 'admin'), () => this.setRoleRow(actorId, 'admin'))
      return ok(ack)
    }))
  }

  async rename(conversationId: string, actorId: string, clientMsgId: string, title: string): Promise<RoomResult<Ack>> {
    return this.flushedFirst(this.write(conversationId, actorId, clientMsgId, 'admin', () =>
      ok(this.commit({ type: 'renamed', conversationId, seq: this.lastSeq + 1, senderId: actorId, clientMsgId, serverTs: this.now(), title })),
    ))
  }

  private dropMember(userId: string): number[] {
    this.sql.exec('DELETE FROM members WHERE user_id = ?', userId)
    this.writers.close(userId, null, ErrorCode.NOT_MEMBER)
    // Out of the group, out of its voice room and its call at once (the calls leave after this commit, as every output does).
    const conversationId = this.conversationId!
    void getVoiceRoom(this.env, conversationId)
      .dropUser(conversationId, userId)
      .catch((e: unknown) => console.warn('voice room drop failed', String(e)))
    void dropFromCall(this.env, conversationId, userId, this.liveCall).catch((e: unknown) => console.warn('call drop failed', String(e)))
    return []
  }

  /** A call started here (in memory: a room that restarts meanwhile finds joined people through their hubs only). */
  async callStarted(conversationId: string, callId: string): Promise<void> {
    if (this.conversationId === null || this.conversationId === conversationId) this.liveCall = callId
  }

  /** The end of a call, written by its CallRoom in the caller's name, once (the clientMsgId is the call's). */
  async callEnded(conversationId: string, callerId: string, clientMsgId: string, video: boolean, outcome: CallOutcome, durationMs: number): Promise<RoomResult<Ack>> {
    return this.appendOnce(conversationId, callerId, clientMsgId, (base) => ({ ...base, type: 'call', video, outcome, durationMs }))
  }

  /**
   * The end of a voice room, as an event of the log. Written by the room's VoiceRoom object on
   * behalf of whoever started it (who may have left the group since), once per room: a retry with
   * the same clientMsgId gets the first ack.
   */
  async voiceEnded(conversationId: string, starterId: string, clientMsgId: string, startedAt: number, durationMs: number, people: number): Promise<RoomResult<Ack>> {
    return this.appendOnce(conversationId, starterId, clientMsgId, (base) => ({ ...base, type: 'voice', startedAt, durationMs, people }))
  }

  /** A system event in someone's name that is not theirs to write (no membership or rate check), deduplicated by clientMsgId. */
  private appendOnce(conversationId: string, senderId: string, clientMsgId: string, make: (base: { conversationId: string; seq: number; senderId: string; clientMsgId: string; serverTs: number }) => ConversationEvent): Promise<RoomResult<Ack>> {
    return this.inSenderOrder(senderId, async () => {
      const loaded = await this.ensureLoaded(conversationId)
      if (!loaded.ok) return loaded
      const dup = this.findBySender(senderId, clientMsgId)
      if (dup) return ok(dup)
      return ok(this.commit(make({ conversationId, seq: this.lastSeq + 1, senderId, clientMsgId, serverTs: this.now() })))
    })
  }


  private setRoleRow(userId: string, role: Role): number[] {
    this.sql.exec('UPDATE members SET role = ? WHERE user_id = ?', role, userId)
    return []
  }

  /** Membership after a member event: roles and joins from storage, cursors from memory (they may be ahead of it). */
  private reloadMembers() {
    const next = new Map<string, Member>()
    for (const r of this.sql.exec<{ user_id: string; role: Role; delivered_seq: number; read_seq: number; joined_seq: number }>('SELECT * FROM members')) {
      const known = this.members.get(r.user_id)
      next.set(r.user_id, {
        role: r.role,
        joinedSeq: r.joined_seq,
        deliveredSeq: Math.max(known?.deliveredSeq ?? 0, r.delivered_seq),
        readSeq: Math.max(known?.readSeq ?? 0, r.read_seq),
      })
    }
    for (const id of this.members.keys()) {
      if (next.has(id)) continue
      this.cursorsDirty.delete(id)
      this.ownDirty.delete(id)
      this.readDirty.delete(id)
    }
    this.members = next
  }

  /**
   * Membership changes come from the Worker, which reads members from D1 right after: D1 gets
   * them before the answer, not on the next tick.
   */
  private async flushedFirst(result: Promise<RoomResult<Ack>>): Promise<RoomResult<Ack>> {
    const r = await result
    // A failure is logged where every flush's is (beginFlush); the alarm retries.
    if (r.ok && !r.value.duplicate) await this.flushNow().catch(() => undefined)
    return r
  }

  // ---- receipts ----

  /**
   * Moves a member's cursors forward (never back), from their hub's batched confirmations. Nothing
   * is written here: cursors are persisted with the next event or the alarm. The members whose ticks change (senders
   * of the messages the move covers) hear of it; the caller's hub tells the member's own devices.
   */
  async moveCursors(conversationId: string, userId: string, delivered: number | null, read: number | null): Promise<RoomResult<{ receipt: Receipt; readMoved: boolean }>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    return ok(this.applyCursors(userId, auth.value, delivered, read))
  }

  private applyCursors(userId: string, m: Member, delivered: number | null, read: number | null): { receipt: Receipt; readMoved: boolean } {
    const oldRead = m.readSeq
    const oldDelivered = m.deliveredSeq
    const readSeq = read === null ? m.readSeq : Math.max(m.readSeq, Math.min(read, this.lastSeq))
    const deliveredSeq = Math.max(m.deliveredSeq, readSeq, delivered === null ? 0 : Math.min(delivered, this.lastSeq))
    const receipt: Receipt = { userId, deliveredSeq, readSeq }
    if (readSeq === oldRead && deliveredSeq === oldDelivered) return { receipt, readMoved: false }
    m.readSeq = readSeq
    m.deliveredSeq = deliveredSeq
    this.cursorsDirty.add(userId)
    if (readSeq !== oldRead) this.readDirty.add(userId)
    this.armFlushAlarm()
    this.scheduleFlush()
    const from = readSeq !== oldRead ? oldRead : oldDelivered
    for (const sender of this.sendersBetween(from, Math.max(readSeq, deliveredSeq))) if (sender !== userId) this.queueReceipt(sender, receipt)
    return { receipt, readMoved: readSeq !== oldRead }
  }

  /** Who sent the messages in (from, to]: from the recent-events window when it covers them, else the log. */
  private sendersBetween(from: number, to: number): Set<string> {
    const oldest = this.recent.length ? this.recent[0]!.seq : Infinity
    if (from + 1 >= oldest) return new Set(this.recent.filter((e) => e.seq > from && e.seq <= to && e.message).map((e) => e.senderId))
    return new Set(
      this.sql.exec<{ sender_id: string }>(`SELECT DISTINCT sender_id FROM events WHERE seq > ? AND seq <= ? AND type = 'message'`, from, to).toArray().map((r) => r.sender_id),
    )
  }

  private queueReceipt(to: string, receipt: Receipt) {
    let batch = this.receiptsOut.get(to)
    if (!batch) this.receiptsOut.set(to, (batch = new Map()))
    batch.set(receipt.userId, receipt)
    this.receiptTimer ??= setTimeout(() => this.sendReceipts(), RECEIPT_BATCH_MS)
  }

  /** Receipts waiting for `userId`, taken to ride on its ack. */
  private takeReceipts(userId: string): Receipt[] | undefined {
    const batch = this.receiptsOut.get(userId)
    if (!batch) return undefined
    this.receiptsOut.delete(userId)
    return [...batch.values()]
  }

  private sendReceipts() {
    this.receiptTimer = null
    const conversationId = this.conversationId!
    for (const [to, batch] of this.receiptsOut) {
      this.hub(to)
        .notify({ type: 'receipts', conversationId, receipts: [...batch.values()] })
        .catch((e: unknown) => console.warn('receipt fan-out failed', to, String(e)))
    }
    this.receiptsOut.clear()
  }

  /** Relays a typing signal to the other members; nothing is stored, repeats within a second are dropped. */
  async typing(conversationId: string, userId: string): Promise<RoomResult<null>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const now = this.now()
    if (this.blocked || now - (this.lastTyping.get(userId) ?? 0) < TYPING_MIN_INTERVAL_MS) return ok(null)
    this.lastTyping.set(userId, now)
    for (const memberId of this.members.keys()) {
      if (memberId === userId) continue
      this.hub(memberId)
        .notify({ type: 'typing', conversationId, userId })
        .catch((e: unknown) => console.warn('typing fan-out failed', memberId, String(e)))
    }
    return ok(null)
  }

  private receipts(): Receipt[] {
    return [...this.members].map(([userId, m]) => ({ userId, deliveredSeq: m.deliveredSeq, readSeq: m.readSeq }))
  }

  /**
   * Events after a cursor, oldest first, one page at a time, with every member's cursors. A page
   * stops at `limit` events or about SYNC_PAGE_BYTES of bodies, whichever comes first.
   */
  async eventsAfter(conversationId: string, userId: string, afterSeq: number, limit = SYNC_PAGE_LIMIT): Promise<RoomResult<SyncPage>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const n = Math.min(Math.max(1, limit), SYNC_PAGE_LIMIT)
    // History before a member joined stays with the members who were there.
    const from = Math.max(afterSeq, auth.value.joinedSeq - 1)
    const events: ConversationEvent[] = []
    let bytes = 0
    let hasMore = false
    for (const r of this.sql.exec<EventRow>(`SELECT ${EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, from, n + 1)) {
      if (events.length === n || (events.length > 0 && bytes > SYNC_PAGE_BYTES)) {
        hasMore = true
        break
      }
      bytes += 120 + (r.body?.length ?? 0)
      events.push(rowToEvent(conversationId, r))
    }
    return ok({ events, hasMore, lastSeq: this.lastSeq, receipts: this.receipts(), ...(this.historyFrom > 1 ? { historyFrom: this.historyFrom } : {}) })
  }

  /** One event as it stands now (content erased if recalled), for pushes built at send time. */
  async eventFor(conversationId: string, userId: string, seq: number): Promise<RoomResult<{ event: ConversationEvent | null; receipt: Receipt }>> {
    const auth = await this.authorize(conversationId, userId)
    if (!auth.ok) return auth
    const row = this.eventRow(seq)
    return ok({ event: row ? rowToEvent(conversationId, row) : null, receipt: { userId, deliveredSeq: auth.value.deliveredSeq, readSeq: auth.value.readSeq } })
  }

  /** One stub per member: deliveries on one stub arrive in the order they were made (E-order), so each hub gets events in seq order. */
  // ---- writer sockets: a member's writes straight to the room ----

  /** A writer socket's upgrade, its ticket verified by the Worker: members only, each ticket once. */
  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get('upgrade') !== 'websocket') return new Response('expected websocket', { status: 426 })
    const claims = upgradeClaims(request)
    const conversationId = request.headers.get(UPGRADE_HEADERS.conversationId)
    if (!claims || !conversationId) return new Response('bad upgrade', { status: 400 })
    const auth = await this.authorize(conversationId, claims.userId)
    // Outsiders learn nothing about the conversation, as over HTTP.
    if (!auth.ok) return Response.json(errorBody(ErrorCode.NOT_FOUND, 'no such conversation'), { status: 404 })
    if (!spendTicket(this.sql, claims.jti, claims.exp)) return Response.json(errorBody(ErrorCode.UNAUTHORIZED, 'ticket already used'), { status: 401 })
    const response = this.writers.accept(claims, conversationId)
    if (response.status === 101) this.askPeers(claims.userId)
    return response
  }

  override async webSocketMessage(ws: WebSocket, data: string | ArrayBuffer) {
    const arrivedAt = Date.now()
    const frame = this.writers.parse(ws, data, arrivedAt, (code) => {
      this.metrics.count(Counter.messagesRefused, code)
      if (code === ErrorCode.RATE_LIMITED) this.metrics.count(Counter.rateLimited, 'socket')
    })
    if (!frame) return
    const { msg, who } = frame
    if (msg.type === 'delivered') {
      // Only what this room sent on this socket is settled here; the cursor moves as from a hub's report.
      this.direct.confirm(ws, msg.seq, Date.now())
      const moved = await this.moveCursors(msg.conversationId, who.userId, msg.seq, null)
      if (!moved.ok) send(ws, errorFrame(moved.code, moved.message))
      return
    }
    const origin = { session: who.sessionId }
    // No await before the write: frames of one socket reach the sender's order in arrival order.
    const result =
      msg.type === 'send' ? await this.appendMessage(msg.conversationId, who.userId, msg.clientMsgId, msg.body, origin)
      : msg.type === 'edit' ? await this.edit(msg.conversationId, who.userId, msg.clientMsgId, msg.targetSeq, msg.body, origin)
      : msg.type === 'recall' ? await this.recall(msg.conversationId, who.userId, msg.clientMsgId, msg.targetSeq, origin)
      : await this.react(msg.conversationId, who.userId, msg.clientMsgId, msg.targetSeq, msg.emoji, msg.on, origin)
    if (!result.ok) return send(ws, errorFrame(result.code, result.message, msg.clientMsgId))
    const { seq, serverTs, event, duplicate } = result.value
    send(ws, { type: 'ack', conversationId: msg.conversationId, clientMsgId: msg.clientMsgId, seq, serverTs })
    // The ack leaves after the commit (the output gate holds it); the time is the room's part of it.
    if (msg.type === 'send' && !duplicate) this.metrics.observeSendAck(Date.now() - arrivedAt)
    // A text message the device builds from its outbox; anything else (a media body the server
    // filled in, an edit, a recall, a reaction) it gets as the event.
    if (event && !(event.type === 'message' && event.body?.kind === 'text')) send(ws, { type: 'event', event })
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string) {
    // What the socket had not confirmed goes to the hub now: it resends on the chat socket, or pushes.
    this.writers.closed(ws)
    const owed = this.direct.take(ws)
    if (owed) this.handOff([owed], true)
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason)
    } catch {
      // Already closed.
    }
  }

  override async webSocketError(ws: WebSocket) {
    await this.webSocketClose(ws, 1011, 'socket error')
  }

  /** Asks the writer's hub which of their devices are online (it reports changes after this, too). */
  private askPeers(userId: string) {
    const conversationId = this.conversationId
    if (!conversationId) return
    this.hub(userId)
      .writerOpened(userId, conversationId)
      .then((r) => void this.writers.setPeers(userId, r.version, r.sockets))
      .catch((e: unknown) => {
        this.hubs.delete(userId)
        console.warn('writer hub not asked', String(e))
      })
  }

  /** The hub's report of a writer's open sockets (their sessions); false when no writer socket of theirs is here (the hub forgets this room). */
  async writerPeers(conversationId: string, userId: string, version: number, sockets: string[] | null): Promise<boolean> {
    if (this.conversationId !== conversationId) return false
    return this.writers.setPeers(userId, version, sockets)
  }

  /** Closes a person's writer sockets here (a revoked session's, or all of a suspended person's). */
  async closeWriters(conversationId: string, userId: string, sessionId: string | null, reason: ErrorCode): Promise<boolean> {
    if (this.conversationId !== conversationId) return false
    return this.writers.close(userId, sessionId, reason)
  }

  private hub(userId: string): DurableObjectStub<UserHub> {
    let stub = this.hubs.get(userId)
    if (!stub) this.hubs.set(userId, (stub = getUserHub(this.env, userId)))
    return stub
  }

  /**
   * Sends to current members but `except` (whose own hub shows it), plus `alsoTell` (people just
   * removed, who learn it and nothing after). A write from a writer socket (`writerSession`) goes
   * to its writer's hub only when another of the writer's devices is online, and not to that
   * device. Deliveries go out FANOUT_CHUNK per turn, after the write's own turn, so they do not
   * hold up this room's acks or other objects; the queue keeps them in seq order.
   */
  private fanOut(event: ConversationEvent, except: string | null, alsoTell: string[] = [], writerSession?: string) {
    let targets = [...new Set([...this.members.keys(), ...alsoTell])].filter((id) => id !== except)
    let skipSession: string | undefined
    if (writerSession !== undefined) {
      const writerHub = this.writers.writerHub(event.senderId, writerSession)
      if (writerHub.ask) this.askPeers(event.senderId)
      if (!writerHub.deliver) targets = targets.filter((id) => id !== event.senderId)
      skipSession = writerHub.skipSession
    }
    const { meta, frame } = deliveryOf(event)
    const skip = (userId: string) => (userId === event.senderId ? skipSession : undefined)
    // Queued even when small: the calls go out in the next turn, so the work of making them does
    // not hold up this turn's commit and the ack waiting on it (the output gate holds them until
    // the commit anyway). A member marked away is only a mark to move: done now when nothing is
    // queued before it (so nothing can be overtaken), which spares a quiet chat a timer per message.
    const inline = this.fanOutQueue.length === 0
    for (const userId of targets) {
      if (inline && this.away.has(userId)) this.deliverTo(userId, [{ meta, frame, skipSession: skip(userId) }])
      else this.fanOutQueue.push({ userId, meta, frame, skipSession: skip(userId) })
    }
    if (!this.fanOutTimer && this.fanOutQueue.length > 0) this.fanOutTimer = setTimeout(() => this.drainFanOut(), 0)
  }

  /**
   * Sends up to FANOUT_CHUNK queued deliveries, one call per member: events that queued up together
   * (a busy chat) go to a hub in one call, in seq order, instead of one call each.
   */
  private drainFanOut() {
    this.fanOutTimer = null
    const chunk = this.fanOutQueue.length <= FANOUT_CHUNK ? this.fanOutQueue : this.fanOutQueue.splice(0, FANOUT_CHUNK)
    if (chunk === this.fanOutQueue) this.fanOutQueue = []
    const byUser = new Map<string, Delivery[]>()
    for (const { userId, ...delivery } of chunk) {
      const list = byUser.get(userId)
      if (list) list.push(delivery)
      else byUser.set(userId, [delivery])
    }
    for (const [userId, deliveries] of byUser) this.deliverTo(userId, deliveries)
    if (this.fanOutQueue.length > 0) this.fanOutTimer = setTimeout(() => this.drainFanOut(), 0)
  }

  /** Hands events (of this room, in seq order) to a member's hub, or marks them for later when none of their devices is online. */
  private deliverTo(userId: string, deliveries: Delivery[]) {
    if (this.deliverDirect(userId, deliveries)) return
    const away = this.away.get(userId)
    if (away) {
      for (const { meta } of deliveries) {
        away.newest = Math.max(away.newest, meta.seq)
        if (worthPush(meta, userId)) away.push = Math.max(away.push, meta.seq)
      }
      this.scheduleRemind()
      return
    }
    this.hubCalls.set(userId, (this.hubCalls.get(userId) ?? 0) + 1)
    this.hub(userId)
      .deliver(userId, deliveries)
      .finally(() => {
        const n = (this.hubCalls.get(userId) ?? 1) - 1
        if (n > 0) this.hubCalls.set(userId, n)
        else this.hubCalls.delete(userId)
      })
      // A hub answers with its devices' newest confirmation: in a busy chat, delivery receipts
      // ride on deliveries instead of calls of their own.
      .then((reply) => {
        if (reply && 'away' in reply) {
          if (this.members.has(userId) && !this.away.has(userId)) this.away.set(userId, { newest: 0, push: 0 })
          return
        }
        // A device came back while later events were held back for the member (an earlier call's
        // "away" crossed this answer): those go to the hub now rather than wait for a sync.
        const held = this.away.get(userId)
        this.away.delete(userId)
        if (held && held.newest > 0 && this.conversationId) this.handBack(this.conversationId, userId, held.newest)
        const m = reply && this.members.get(userId)
        if (m) this.applyCursors(userId, m, reply.delivered, null)
      })
      .catch((e: unknown) => {
        // A broken stub stays broken: the next delivery gets a fresh one (the hub syncs the gap).
        this.hubs.delete(userId)
        console.warn('fan-out failed', userId, String(e))
      })
  }

  /**
   * Sends events straight to a member's writer sockets when every tab of theirs has this chat open
   * (the hub's report says so): no call to their hub, as the platform floor does. The sockets
   * confirm here; what one does not within HANDOFF_AFTER_MS goes to the hub, which resends and
   * pushes as for its own deliveries. A member's own writes keep the hub path (it knows the ack).
   */
  private deliverDirect(userId: string, deliveries: Delivery[]): boolean {
    if (!this.members.has(userId) || this.hubCalls.has(userId) || deliveries.some((d) => d.meta.senderId === userId)) return false
    const now = Date.now()
    const { sockets, ask } = this.writers.directTo(userId, now)
    if (ask) this.askPeers(userId)
    if (!sockets) return false
    for (const { ws, sessionId } of sockets) {
      for (const { meta, frame } of deliveries) {
        send(ws, frame)
        this.direct.sent(ws, userId, sessionId, meta.seq, meta.type === 'message', now)
      }
    }
    this.metrics.count(Counter.deliveries, undefined, sockets.length * deliveries.length)
    this.armHandoff()
    return true
  }

  private handOffDue() {
    this.handoffTimer = null
    const retry = this.handoffRetry
    this.handoffRetry = []
    this.handOff([...retry, ...this.direct.due(Date.now())], false)
    this.armHandoff()
  }

  private armHandoff() {
    if (this.direct.size + this.handoffRetry.length > 0) this.handoffTimer ??= setTimeout(() => this.handOffDue(), HANDOFF_AFTER_MS / 2)
  }

  /**
   * Unconfirmed direct deliveries become the hubs' to resend (from the log, as events are now) or
   * push; `closed`: the socket is gone, so the hub resends at once instead of at its usual timeout.
   * A call that fails is tried again at the next tick.
   */
  private handOff(owed: Owed[], closed: boolean) {
    const conversationId = this.conversationId
    if (!conversationId || owed.length === 0) return
    const byUser = new Map<string, Owed[]>()
    for (const o of owed) {
      const list = byUser.get(o.userId)
      if (list) list.push(o)
      else byUser.set(o.userId, [o])
    }
    for (const [userId, items] of byUser) {
      this.hub(userId)
        .owed(userId, conversationId, items, closed)
        .catch((e: unknown) => {
          this.hubs.delete(userId)
          console.warn('hand-off to hub failed; tried again', userId, String(e))
          if (this.members.has(userId)) this.handoffRetry.push(...items)
          this.armHandoff()
        })
    }
  }

  /** Held-back events go to their hubs 250 ms after the first, then at most once a second (like D1 flushes, on a timer of their own). */
  private scheduleRemind() {
    this.remindTimer ??= setTimeout(() => {
      this.remindTimer = null
      this.lastRemindAt = Date.now()
      this.remindAway()
    }, spacedDelay(this.lastRemindAt))
  }

  /** Each away member's hub gets the newest event worth a push and the newest event of all it was spared (one call when they are the same). */
  private remindAway() {
    const conversationId = this.conversationId
    if (!conversationId) return
    for (const [userId, mark] of this.away) {
      if (!this.members.has(userId)) {
        this.away.delete(userId)
        continue
      }
      if (mark.newest === 0) continue
      this.away.delete(userId)
      if (mark.push > 0) this.handBack(conversationId, userId, mark.push)
      if (mark.newest > mark.push) this.handBack(conversationId, userId, mark.newest)
    }
  }

  /** A device of this member is online again: calls resume, starting with the newest event it was spared. */
  async back(conversationId: string, userId: string): Promise<void> {
    const mark = this.away.get(userId)
    if (!mark || this.conversationId !== conversationId) return
    this.away.delete(userId)
    if (mark.newest > 0) this.handBack(conversationId, userId, mark.newest)
  }

  /** Calls the member's hub (no longer marked) with one event as it is now (an answer of "away" marks them again). */
  private handBack(conversationId: string, userId: string, seq: number) {
    const row = this.eventRow(seq)
    if (!row) return
    this.deliverTo(userId, [deliveryOf(rowToEvent(conversationId, row))])
  }

  // ---- write-behind: this object's cursors, and D1 ----

  /** How old the oldest event D1 does not have yet is (0 when D1 has them all). */
  private flushLagSeconds(): number {
    if (this.lastSeq <= this.d1Seq) return 0
    const oldest = this.sql.exec<{ created_at: number }>('SELECT created_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1', this.d1Seq).toArray()[0]
    return oldest ? Math.max(0, (Date.now() - oldest.created_at) / 1000) : 0
  }

  private pendingD1(): number {
    return this.lastSeq - this.d1Seq + this.readDirty.size + this.cursorsDirty.size + (this.d1ExpireTo > this.d1Expired ? 1 : 0)
  }

  /** One flush per tick: at FLUSH_DELAY_MS after the first change, or at once when FLUSH_BATCH events wait. */
  private scheduleFlush() {
    if (this.flushing) {
      this.flushAgain = true
      return
    }
    if (this.lastSeq - this.d1Seq >= FLUSH_BATCH) return void this.startFlush()
    this.flushTimer ??= setTimeout(() => this.startFlush(), spacedDelay(this.lastFlushAt))
  }

  private startFlush(): Promise<void> {
    if (this.flushTimer) clearTimeout(this.flushTimer)
    this.flushTimer = null
    if (!this.flushing) void this.beginFlush().catch(() => undefined)
    return this.flushing!
  }

  /**
   * Makes a flush the one in flight (`flushing`, which never rejects) and returns it as it is,
   * rejecting when D1 does; afterwards it schedules the next if changes came meanwhile.
   */
  private beginFlush(): Promise<void> {
    if (this.flushTimer) clearTimeout(this.flushTimer)
    this.flushTimer = null
    this.lastFlushAt = Date.now()
    const run = this.flush()
    this.flushing = run
      .catch((e: unknown) => {
        console.warn('D1 flush failed; the alarm retries', String(e))
        this.metrics.gauge(Gauge.d1FlushLag, this.flushLagSeconds())
      })
      .finally(() => {
        this.flushing = null
        if (this.flushAgain) {
          this.flushAgain = false
          if (this.pendingD1() > 0) this.scheduleFlush()
        }
      })
    return run
  }

  /** Flushes now, and again if a flush was already under way; rejects when D1 does. */
  private async flushNow(): Promise<void> {
    // One flush at a time, this one included: a retention delete must not pass an upsert in flight.
    while (this.flushing) await this.flushing
    this.flushAgain = false
    await this.beginFlush()
  }

  /**
   * Upserts every event after the D1 mark (and the dirty earlier ones) and the read cursors that
   * moved into D1 in one batch, then moves the mark, forgets the dirty rows and persists the
   * cursors in one local transaction: a crash between the two only repeats upserts that change
   * nothing, so each event lands in D1 exactly once.
   */
  private async flush(): Promise<void> {
    const conversationId = this.conversationId
    if (!conversationId) return
    // A failing R2 delete must not hold up history; the alarm retries it.
    await this.purgeMedia().catch((e) => console.warn('media purge failed', String(e)))
    for (;;) {
      const rows = this.sql
        .exec<EventRow & { gen: number | null }>(
          `SELECT ${EVENT_COLUMNS}, NULL AS gen FROM events WHERE seq > ? ORDER BY seq LIMIT ?`,
          this.d1Seq, FLUSH_BATCH,
        )
        .toArray()
      const dirty = this.sql
        .exec<EventRow & { gen: number }>(
          `SELECT ${EVENT_COLUMNS.split(', ').map((c) => `e.${c}`).join(', ')}, d.gen FROM d1_dirty d JOIN events e ON e.seq = d.seq WHERE d.seq <= ? ORDER BY d.seq LIMIT ?`,
          this.d1Seq, FLUSH_BATCH,
        )
        .toArray()
      const readers = [...this.readDirty].flatMap((id) => {
        const m = this.members.get(id)
        return m ? [{ id, readSeq: m.readSeq }] : []
      })
      const expireTo = this.d1ExpireTo > this.d1Expired ? this.d1ExpireTo : null
      const expiry = this.nextExpiry()
      const expiryMoved = expiry !== this.expiresMirrored
      // Cursors alone are no reason to commit: they ride on the next event's commit or the alarm's.
      if (rows.length === 0 && dirty.length === 0 && readers.length === 0 && expireTo === null && !expiryMoved) return
      const newest = rows[rows.length - 1]
      // History and read cursors go to the conversation's shard in one batch; the directory's
      // mirror to the main database only when something there changes (membership, a title, media,
      // expiry) or its activity is due. Both are idempotent, so when one fails the next flush
      // repeats both and the mark waits for it.
      const history = historyDb(this.env, this.historyShard)
      const cursor = history.prepare(
        'INSERT INTO read_cursors (conversation_id, user_id, read_seq) VALUES (?, ?, ?) ON CONFLICT (conversation_id, user_id) DO UPDATE SET read_seq = max(read_seq, excluded.read_seq)',
      )
      const upserts = [
        ...(expireTo !== null ? [history.prepare('DELETE FROM messages WHERE conversation_id = ? AND seq <= ?').bind(conversationId, expireTo)] : []),
        ...upsertStatements(history, conversationId, [...dirty, ...rows]),
        ...readers.map((r) => cursor.bind(conversationId, r.id, r.readSeq)),
      ]
      const directory = [
        ...(expiryMoved ? [this.env.DB.prepare('UPDATE conversations SET history_expires_at = ? WHERE id = ?').bind(expiry, conversationId)] : []),
        ...rows.flatMap((r) => this.mirrorStatements(conversationId, r)),
      ]
      const startedAt = Date.now()
      const activity = newest !== undefined && (directory.length > 0 || startedAt - this.activityMirroredAt >= ACTIVITY_MIRROR_MS)
      const main = [
        ...directory,
        ...(activity ? [this.activityStatement(conversationId, newest)] : []),
      ]
      this.d1Batches++
      if (this.historyShard === MAIN) await this.env.DB.batch([...upserts, ...main])
      else await Promise.all([upserts.length ? history.batch(upserts) : null, main.length ? this.env.DB.batch(main) : null])
      this.d1Seq = newest?.seq ?? this.d1Seq
      if (activity) (this.activityMirroredAt = startedAt, this.activitySeq = Math.max(this.activitySeq, newest.seq))
      this.expiresMirrored = expiry
      if (expireTo !== null) this.d1Expired = expireTo
      // A commit of its own only when the dirty set must shrink; the mark and cursors can wait.
      if (dirty.length > 0 || this.readPendingStored || expireTo !== null) {
        this.ctx.storage.transactionSync(() => {
          if (expireTo !== null) this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('d1_expired', ?)`, String(expireTo))
          this.saveD1Mark()
          // A row that changed again while D1 was written stays dirty.
          for (const r of dirty) this.sql.exec('DELETE FROM d1_dirty WHERE seq = ? AND gen = ?', r.seq, r.gen)
          if (this.readPendingStored) this.sql.exec(`DELETE FROM meta WHERE key = 'd1_read_pending'`)
          this.persistAllCursors()
        })
        this.readPendingStored = false
      }
      for (const r of readers) if (this.members.get(r.id)?.readSeq === r.readSeq) this.readDirty.delete(r.id)
      // Only a full batch means a backlog to drain now. What arrived while D1 had this batch waits
      // for the next tick (scheduleFlush set flushAgain): looping on it made a busy room flush
      // back to back, one D1 batch per message instead of one a second.
      if (rows.length < FLUSH_BATCH && dirty.length < FLUSH_BATCH) return
    }
  }

  /**
   * A room gone quiet (an alarm with no event since the last) brings the directory's activity up to
   * what D1 has: ticks mirror it at most every ACTIVITY_MIRROR_MS, so after a burst the directory
   * would otherwise keep the burst's start.
   */
  private async mirrorActivity() {
    const conversationId = this.conversationId
    if (!conversationId || this.activitySeq >= this.d1Seq) return
    const newest = this.sql.exec<{ seq: number; created_at: number }>('SELECT seq, created_at FROM events WHERE seq <= ? ORDER BY seq DESC LIMIT 1', this.d1Seq).toArray()[0]
    if (!newest) return
    const at = Date.now()
    await this.activityStatement(conversationId, newest).run()
    this.activitySeq = Math.max(this.activitySeq, newest.seq)
    this.activityMirroredAt = at
  }

  /** The directory's copy of the room's newest event (max: a late statement never moves it back). */
  private activityStatement(conversationId: string, newest: { seq: number; created_at: number }): D1PreparedStatement {
    return this.env.DB.prepare('UPDATE conversations SET last_seq = max(last_seq, ?), last_activity_at = max(last_activity_at, ?) WHERE id = ?').bind(newest.seq, newest.created_at, conversationId)
  }

  /** Writes the D1 mark (and when the activity was last mirrored) when they moved; part of whatever commit is open. */
  private saveD1Mark() {
    if (this.activityMirroredAt !== this.activityMirroredSaved) {
      this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('activity_mirrored_at', ?)`, String(this.activityMirroredAt))
      this.activityMirroredSaved = this.activityMirroredAt
    }
    if (this.d1Seq <= this.d1SeqSaved) return
    this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('d1_seq', ?)`, String(this.d1Seq))
    this.d1SeqSaved = this.d1Seq
  }

  /** Sending implies having read everything before it; the log says so until the cursors are stored. */
  private movedByOwnWrite(userId: string, m: Member, seq: number) {
    m.readSeq = seq
    m.deliveredSeq = Math.max(m.deliveredSeq, seq)
    this.readDirty.add(userId)
    this.ownDirty.add(userId)
  }

  private writeCursors(ids: Iterable<string>) {
    for (const id of ids) {
      const m = this.members.get(id)
      if (m) this.sql.exec('UPDATE members SET delivered_seq = ?, read_seq = ? WHERE user_id = ?', m.deliveredSeq, m.readSeq, id)
    }
  }

  /** Writes the cursors that moved by receipts since the last time; part of whatever commit is open. */
  private persistCursors() {
    this.writeCursors(this.cursorsDirty)
    // Forgotten only once every statement ran (one that throws rolls the commit back).
    for (const id of this.cursorsDirty) this.ownDirty.delete(id)
    this.cursorsDirty.clear()
  }

  /**
   * Writes every cursor that moved, senders' own moves too, and the seq the stored cursors are
   * current to (a wake reads the moves after it back from the log); part of a commit made anyway.
   */
  private persistAllCursors() {
    this.persistCursors()
    this.writeCursors(this.ownDirty)
    if (this.lastSeq > this.cursorsSeqSaved) this.sql.exec(`INSERT OR REPLACE INTO meta (key, value) VALUES ('cursors_seq', ?)`, String(this.lastSeq))
    this.ownDirty.clear()
    this.cursorsSeqSaved = Math.max(this.cursorsSeqSaved, this.lastSeq)
  }

  /** D1's copy of membership and title follows the room's current state, so replays converge. */
  private mirrorStatements(conversationId: string, r: EventRow): D1PreparedStatement[] {
    if (r.type === 'message' && r.body && r.kind !== 'text') {
      const ids = mediaIdsOf(JSON.parse(r.body) as MessageBody)
      return ids.map((id) => this.env.DB.prepare('UPDATE media SET seq = ? WHERE id = ? AND conversation_id = ?').bind(r.seq, id, conversationId))
    }
    if (r.type === 'retention') {
      const { keepDays } = JSON.parse(r.body!) as { keepDays: number | null }
      return [this.env.DB.prepare('UPDATE conversations SET retention_days = ? WHERE id = ?').bind(keepDays, conversationId)]
    }
    if (r.type === 'renamed') {
      const { title } = JSON.parse(r.body!) as { title: string }
      return [this.env.DB.prepare('UPDATE conversations SET title = ? WHERE id = ?').bind(title, conversationId)]
    }
    if (r.type !== 'member') return []
    const { userIds } = JSON.parse(r.body!) as { userIds: string[] }
    return userIds.map((uid) => {
      const m = this.members.get(uid)
      return m
        ? this.env.DB.prepare(
            `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_seq) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = excluded.role, joined_seq = excluded.joined_seq`,
          ).bind(conversationId, uid, m.role, r.created_at, m.joinedSeq)
        : this.env.DB.prepare('DELETE FROM members WHERE conversation_id = ? AND user_id = ?').bind(conversationId, uid)
    })
  }

  /** Recalled media: the R2 blob goes and D1 forgets it can be downloaded (and its transcript). */
  private async purgeMedia() {
    if (!this.purgePending) return
    const ids = this.sql.exec<{ media_id: string }>('SELECT media_id FROM media_purge LIMIT 100').toArray().map((r) => r.media_id)
    if (ids.length === 0) return void (this.purgePending = false)
    await this.env.MEDIA.delete(ids.map(mediaKey))
    const forget = this.env.DB.prepare(`UPDATE media SET status = 'deleted', transcript = NULL WHERE id = ?`)
    await this.env.DB.batch(ids.map((id) => forget.bind(id)))
    for (const id of ids) this.sql.exec('DELETE FROM media_purge WHERE media_id = ?', id)
  }

  /**
   * The alarm is the safety net that retries the D1 flush after a crash or a D1 failure. One that
   * is already due soon covers this commit too, so a busy room writes the alarm once per interval,
   * not once per message (and in the same commit as the event).
   */
  private armFlushAlarm(at = Date.now() + FLUSH_RETRY_MS) {
    // Wall time, not the injectable clock: alarms run on the real one.
    if (this.alarmAt !== null && this.alarmAt > Date.now()) return
    this.alarmAt = at
    void this.ctx.storage.setAlarm(at)
  }

  override async alarm() {
    this.alarmAt = null
    await this.startFlush()
    // Quiet since the last alarm: the directory catches up now, not at the next ACTIVITY_MIRROR_MS.
    const quiet = this.lastSeq === this.alarmSeenSeq
    this.alarmSeenSeq = this.lastSeq
    if (quiet) await this.mirrorActivity().catch((e: unknown) => console.warn('activity mirror failed; the next alarm repeats it', String(e)))
    const metricsWait = await this.metrics.flushIfQuiet(FLUSH_RETRY_MS / 2)
    // A room that went quiet writes its mark and cursors here, so a wake after eviction repeats little.
    this.ctx.storage.transactionSync(() => {
      this.saveD1Mark()
      this.persistAllCursors()
    })
    const purges = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM media_purge').one().n
    if (this.pendingD1() > 0 || purges > 0 || metricsWait || this.activitySeq < this.d1Seq) this.armFlushAlarm()
  }

  /** For tests and the monitoring view: `outbox` counts what D1 has yet to get. */
  async stats() {
    const dirty = this.sql.exec<{ n: number }>('SELECT count(*) AS n FROM d1_dirty').one().n
    return {
      conversationId: this.conversationId,
      kind: this.kind,
      lastSeq: this.lastSeq,
      d1Seq: this.d1Seq,
      members: [...this.members.keys()],
      outbox: this.lastSeq - this.d1Seq + dirty + this.readDirty.size,
      d1Batches: this.d1Batches,
      receipts: this.receipts(),
    }
  }
}

/** FLUSH_DELAY_MS from now, and at least FLUSH_MIN_GAP_MS after `last` (wall time): the pace of flushes and reminders. */
function spacedDelay(last: number): number {
  return Math.max(FLUSH_DELAY_MS, last + FLUSH_MIN_GAP_MS - Date.now())
}

/** An event as hubs get it: serialised once for every member; only the routing facts cross as an object. */
function deliveryOf(event: ConversationEvent): Delivery {
  const frame = JSON.stringify({ type: 'event', event } satisfies ServerMessage)
  const meta: DeliveredEvent = { type: event.type, conversationId: event.conversationId, seq: event.seq, senderId: event.senderId, ...(event.type === 'message' ? { body: event.body && { kind: event.body.kind } } : {}) }
  return { meta, frame }
}
