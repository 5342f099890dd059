import type { ErrorBody, ErrorCode } from '../../worker/shared/errors'
import type { AuthResult } from '../../worker/shared/protocol'
import { localizeError, t } from './i18n.svelte'

/** Every failed call surfaces as this, with the server's code and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode | 'NETWORK',
    message: string,
    /** From Retry-After on a 429: how long the server asks to wait. */
    readonly retryAfterS: number | null = null,
  ) {
    super(code === 'RATE_LIMITED' && retryAfterS ? t('error.tooManyAttempts', { s: retryAfterS }) : localizeError(code, message))
  }
}

export interface TokenStore {
  accessToken(): string | null
  /** Called on a 401 with the refused token: refresh once and return the new access token, or null when signed out. */
  refresh(stale: string | null): Promise<string | null>
}

let tokens: TokenStore | null = null
export function useTokens(store: TokenStore) {
  tokens = store
}

async function send(path: string, init: RequestInit, token: string | null): Promise<Response> {
  const headers = new Headers(init.headers)
  if (typeof init.body === 'string') headers.set('content-type', 'application/json')
  if (token) headers.set('authorization', `Bearer ${token}`)
  try {
    return await fetch(path, { ...init, headers })
  } catch {
    throw new ApiError(0, 'NETWORK', 'You are offline or the server cannot be reached.')
  }
}

/** A raw request with the access token (uploads, media); a 401 refreshes once and retries. */
export async function authedFetch(path: string, init: RequestInit): Promise<Response> {
  const token = tokens?.accessToken() ?? null
  let res = await send(path, init, token)
  if (res.status === 401 && tokens) {
    const fresh = await tokens.refresh(token)
    if (fresh) res = await send(path, init, fresh)
  }
  return res
}

/** The error a failed raw response carries. */
export async function errorOf(res: Response): Promise<ApiError> {
  const data = (await res.json().catch(() => undefined)) as ErrorBody | undefined
  return new ApiError(res.status, data?.error?.code ?? 'INTERNAL', data?.error?.message ?? `request failed (${res.status})`)
}

/** JSON API call with the access token; a 401 refreshes once and retries. */
export async function api<T>(path: string, init: { method?: string; body?: unknown; auth?: boolean } = {}): Promise<T> {
  const blob = init.body instanceof Blob
  const req: RequestInit = {
    method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
    body: init.body === undefined ? undefined : blob ? (init.body as Blob) : JSON.stringify(init.body),
  }
  const useAuth = init.auth !== false
  const token = useAuth ? (tokens?.accessToken() ?? null) : null
  let res = await send(path, req, token)
  if (res.status === 401 && useAuth && tokens) {
    const fresh = await tokens.refresh(token)
    if (fresh) res = await send(path, req, fresh)
  }
  if (res.status === 204) return undefined as T
  const text = await res.text()
  const data = text ? JSON.parse(text) : undefined
  if (!res.ok) {
    const err = (data as ErrorBody | undefined)?.error
    const retryAfter = Number(res.headers.get('retry-after'))
    throw new ApiError(res.status, err?.code ?? 'INTERNAL', err?.message ?? `request failed (${res.status})`, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null)
  }
  return data as T
}

export const authApi = {
  register: (body: { handle: string; password: string; displayName: string; deviceName?: string }) =>
    api<AuthResult>('/api/auth/register', { body, auth: false }),
  login: (body: { handle: string; password: string; deviceName?: string; deviceToken?: string }) => api<AuthResult>('/api/auth/login', { body, auth: false }),
  refresh: (refreshToken: string, retryKey: string) => api<AuthResult>('/api/auth/refresh', { body: { refreshToken, retryKey }, auth: false }),
  logout: () => api<void>('/api/auth/logout', { method: 'POST' }),
}
