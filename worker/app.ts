import { Hono } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { secureHeaders } from 'hono/secure-headers'
import type { AppEnv } from './env'
import { errorBody, fail, renderError } from './http'
import { authRoutes, meRoutes } from './routes/auth'
import { conversationRoutes } from './routes/conversations'
import { blockRoutes } from './routes/blocks'
import { friendRoutes } from './routes/friends'
import { pushRoutes } from './routes/push'
import { linkPreviewRoutes } from './routes/link-preview'
import { mediaRoutes } from './routes/media'
import { voiceRoutes } from './routes/voice'
import { callRoutes } from './routes/calls'
import { searchRoutes } from './routes/search'
import { uploadRoutes } from './routes/uploads'
import { profileRoutes, userRoutes } from './routes/users'
import { wsRoutes } from './routes/ws'
import { adminRoutes } from './routes/admin'
import { reportRoutes } from './routes/reports'
import { healthRoutes } from './routes/health'
import { requestLog } from './ops/request-log'
import { transcriberFor } from './media/transcriber'
import { ErrorCode } from './shared/errors'
import type { Capabilities } from './shared/protocol'

const MAX_JSON_BODY = 64 * 1024

export const app = new Hono<AppEnv>()
  .basePath('/api')
  .use(requestLog)
  // A 101 response's headers are immutable, so upgrades skip the header middleware.
  .use((c, next) => (c.req.header('upgrade') ? next() : secureHeaders()(c, next)))
  // Upload chunks have their own, larger limit (routes/uploads.ts).
  .use((c, next) =>
    c.req.path.startsWith('/api/uploads')
      ? next()
      : bodyLimit({ maxSize: MAX_JSON_BODY, onError: () => fail(413, ErrorCode.PAYLOAD_TOO_LARGE, `request bodies are limited to ${MAX_JSON_BODY} bytes`) })(c, next),
  )
  .route('/health', healthRoutes)
  .get('/capabilities', (c) => c.json({ transcribe: transcriberFor(c.env) !== null, push: !!(c.env.VAPID_PUBLIC_KEY && c.env.VAPID_PRIVATE_KEY) } satisfies Capabilities))
  .route('/auth', authRoutes)
  .route('/me', meRoutes)
  .route('/me', profileRoutes)
  .route('/users', userRoutes)
  .route('/friends', friendRoutes)
  .route('/blocks', blockRoutes)
  .route('/search', searchRoutes)
  .route('/ws', wsRoutes)
  .route('/conversations', conversationRoutes)
  .route('/push', pushRoutes)
  .route('/uploads', uploadRoutes)
  .route('/media', mediaRoutes)
  .route('/link-preview', linkPreviewRoutes)
  .route('/voice', voiceRoutes)
  .route('/calls', callRoutes)
  .route('/reports', reportRoutes)
  .route('/admin', adminRoutes)

app.notFound((c) => c.json(errorBody(ErrorCode.NOT_FOUND, 'no such endpoint'), 404))
app.onError(renderError)

export type ApiType = typeof app
