import { app } from './app'
import type { Env } from './env'

export { ConversationRoom } from './conversation/ConversationRoom'
export { UserHub } from './user/UserHub'

export default {
  fetch: app.fetch,
} satisfies ExportedHandler<Env>
