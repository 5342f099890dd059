import { app } from './app'
import type { Env } from './env'
import { handleQueue } from './push/queue'

export { ConversationRoom } from './conversation/ConversationRoom'
export { UserHub } from './user/UserHub'
export { UploadSession } from './media/UploadSession'
export { LoginGuard } from './auth/LoginGuard'
export { VoiceRoom } from './voice/VoiceRoom'
export { CallRoom } from './calls/CallRoom'
export { MetricsShard } from './ops/MetricsShard'

export default {
  fetch: app.fetch,
  queue: handleQueue,
} satisfies ExportedHandler<Env>
