import type { AuthResult, PublicUser } from '../../worker/shared/protocol'
import { createStore, del, get, set } from 'idb-keyval'
import { ApiError, authApi, useTokens } from './api'

const STORAGE_KEY = 'echovalley.session'

interface Stored {
  user: PublicUser
  sessionId: string
  accessToken: string
  refreshToken: string
  /** The key of a refresh sent with this token whose answer has not come (yet): a retry sends it again. */
  retryKey?: string
}

function deviceName(): string {
  const ua = navigator.userAgent
  const browser = /Firefox\//.test(ua) ? 'Firefox' : /Edg\//.test(ua) ? 'Edge' : /Chrome\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser'
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : ''
  return `${browser}${os ? ` on ${os}` : ''}`
}

function readStored(): Stored | null {
  try {
    const raw = localStorage.getItem(STORAGE_KEY)
    return raw ? (JSON.parse(raw) as Stored) : null
  } catch {
    return null
  }
}

/**
 * Chromium propagates localStorage between tab processes asynchronously, so a tab that takes the
 * refresh lock right after another may still read the spent refresh token there. IndexedDB is
 * consistent across tabs, so the refresh path reads and writes the tokens there.
 */
const tokenStore = typeof indexedDB === 'undefined' ? null : createStore('echovalley-session', 'kv')

async function readShared(): Promise<Stored | null> {
  if (!tokenStore) return readStored()
  try {
    return (await get<Stored>(STORAGE_KEY, tokenStore)) ?? readStored()
  } catch {
    return readStored()
  }
}

async function writeShared(value: Stored | null) {
  if (!tokenStore) return
  try {
    await (value ? set(STORAGE_KEY, value, tokenStore) : del(STORAGE_KEY, tokenStore))
  } catch {
    // localStorage still holds it; only the cross-tab race is less well guarded.
  }
}

/** Tabs take turns refreshing (Web Locks), so no tab presents a token another tab just used. */
async function withRefreshLock(fn: () => Promise<string | null>): Promise<string | null> {
  if (typeof navigator === 'undefined' || !navigator.locks) return fn()
  return navigator.locks.request('echovalley.refresh', fn)
}

const DEVICES_KEY = 'echovalley.devices'

/**
 * This browser's device tokens, by handle: a sign-in that presents one is counted apart from
 * strangers guessing the handle, so an attack on the account does not lock its owner out.
 */
function knownDevices(): Record<string, string> {
  try {
    return JSON.parse(localStorage.getItem(DEVICES_KEY) ?? '{}') as Record<string, string>
  } catch {
    return {}
  }
}

function rememberDevice(result: AuthResult) {
  if (!result.deviceToken) return
  localStorage.setItem(DEVICES_KEY, JSON.stringify({ ...knownDevices(), [result.user.handle]: result.deviceToken }))
}

/** The signed-in user and their tokens, kept in localStorage so a reload stays signed in. */
export class Session {
  #stored = $state<Stored | null>(null)
  #refreshing: Promise<string | null> | null = null
  /** Why the user was signed out without asking (a suspension), for the sign-in screen. */
  #notice = $state<string | null>(null)

  constructor() {
    this.#stored = readStored()
    useTokens({ accessToken: () => this.#stored?.accessToken ?? null, refresh: (stale) => this.refresh(stale) })
    // Tabs share one session: follow another tab's refresh, sign-in and sign-out.
    window.addEventListener('storage', (e) => {
      if (e.key === STORAGE_KEY || e.key === null) this.#stored = readStored()
    })
  }

  get user() {
    return this.#stored?.user ?? null
  }
  get sessionId() {
    return this.#stored?.sessionId ?? null
  }
  get notice() {
    return this.#notice
  }

  /** Resolves once the tokens are where the next tab to refresh will look. */
  #save(result: AuthResult | null): Promise<void> {
    return this.#store(result ? { user: result.user, sessionId: result.sessionId, accessToken: result.accessToken, refreshToken: result.refreshToken } : null)
  }

  #store(value: Stored | null): Promise<void> {
    this.#stored = value
    if (this.#stored) localStorage.setItem(STORAGE_KEY, JSON.stringify(this.#stored))
    else localStorage.removeItem(STORAGE_KEY)
    return writeShared($state.snapshot(this.#stored) as Stored | null)
  }

  async register(handle: string, password: string, displayName: string) {
    this.#notice = null
    const result = await authApi.register({ handle, password, displayName, deviceName: deviceName() })
    rememberDevice(result)
    await this.#save(result)
  }

  async login(handle: string, password: string) {
    this.#notice = null
    const result = await authApi.login({ handle, password, deviceName: deviceName(), deviceToken: knownDevices()[handle.trim().toLowerCase()] })
    rememberDevice(result)
    await this.#save(result)
  }

  /**
   * One refresh at a time, across tabs too: a refresh token works only once, and presenting a
   * used one revokes the session. `stale` is the access token that was refused; if another call
   * or tab has replaced it meanwhile, the replacement is the answer.
   */
  refresh(stale?: string | null): Promise<string | null> {
    this.#refreshing ??= withRefreshLock(async () => {
      const latest = (await readShared()) ?? this.#stored
      if (latest?.accessToken !== this.#stored?.accessToken) this.#stored = latest
      if (!latest) return null
      if (stale !== undefined && latest.accessToken !== stale) return latest.accessToken
      try {
        // Stored before it is sent: when the answer is lost (or the tab dies waiting), the next try
        // sends the same key, which tells the server a retry from a replay (that signs out).
        const retryKey = latest.retryKey ?? crypto.randomUUID()
        if (latest.retryKey === undefined) await this.#store({ ...latest, retryKey })
        const result = await authApi.refresh(latest.refreshToken, retryKey)
        await this.#save(result)
        return result.accessToken
      } catch (e) {
        // Offline or overloaded is not signed out, nor a refresh that crossed another of this
        // device's (the token and key stay for the next try); a refused token is.
        if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429 && e.code !== 'REFRESH_IN_FLIGHT') {
          if (e.code === 'SUSPENDED') this.#notice = e.message
          await this.#save(null)
        }
        return null
      }
    }).finally(() => {
      this.#refreshing = null
    })
    return this.#refreshing
  }

  /** The server shut this account out (suspended): its sessions are already revoked, so only this device forgets them. */
  async shutOut(notice: string) {
    this.#notice = notice
    await this.#save(null)
  }

  async logout() {
    try {
      await authApi.logout()
    } catch {
      // Signing out locally still counts when the server is unreachable.
    }
    await this.#save(null)
  }
}
