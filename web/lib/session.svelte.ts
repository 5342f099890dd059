import type { AuthResult, PublicUser } from '../../worker/shared/protocol'
import { ApiError, authApi, useTokens } from './api'

const STORAGE_KEY = 'echovalley.session'

interface Stored {
  user: PublicUser
  sessionId: string
  accessToken: string
  refreshToken: string
}

function deviceName(): string {
  const ua = navigator.userAgent
  const browser = /Firefox\//.test(ua) ? 'Firefox' : /Edg\//.test(ua) ? 'Edge' : /Chrome\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser'
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : ''
  return `${browser}${os ? ` on ${os}` : ''}`
}

/** The signed-in user and their tokens, kept in localStorage so a reload stays signed in. */
export class Session {
  #stored = $state<Stored | null>(null)
  #refreshing: Promise<string | null> | null = null

  constructor() {
    try {
      const raw = localStorage.getItem(STORAGE_KEY)
      this.#stored = raw ? (JSON.parse(raw) as Stored) : null
    } catch {
      this.#stored = null
    }
    useTokens({ accessToken: () => this.#stored?.accessToken ?? null, refresh: () => this.refresh() })
  }

  get user() {
    return this.#stored?.user ?? null
  }
  get sessionId() {
    return this.#stored?.sessionId ?? null
  }

  #save(result: AuthResult | null) {
    this.#stored = result
      ? { user: result.user, sessionId: result.sessionId, accessToken: result.accessToken, refreshToken: result.refreshToken }
      : null
    if (this.#stored) localStorage.setItem(STORAGE_KEY, JSON.stringify(this.#stored))
    else localStorage.removeItem(STORAGE_KEY)
  }

  async register(handle: string, password: string, displayName: string) {
    this.#save(await authApi.register({ handle, password, displayName, deviceName: deviceName() }))
  }

  async login(handle: string, password: string) {
    this.#save(await authApi.login({ handle, password, deviceName: deviceName() }))
  }

  /** One refresh at a time: concurrent 401s share it, since a refresh token works only once. */
  refresh(): Promise<string | null> {
    this.#refreshing ??= (async () => {
      const token = this.#stored?.refreshToken
      if (!token) return null
      try {
        const result = await authApi.refresh(token)
        this.#save(result)
        return result.accessToken
      } catch (e) {
        // Offline is not signed out; a rejected token is.
        if (e instanceof ApiError && e.status === 401) this.#save(null)
        return null
      } finally {
        this.#refreshing = null
      }
    })()
    return this.#refreshing
  }

  async logout() {
    try {
      await authApi.logout()
    } catch {
      // Signing out locally still counts when the server is unreachable.
    }
    this.#save(null)
  }
}
