import type { VoiceRoom } from './voice/VoiceRoom'
import type { CallRoom } from './calls/CallRoom'
import type { ConversationRoom } from './conversation/ConversationRoom'
import type { QueueMessage } from './shared/jobs'
import type { UploadSession } from './media/UploadSession'
import type { LoginGuard } from './auth/LoginGuard'
import type { UserHub } from './user/UserHub'
import type { MetricsShard } from './ops/MetricsShard'
import type { PresenceIndex } from './user/PresenceIndex'

export interface Env {
  /** Users, friends, sessions and the conversation directory (and history from before sharding). */
  DB: D1Database
  /** Comma-separated D1 bindings (HISTORY_0, …) new conversations' history is spread over (worker/db/history.ts). */
  HISTORY_SHARDS?: string
  /** Days history is kept where a conversation has no setting of its own; 0 or unset: forever. */
  RETENTION_DAYS?: string
  ASSETS: Fetcher
  CONVERSATION: DurableObjectNamespace<ConversationRoom>
  VOICE: DurableObjectNamespace<VoiceRoom>
  CALL: DurableObjectNamespace<CallRoom>
  USER: DurableObjectNamespace<UserHub>
  PUSH_QUEUE: Queue<QueueMessage>
  MEDIA: R2Bucket
  UPLOAD: DurableObjectNamespace<UploadSession>
  LOGIN_GUARD: DurableObjectNamespace<LoginGuard>
  METRICS_SHARD: DurableObjectNamespace<MetricsShard>
  /** Who is online, sharded by user (worker/user/PresenceIndex.ts). */
  PRESENCE: DurableObjectNamespace<PresenceIndex>
  /** How many presence index shards (default 16; changing it moves users between shards: only at a deploy that restarts every socket). */
  PRESENCE_SHARDS?: string
  /** Workers Analytics Engine dataset for metrics (production; locally a no-op). */
  METRICS?: AnalyticsEngineDataset
  /** How often a busy object hands its counts over, ms (default 60000; tests shorten it). */
  METRICS_MIN_GAP_MS?: string
  /** "false" turns metrics off (for the benchmark's cost row). */
  METRICS_ENABLED?: string
  /** How many metrics shards (default 16). */
  METRICS_SHARDS?: string
  /** A bearer token Prometheus presents to GET /api/admin/metrics (a secret); admins' tokens work too. */
  METRICS_SCRAPE_TOKEN?: string
  /** Password tries per client address (Rate Limiting binding: fixed window per location). */
  LOGIN_IP_LIMIT: RateLimit
  /** Socket tickets per session. */
  TICKET_LIMIT: RateLimit
  /** Workers AI, for speech to text in production (optional). */
  AI?: Ai
  /** Local transcriber service (scripts/transcriber.ts) when there is no AI binding. */
  TRANSCRIBER_URL?: string
  /** Calls: STUN URLs (comma-separated), e.g. stun:stun.cloudflare.com:3478. */
  STUN_URLS?: string
  /** Calls, Cloudflare TURN: the TURN key id and its API token (a secret). */
  TURN_KEY_ID?: string
  TURN_KEY_API_TOKEN?: string
  /** Calls, any TURN server with the REST shared secret (coturn use-auth-secret): its URLs and the secret. */
  TURN_URLS?: string
  TURN_SECRET?: string
  /** Tests only: host:port pairs link previews may fetch although they are private addresses. */
  LINK_PREVIEW_ALLOW?: string
  JWT_SECRET: string
  JWT_ISSUER: string
  JWT_AUDIENCE: string
  ALLOWED_ORIGINS: string
  VAPID_PUBLIC_KEY: string
  VAPID_PRIVATE_KEY: string
  VAPID_SUBJECT: string
  /** First push retry delay in seconds; doubles per attempt. */
  PUSH_RETRY_BASE_S?: string
  /** Per-member write limit in a conversation, "burst/perSecond" (default 30/10). */
  WRITE_RATE?: string
  /** Sign-ups per client address, "burst/perHour" (default 10/20). */
  REGISTER_RATE?: string
  /** Frames per socket, "burst/perSecond" (default 200/50); benchmarks lift it. */
  FRAME_RATE?: string
  /** Request logs below this level are dropped: debug, info (default), warn, error. */
  LOG_LEVEL?: string
  /** Benchmarks only: a group ceiling above the product's 50. */
  GROUP_LIMIT?: string
}

export interface AuthContext {
  userId: string
  sessionId: string
}

export type AppEnv = { Bindings: Env; Variables: { auth: AuthContext; requestId: string } }
