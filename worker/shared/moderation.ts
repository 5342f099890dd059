import * as z from 'zod'
import { Id, Seq, type MessageBody } from './protocol'

export const ReportReason = z.enum(['spam', 'harassment', 'hate', 'violence', 'sexual', 'self_harm', 'impersonation', 'other'])
export type ReportReason = z.infer<typeof ReportReason>

/** A person reports a message they can see, or a user. */
export const ReportBody = z.discriminatedUnion('target', [
  z.object({ target: z.literal('message'), conversationId: Id, seq: Seq.min(1), reason: ReportReason, note: z.string().trim().max(500).default('') }),
  z.object({ target: z.literal('user'), userId: Id, reason: ReportReason, note: z.string().trim().max(500).default('') }),
])
export type ReportBody = z.input<typeof ReportBody>

export const SuspendBody = z.object({ reason: z.string().trim().min(1).max(200), reportId: Id.optional() })
export const ReportsQuery = z.object({ status: z.enum(['open', 'closed']).default('open') })
export const SeriesQuery = z.object({ range: z.enum(['hour', 'day']).default('hour') })

export interface ReportedUser {
  id: string
  handle: string
  displayName: string
  suspended: boolean
}

/** A report as moderators see it. */
export interface ModerationReport {
  id: string
  reason: ReportReason
  note: string
  status: 'open' | 'dismissed' | 'actioned'
  createdAt: number
  closedAt: number | null
  reporter: ReportedUser
  target: ReportedUser
  /** The reported message as it was when reported (kept even if recalled); null for user reports and closed cases. */
  message: { conversationId: string; seq: number; serverTs: number; body: MessageBody } | null
}

export interface AuditEntry {
  id: number
  /** The admin's handle, or "cli". */
  actor: string
  action: 'grant-admin' | 'revoke-admin' | 'dismiss-report' | 'remove-message' | 'suspend' | 'unsuspend'
  target: ReportedUser | null
  reportId: string | null
  detail: string
  at: number
}
