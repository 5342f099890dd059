// Link preview cards: the Worker fetches the page (never the browser, which would tell every site
// who reads about it), reads its Open Graph tags within size and time limits, and keeps the card
// and its picture in R2 for a day.
import type { Env } from '../env'
import { sha256 } from '../ids'
import type { LinkPreview } from '../shared/protocol'

const MAX_HTML_BYTES = 512 * 1024
const MAX_IMAGE_BYTES = 1024 * 1024
const FETCH_TIMEOUT_MS = 4_000
const MAX_REDIRECTS = 3
const FRESH_MS = 24 * 3600 * 1000
/** A page that gave no card is not asked again for this long. */
const RETRY_FAILED_MS = 3600 * 1000
const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/webp', 'image/gif'])

export type PreviewRefusal = 'bad-url' | 'private-address'

/** Literal IPv4 addresses that are not on the public internet (loopback, private, link-local, CGNAT, multicast…). */
function privateIPv4(host: string): boolean {
  const m = host.match(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/)
  if (!m) return false
  const [a, b] = [Number(m[1]), Number(m[2])]
  return a === 0 || a === 10 || a === 127 || a >= 224 || (a === 100 && b >= 64 && b <= 127) || (a === 169 && b === 254) || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 198 && (b === 18 || b === 19))
}

/**
 * Only http(s) on the default ports, without credentials, to a name or a public IPv4 address.
 * IPv6 literals and local names are refused outright. `LINK_PREVIEW_ALLOW` (tests only) lists
 * host:port pairs that may be fetched anyway.
 */
export function checkPreviewUrl(raw: string, env: Pick<Env, 'LINK_PREVIEW_ALLOW'>): URL | PreviewRefusal {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return 'bad-url'
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.username || url.password || raw.length > 2048) return 'bad-url'
  const allowed = (env.LINK_PREVIEW_ALLOW ?? '').split(',').map((s) => s.trim()).filter(Boolean)
  if (allowed.includes(url.host)) return url
  const host = url.hostname.toLowerCase()
  if (url.port) return 'private-address'
  if (host.startsWith('[') || privateIPv4(host) || !host.includes('.') || /(^|\.)(localhost|local|internal|lan|home|arpa)$/.test(host)) return 'private-address'
  return url
}

/** Reads at most `max` bytes of a body (the rest is never downloaded): cut there, or null when `whole` is needed. */
async function readCapped(res: Response, max: number, whole = true): Promise<Uint8Array | null> {
  const reader = res.body?.getReader()
  if (!reader) return new Uint8Array()
  const parts: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    if (size + value.byteLength > max) {
      await reader.cancel()
      if (whole) return null
      parts.push(value.subarray(0, max - size))
      size = max
      break
    }
    size += value.byteLength
    parts.push(value)
  }
  const out = new Uint8Array(size)
  let at = 0
  for (const p of parts) out.set(p, (at += p.byteLength) - p.byteLength)
  return out
}

/** Follows redirects by hand so that every hop passes the same address check. */
async function fetchChecked(url: URL, env: Env, accept: string): Promise<Response | null> {
  let current = url
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    const res = await fetch(current.toString(), {
      redirect: 'manual',
      headers: { accept, 'user-agent': 'echovalley-link-preview/1 (+https://github.com/echovalley)' },
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    })
    if (res.status < 300 || res.status >= 400) return res.ok ? res : null
    const next = res.headers.get('location')
    if (!next) return null
    const checked = checkPreviewUrl(new URL(next, current).toString(), env)
    if (typeof checked === 'string') return null
    current = checked
  }
  return null
}

/** Pulls title, description, site name and picture from the page's head. */
async function readTags(html: Uint8Array, base: URL): Promise<{ title: string; description: string | null; siteName: string | null; image: URL | null }> {
  const tags: Record<string, string> = {}
  let title = ''
  const meta = (el: Element) => {
    const key = (el.getAttribute('property') ?? el.getAttribute('name') ?? '').toLowerCase()
    const content = el.getAttribute('content')
    if (key && content && !(key in tags)) tags[key] = content
  }
  await new HTMLRewriter()
    .on('meta', { element: meta })
    .on('title', { text: (t) => void (title += t.text) })
    .transform(new Response(html, { headers: { 'content-type': 'text/html' } }))
    .arrayBuffer()
  const clean = (s: string | undefined, max: number) => (s ? s.replace(/\s+/g, ' ').trim().slice(0, max) || null : null)
  let image: URL | null = null
  const rawImage = tags['og:image'] ?? tags['twitter:image']
  if (rawImage) {
    try {
      image = new URL(rawImage, base)
    } catch {
      image = null
    }
  }
  return {
    title: clean(tags['og:title'] ?? tags['twitter:title'] ?? title, 200) ?? base.hostname,
    description: clean(tags['og:description'] ?? tags['description'] ?? tags['twitter:description'], 300),
    siteName: clean(tags['og:site_name'], 80),
    image,
  }
}

interface Stored {
  preview: LinkPreview | null
  fetchedAt: number
}

const cardKey = (hash: string) => `link-previews/${hash}.json`
export const previewImageKey = (hash: string) => `link-previews/${hash}.img`

/** The card for a URL, from R2 when fresh; null when the page gives none. */
export async function linkPreview(env: Env, url: URL): Promise<LinkPreview | null> {
  const hash = await sha256(url.toString())
  const cached = await env.MEDIA.get(cardKey(hash))
  if (cached) {
    const stored = (await cached.json()) as Stored
    const age = Date.now() - stored.fetchedAt
    if (age < (stored.preview ? FRESH_MS : RETRY_FAILED_MS)) return stored.preview
  }
  const preview = await fetchPreview(env, url, hash).catch(() => null)
  await env.MEDIA.put(cardKey(hash), JSON.stringify({ preview, fetchedAt: Date.now() } satisfies Stored), { httpMetadata: { contentType: 'application/json' } })
  return preview
}

async function fetchPreview(env: Env, url: URL, hash: string): Promise<LinkPreview | null> {
  const res = await fetchChecked(url, env, 'text/html,application/xhtml+xml')
  if (!res || !/^text\/html|application\/xhtml/.test(res.headers.get('content-type') ?? '')) return null
  // A page bigger than the limit is read up to it: the head, where the tags are, comes first.
  const html = await readCapped(res, MAX_HTML_BYTES, false)
  if (!html) return null
  const tags = await readTags(html, url)
  let image = false
  const imageUrl = tags.image && checkPreviewUrl(tags.image.toString(), env)
  if (imageUrl && typeof imageUrl !== 'string') {
    const img = await fetchChecked(imageUrl, env, 'image/*').catch(() => null)
    const type = img?.headers.get('content-type')?.split(';')[0]?.trim() ?? ''
    const bytes = img && IMAGE_TYPES.has(type) ? await readCapped(img, MAX_IMAGE_BYTES) : null
    if (bytes && bytes.byteLength > 0) {
      await env.MEDIA.put(previewImageKey(hash), bytes, { httpMetadata: { contentType: type } })
      image = true
    }
  }
  return { url: url.toString(), title: tags.title, description: tags.description, siteName: tags.siteName, image: image ? `/api/link-preview/image/${hash}` : null }
}
