// ICE servers for a call, from configuration. Locally nothing is needed (host candidates on
// loopback); in production STUN, plus TURN credentials minted per request and short-lived:
// Cloudflare's TURN service when its key is configured, else any TURN server that accepts the
// REST-API shared secret scheme (coturn's `use-auth-secret`, draft-uberti-behave-turn-rest /
// RFC 7635 style). A static TURN password never reaches the browser.
import type { Env } from '../env'

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

export async function iceServersFor(env: Env, userId: string): Promise<IceServer[]> {
  const servers: IceServer[] = []
  const stun = list(env.STUN_URLS)
  if (stun.length) servers.push({ urls: stun })
  if (env.TURN_KEY_ID && env.TURN_KEY_API_TOKEN) {
    // Cloudflare Realtime TURN: the key's API token mints credentials for one TTL.
    const res = await fetch(`https://rtc.live.cloudflare.com/v1/turn/keys/${env.TURN_KEY_ID}/credentials/generate`, {
      method: 'POST',
      headers: { authorization: `Bearer ${env.TURN_KEY_API_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ttl: TURN_TTL_S }),
    })
    if (!res.ok) throw new Error(`TURN credentials: ${res.status}`)
    const { iceServers } = (await res.json()) as { iceServers: IceServer | IceServer[] }
    servers.push(...(Array.isArray(iceServers) ? iceServers : [iceServers]))
  } else if (env.TURN_SECRET && list(env.TURN_URLS).length) {
    servers.push({ urls: list(env.TURN_URLS), ...(await restCredential(env.TURN_SECRET, userId)) })
  }
  return servers
}
