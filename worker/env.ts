import type { ConversationRoom } from './conversation/ConversationRoom'
import type { UserHub } from './user/UserHub'

export interface Env {
  DB: D1Database
  ASSETS: Fetcher
  CONVERSATION: DurableObjectNamespace<ConversationRoom>
  USER: DurableObjectNamespace<UserHub>
  JWT_SECRET: string
  JWT_ISSUER: string
  JWT_AUDIENCE: string
  ALLOWED_ORIGINS: string
}

export interface AuthContext {
  userId: string
  sessionId: string
}

export type AppEnv = { Bindings: Env; Variables: { auth: AuthContext } }
