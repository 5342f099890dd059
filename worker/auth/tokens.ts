import { SignJWT, jwtVerify } from 'jose'
import type { AuthContext, Env } from '../env'
import { base64url, newId } from '../ids'

export const ACCESS_TOKEN_TTL_S = 15 * 60
export const WS_TICKET_TTL_S = 30
export const REFRESH_TOKEN_TTL_MS = 60 * 24 * 3600 * 1000
const ALG = 'HS256'

function secret(env: Env): Uint8Array {
  if (!env.JWT_SECRET || env.JWT_SECRET.length < 32) throw new Error('JWT_SECRET must be set to at least 32 characters')
  return new TextEncoder().encode(env.JWT_SECRET)
}

// Tickets get their own audience so neither token can stand in for the other.
const ticketAudience = (env: Env) => `${env.JWT_AUDIENCE}:ws`

export async function signAccessToken(env: Env, auth: AuthContext): Promise<string> {
  return new SignJWT({ sid: auth.sessionId })
    .setProtectedHeader({ alg: ALG, typ: 'JWT' })
    .setSubject(auth.userId)
    .setIssuer(env.JWT_ISSUER)
    .setAudience(env.JWT_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(`${ACCESS_TOKEN_TTL_S}s`)
    .sign(secret(env))
}

async function verify(env: Env, token: string, audience: string) {
  const { payload } = await jwtVerify(token, secret(env), {
    algorithms: [ALG],
    issuer: env.JWT_ISSUER,
    audience,
    requiredClaims: ['exp', 'sub', 'sid'],
  })
  if (typeof payload.sub !== 'string' || typeof payload.sid !== 'string') throw new Error('malformed claims')
  return payload
}

/** Returns null for any invalid, expired or foreign token. */
export async function verifyAccessToken(env: Env, token: string): Promise<AuthContext | null> {
  try {
    const p = await verify(env, token, env.JWT_AUDIENCE)
    return { userId: p.sub!, sessionId: p.sid as string }
  } catch {
    return null
  }
}

export async function signWsTicket(env: Env, auth: AuthContext): Promise<{ ticket: string; jti: string }> {
  const jti = newId()
  const ticket = await new SignJWT({ sid: auth.sessionId })
    .setProtectedHeader({ alg: ALG, typ: 'JWT' })
    .setSubject(auth.userId)
    .setIssuer(env.JWT_ISSUER)
    .setAudience(ticketAudience(env))
    .setJti(jti)
    .setIssuedAt()
    .setExpirationTime(`${WS_TICKET_TTL_S}s`)
    .sign(secret(env))
  return { ticket, jti }
}

export async function verifyWsTicket(env: Env, ticket: string): Promise<(AuthContext & { jti: string; exp: number }) | null> {
  try {
    const p = await verify(env, ticket, ticketAudience(env))
    if (typeof p.jti !== 'string') return null
    return { userId: p.sub!, sessionId: p.sid as string, jti: p.jti, exp: p.exp! }
  } catch {
    return null
  }
}

export function newRefreshToken(): string {
  return base64url(crypto.getRandomValues(new Uint8Array(32)))
}

export const MEDIA_TOKEN_TTL_S = 3600
// Media tokens ride in URLs (<img>, <audio> cannot send headers), so they get their own audience
// and can open nothing but downloads.
const mediaAudience = (env: Env) => `${env.JWT_AUDIENCE}:media`

export async function signMediaToken(env: Env, auth: AuthContext): Promise<string> {
  return new SignJWT({ sid: auth.sessionId })
    .setProtectedHeader({ alg: ALG, typ: 'JWT' })
    .setSubject(auth.userId)
    .setIssuer(env.JWT_ISSUER)
    .setAudience(mediaAudience(env))
    .setIssuedAt()
    .setExpirationTime(`${MEDIA_TOKEN_TTL_S}s`)
    .sign(secret(env))
}

export async function verifyMediaToken(env: Env, token: string): Promise<AuthContext | null> {
  try {
    const p = await verify(env, token, mediaAudience(env))
    return { userId: p.sub!, sessionId: p.sid as string }
  } catch {
    return null
  }
}
