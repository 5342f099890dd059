// ICE servers for a call, from configuration. Locally nothing is needed (host candidates on
// loopback); in production STUN, plus TURN credentials minted per request and short-lived:
// Cloudflare's TURN service when its key is configured, else any TURN server that accepts the
// REST-API shared secret scheme (coturn's `use-auth-secret`, draft-uberti-behave-turn-rest /
// RFC 7635 style). A static TURN password never reaches the browser.
import type { Env } from '../env'
import { log } from '../ops/log'

export interface IceServer {
  urls: string[]
  username?: string
  credential?: string
}

/** Minted TURN credentials last this long. */
export const TURN_TTL_S = 3600

const list = (s: string | undefined) => (s ?? '').split(',').map((x) => x.trim()).filter(Boolean)

/** username "<expiry>:<userId>", credential base64(HMAC-SHA1(secret, username)): coturn's check. */
export async function restCredential(secret: string, userId: string, now = Date.now()): Promise<{ username: string; credential: string }> {
  const username = `${Math.floor(now / 1000) + TURN_TTL_S}:${userId}`
  const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-1' }, false, ['sign'])
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, new TextEncoder().encode(username)))
  return { username, credential: btoa(String.fromCharCode(...mac)) }
}

/** Mints Cloudflare Realtime TURN credentials with the key's API token (the documented generate-ice-servers call). */
async function cloudflareTurn(keyId: string, token: string): Promise<IceServer[]> {
  const res = await fetch(`https://rtc.live.cloudflare.com/v1/turn/keys/${encodeURIComponent(keyId)}/credentials/generate-ice-servers`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ ttl: TURN_TTL_S }),
  })
  if (!res.ok) throw new Error(`Cloudflare TURN answered ${res.status}`)
  // The older generate call answered one object, this one a list: take either.
  const { iceServers } = (await res.json()) as { iceServers: IceServer | IceServer[] }
  return (Array.isArray(iceServers) ? iceServers : [iceServers])
    .map((s) => ({ ...s, urls: (Array.isArray(s.urls) ? s.urls : [s.urls]).filter((u) => !/:53(\?|$)/.test(u)) }))
    .filter((s) => s.urls.length > 0)
}

export async function iceServersFor(env: Env, userId: string): Promise<IceServer[]> {
  const servers: IceServer[] = []
  const stun = list(env.STUN_URLS)
  if (stun.length) servers.push({ urls: stun })
  if (env.TURN_KEY_ID && env.TURN_KEY_API_TOKEN) {
    // Port 53 is left out: browsers refuse it and would wait on it before the others.
    try {
      return [...servers, ...(await cloudflareTurn(env.TURN_KEY_ID, env.TURN_KEY_API_TOKEN))]
    } catch (e) {
      // A call without a relay still connects on most networks: STUN (and a REST-secret TURN) go on.
      log(env, 'warn', 'TURN credentials not minted', { error: String(e) })
    }
  }
  if (env.TURN_SECRET && list(env.TURN_URLS).length) {
    servers.push({ urls: list(env.TURN_URLS), ...(await restCredential(env.TURN_SECRET, userId)) })
  }
  return servers
}
