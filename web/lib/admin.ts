import type { MetricsSeries } from '../../worker/shared/metrics'
import type { AuditEntry, ModerationReport, ReportBody, ReportReason } from '../../worker/shared/moderation'
import { api } from './api'
import type { MessageKey } from './i18n.svelte'

/** Every reason a report can give, in the order the dialog offers them (the Record keeps it complete). */
const REASON_LABELS: Record<ReportReason, MessageKey> = {
  spam: 'report.reason.spam',
  harassment: 'report.reason.harassment',
  hate: 'report.reason.hate',
  violence: 'report.reason.violence',
  sexual: 'report.reason.sexual',
  self_harm: 'report.reason.self_harm',
  impersonation: 'report.reason.impersonation',
  other: 'report.reason.other',
}
export const REPORT_REASONS = Object.keys(REASON_LABELS) as ReportReason[]
export const reasonLabel = (r: ReportReason): MessageKey => REASON_LABELS[r]

/** What a report is about, before the reporter picks a reason. */
export type ReportTarget = { target: 'message'; conversationId: string; seq: number } | { target: 'user'; userId: string }

/** Anyone: reports a message they can see or a person. */
export const report = (target: ReportTarget, reason: ReportReason, note: string) =>
  api<{ reported: true }>('/api/reports', { body: { ...target, reason, note } satisfies ReportBody })

export const isAdmin = async () => (await api<{ isAdmin: boolean }>('/api/me')).isAdmin

/** Administrators only (the server answers 403 to anyone else). */
export const adminApi = {
  series: (range: 'hour' | 'day') => api<MetricsSeries>(`/api/admin/metrics/series?range=${range}`),
  reports: async (status: 'open' | 'closed') => (await api<{ reports: ModerationReport[] }>(`/api/admin/reports?status=${status}`)).reports,
  dismiss: (reportId: string) => api<void>(`/api/admin/reports/${reportId}/dismiss`, { method: 'POST' }),
  removeMessage: (reportId: string) => api<void>(`/api/admin/reports/${reportId}/remove-message`, { method: 'POST' }),
  suspend: (userId: string, reason: string, reportId?: string) =>
    api<{ revokedSessions: number }>(`/api/admin/users/${userId}/suspend`, { body: { reason, ...(reportId ? { reportId } : {}) } }),
  unsuspend: (userId: string) => api<void>(`/api/admin/users/${userId}/unsuspend`, { method: 'POST' }),
  audit: async () => (await api<{ entries: AuditEntry[] }>('/api/admin/audit')).entries,
}
