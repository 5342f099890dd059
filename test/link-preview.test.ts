import { env } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { LinkPreview } from '../worker/shared/protocol'
import { sha256 } from '../worker/ids'
import { api, json, register } from './helpers'

const preview = (token: string, url: string) => api(`/api/link-preview?url=${encodeURIComponent(url)}`, { token })

describe('link previews', () => {
  it('reads the Open Graph card, serves its picture from this Worker, and keeps both in R2', async ({ expect }) => {
    const a = await register()
    const res = await preview(a.accessToken, 'https://links.example.com/article')
    expect(res.status).toBe(200)
    const { preview: card } = await json<{ preview: LinkPreview }>(res)
    expect(card).toMatchObject({ url: 'https://links.example.com/article', title: 'A river of echoes', description: 'How sound travels down a valley, and why it comes back.', siteName: 'Valley Times' })
    expect(card.image).toMatch(/^\/api\/link-preview\/image\/[A-Za-z0-9_-]{43}$/)
    const img = await api(card.image!)
    expect(img.status).toBe(200)
    expect(img.headers.get('content-type')).toBe('image/png')
    const hash = await sha256('https://links.example.com/article')
    expect(await env.MEDIA.head(`link-previews/${hash}.json`)).not.toBeNull()
    // Needs a signed-in user.
    expect((await api('/api/link-preview?url=https%3A%2F%2Flinks.example.com%2Farticle')).status).toBe(401)
  })

  it('reads only the head of a huge page and skips a picture over the limit', async ({ expect }) => {
    const a = await register()
    const big = await json<{ preview: LinkPreview }>(await preview(a.accessToken, 'https://links.example.com/big'))
    expect(big.preview.title).toBe('A river of echoes')
    const huge = await json<{ preview: LinkPreview }>(await preview(a.accessToken, 'https://links.example.com/huge-picture'))
    expect(huge.preview.title).toBe('A river of echoes')
    expect(huge.preview.image).toBeNull()
  })

  it('refuses private addresses (also behind a redirect) and other schemes, and says why', async ({ expect }) => {
    const a = await register()
    for (const url of ['http://127.0.0.1/', 'http://10.1.2.3/x', 'http://192.168.0.1/', 'http://169.254.169.254/latest/meta-data', 'http://localhost:8787/', 'http://[::1]/', 'http://printer.local/', 'https://links.example.com:8443/article', 'http://intranet/']) {
      const res = await preview(a.accessToken, url)
      expect(res.status, url).toBe(400)
      expect((await json(res)).error.code, url).toBe('FORBIDDEN')
    }
    for (const url of ['javascript:alert(1)', 'ftp://links.example.com/a', 'file:///etc/passwd', 'https://user:pw@links.example.com/article', 'not a url']) {
      const res = await preview(a.accessToken, url)
      expect(res.status, url).toBe(400)
      expect((await json(res)).error.code, url).toBe('BAD_REQUEST')
    }
    expect((await preview(a.accessToken, 'https://links.example.com/to-private')).status).toBe(404)
    expect((await preview(a.accessToken, 'https://links.example.com/plain')).status).toBe(404)
  })
})
