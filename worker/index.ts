import { app } from './app'
import type { Env } from './env'
import { handleQueue } from './push/queue'
import { sweepRetention } from './conversation/retention'
import { log } from './ops/log'

export { ConversationRoom } from './conversation/ConversationRoom'
export { UserHub } from './user/UserHub'
export { UploadSession } from './media/UploadSession'
export { LoginGuard } from './auth/LoginGuard'
export { VoiceRoom } from './voice/VoiceRoom'
export { CallRoom } from './calls/CallRoom'
export { MetricsShard } from './ops/MetricsShard'
export { PresenceIndex } from './user/PresenceIndex'

export default {
  fetch: app.fetch,
  queue: handleQueue,
  // The cron trigger in wrangler.toml: expired history goes (worker/conversation/retention.ts).
  async scheduled(controller, env) {
    const report = await sweepRetention(env, controller.scheduledTime)
    if (report.conversations || report.failed) log(env, 'info', 'retention sweep', { ...report })
  },
} satisfies ExportedHandler<Env>
