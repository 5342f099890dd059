import { Hono } from 'hono'
import * as z from 'zod'
import type { AppEnv } from '../env'
import { fail, requireAuth, validate } from '../http'
import { checkPreviewUrl, linkPreview, previewImageKey } from '../media/link-preview'
import { ErrorCode } from '../shared/errors'

const PreviewQuery = z.object({ url: z.string().min(1).max(2048) })

export const linkPreviewRoutes = new Hono<AppEnv>()
  .get('/', requireAuth, validate('query', PreviewQuery), async (c) => {
    const url = checkPreviewUrl(c.req.valid('query').url, c.env)
    if (url === 'bad-url') fail(400, ErrorCode.BAD_REQUEST, 'only http and https links have previews')
    if (url === 'private-address') fail(400, ErrorCode.FORBIDDEN, 'links to private addresses have no preview')
    const preview = await linkPreview(c.env, url)
    if (!preview) fail(404, ErrorCode.NOT_FOUND, 'this page has no preview')
    return c.json({ preview }, 200, { 'Cache-Control': 'private, max-age=3600' })
  })
  // <img> sends no token; the name is a hash of the page's URL and the picture was public anyway.
  .get('/image/:hash{[A-Za-z0-9_-]{43}}', async (c) => {
    const object = await c.env.MEDIA.get(previewImageKey(c.req.param('hash')))
    if (!object) fail(404, ErrorCode.NOT_FOUND, 'no such preview image')
    return c.body(object.body, 200, {
      'Content-Type': object.httpMetadata?.contentType ?? 'application/octet-stream',
      'Cache-Control': 'public, max-age=86400',
      'Content-Security-Policy': "default-src 'none'",
      'X-Content-Type-Options': 'nosniff',
    })
  })
