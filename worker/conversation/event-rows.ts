import type { CallOutcome, ConversationEvent, KeepDays, MemberEvent, MessageBody } from '../shared/protocol'

/** Column layout shared by the room's SQLite log and D1's messages table. */
export interface EventRow extends Record<string, SqlStorageValue> {
  seq: number
  type: string
  sender_id: string
  client_msg_id: string
  kind: string | null
  body: string | null
  target_seq: number | null
  edited_at: number | null
  recalled_by: string | null
  recalled_by_admin: number | null
  created_at: number
}

export const EVENT_COLUMNS =
  'seq, type, sender_id, client_msg_id, kind, body, target_seq, edited_at, recalled_by, recalled_by_admin, created_at'

export function rowToEvent(conversationId: string, r: EventRow): ConversationEvent {
  const base = { conversationId, seq: r.seq, senderId: r.sender_id, clientMsgId: r.client_msg_id, serverTs: r.created_at }
  const body = r.body === null ? null : JSON.parse(r.body)
  switch (r.type) {
    case 'edit':
      return { ...base, type: 'edit', targetSeq: r.target_seq!, body }
    case 'recall':
      return { ...base, type: 'recall', targetSeq: r.target_seq!, byAdmin: !!r.recalled_by_admin, ...(r.recalled_by_admin === MODERATOR ? { byModerator: true } : {}) }
    case 'member':
      return { ...base, type: 'member', ...(body as Pick<MemberEvent, 'action' | 'userIds' | 'role'>) }
    case 'renamed':
      return { ...base, type: 'renamed', title: (body as { title: string }).title }
    case 'retention':
      return { ...base, type: 'retention', keepDays: (body as { keepDays: KeepDays | null }).keepDays }
    case 'reaction':
      return { ...base, type: 'reaction', targetSeq: r.target_seq!, ...(body as { emoji: string; on: boolean }) }
    case 'voice':
      return { ...base, type: 'voice', ...(body as { startedAt: number; durationMs: number; people: number }) }
    case 'call':
      return { ...base, type: 'call', ...(body as { video: boolean; outcome: CallOutcome; durationMs: number }) }
    default:
      return {
        ...base,
        type: 'message',
        body: body as MessageBody | null,
        ...(r.edited_at !== null ? { editedAt: r.edited_at } : {}),
        ...(r.recalled_by !== null ? { recalled: { by: r.recalled_by, byAdmin: !!r.recalled_by_admin, ...(r.recalled_by_admin === MODERATOR ? { byModerator: true } : {}) } } : {}),
      }
  }
}

function payloadOf(e: ConversationEvent): unknown {
  switch (e.type) {
    case 'message':
    case 'edit':
      return e.body
    case 'recall':
      return null
    case 'member':
      return { action: e.action, userIds: e.userIds, ...(e.role ? { role: e.role } : {}) }
    case 'renamed':
      return { title: e.title }
    case 'retention':
      return { keepDays: e.keepDays }
    case 'reaction':
      return { emoji: e.emoji, on: e.on }
    case 'voice':
      return { startedAt: e.startedAt, durationMs: e.durationMs, people: e.people }
    case 'call':
      return { video: e.video, outcome: e.outcome, durationMs: e.durationMs }
  }
}

export function eventToRow(e: ConversationEvent): EventRow {
  const payload = payloadOf(e)
  return {
    seq: e.seq,
    type: e.type,
    sender_id: e.senderId,
    client_msg_id: e.clientMsgId,
    kind: e.type === 'message' && e.body ? e.body.kind : null,
    body: payload === null ? null : JSON.stringify(payload),
    target_seq: e.type === 'edit' || e.type === 'recall' || e.type === 'reaction' ? e.targetSeq : null,
    edited_at: e.type === 'message' ? (e.editedAt ?? null) : null,
    recalled_by: e.type === 'message' ? (e.recalled?.by ?? null) : null,
    recalled_by_admin: e.type === 'recall' ? recalledByCode(e.byAdmin, e.byModerator) : e.type === 'message' && e.recalled ? recalledByCode(e.recalled.byAdmin, e.recalled.byModerator) : null,
    created_at: e.serverTs,
  }
}

/** The sender id of a moderator's removal: members are not told which admin it was. */
export const MODERATOR_ID = 'moderator'
/** recalled_by_admin: 0 the sender, 1 a group admin, 2 a moderator of the service. */
export const MODERATOR = 2
export const recalledByCode = (byAdmin: boolean, byModerator?: boolean) => (byModerator ? MODERATOR : Number(byAdmin))
