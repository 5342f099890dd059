import { zValidator } from '@hono/zod-validator'
import type { Context, ValidationTargets } from 'hono'
import { createMiddleware } from 'hono/factory'
import { HTTPException } from 'hono/http-exception'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import type { ZodType } from 'zod'
import { ErrorCode, errorBody } from './shared/errors'
import { sessionActive } from './auth/session-check'
import { verifyAccessToken } from './auth/tokens'
import type { AppEnv, AuthContext, Env } from './env'

/** Throws the one error shape; `retryAfterS` adds a Retry-After header (429s). */
export function fail(status: ContentfulStatusCode, code: ErrorCode, message: string, retryAfterS?: number): never {
  throw new HTTPException(status, { message, cause: { code, retryAfterS } })
}

/** The client's address: Cloudflare's CF-Connecting-IP in production; locally the peer, which Miniflare puts there. */
export function clientAddress(c: Context<AppEnv>): string {
  return c.req.header('cf-connecting-ip') ?? 'unknown'
}

const codeForStatus: Partial<Record<number, ErrorCode>> = {
  400: ErrorCode.BAD_REQUEST,
  401: ErrorCode.UNAUTHORIZED,
  403: ErrorCode.FORBIDDEN,
  404: ErrorCode.NOT_FOUND,
  409: ErrorCode.CONFLICT,
  413: ErrorCode.PAYLOAD_TOO_LARGE,
  429: ErrorCode.RATE_LIMITED,
}

export { errorBody }

/** The single place errors become responses; unknown errors never leak details. */
export function renderError(err: Error, c: Context<AppEnv>) {
  if (err instanceof HTTPException) {
    const cause = err.cause as { code?: ErrorCode; retryAfterS?: number } | undefined
    const code = cause?.code ?? codeForStatus[err.status] ?? ErrorCode.BAD_REQUEST
    if (cause?.retryAfterS !== undefined) c.header('Retry-After', String(Math.max(1, Math.ceil(cause.retryAfterS))))
    return c.json(errorBody(code, err.message || code), err.status)
  }
  console.error('unhandled error', err)
  return c.json(errorBody(ErrorCode.INTERNAL, 'internal error'), 500)
}

/** zValidator whose failures go through the one error shape. */
export function validate<T extends ZodType, Target extends keyof ValidationTargets>(target: Target, schema: T) {
  return zValidator(target, schema, (result) => {
    if (!result.success) {
      const message = result.error.issues
        .map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message))
        .join('; ')
      fail(400, ErrorCode.BAD_REQUEST, message)
    }
  })
}

/** A valid access token of a session that has not been revoked, or null. */
export async function getAuth(c: Context<AppEnv>): Promise<AuthContext | null> {
  const header = c.req.header('authorization')
  const match = header?.match(/^Bearer (.+)$/)
  const auth = match ? await verifyAccessToken(c.env, match[1]!) : null
  return auth && (await sessionActive(c.env, auth)) ? auth : null
}

export const requireAuth = createMiddleware<AppEnv>(async (c, next) => {
  const auth = await getAuth(c)
  if (!auth) fail(401, ErrorCode.UNAUTHORIZED, 'missing or invalid access token, or the session was signed out')
  c.set('auth', auth)
  await next()
})

/** Browsers always send Origin on a WebSocket upgrade; other clients send none, and that is what the check protects. */
export function originAllowed(env: Env, request: Request): boolean {
  const origin = request.headers.get('origin')
  // Non-browser clients send no Origin; browsers always do, and that is what the check protects.
  if (!origin) return true
  if (origin === new URL(request.url).origin) return true
  return env.ALLOWED_ORIGINS.split(',').map((s) => s.trim()).filter(Boolean).includes(origin)
}
