// A small web site for link-preview tests, answered in Node by the test pool's outbound service
// (workers tests) or served on loopback (browser tests): nothing leaves the machine.
import { crc32, deflateSync } from 'node:zlib'

/** A real 16×16 PNG (a teal square), so a browser can decode what the Worker serves. */
function png16(): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data])
    const out = Buffer.alloc(body.length + 8)
    out.writeUInt32BE(data.length, 0)
    body.copy(out, 4)
    out.writeUInt32BE(crc32(body) >>> 0, body.length + 4)
    return out
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(16, 0)
  ihdr.writeUInt32BE(16, 4)
  ihdr.set([8, 2, 0, 0, 0], 8)
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: 16 }, () => [15, 118, 110]).flat())])
  return Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(Buffer.concat(Array(16).fill(row)))), chunk('IEND', Buffer.alloc(0))])
}
const PNG = png16()

export const ARTICLE_HTML = `<!doctype html><html><head>
<title>Fallback title</title>
<meta property="og:title" content="A river of echoes">
<meta property="og:description" content="How sound travels down a valley, and why it comes back.">
<meta property="og:site_name" content="Valley Times">
<meta property="og:image" content="/pic.png">
</head><body><p>Article</p><script>alert(1)</script></body></html>`

/** Answers a request for a path of the site; null for an unknown path. */
export function linkSite(pathname: string): Response | null {
  switch (pathname) {
    case '/article':
      return new Response(ARTICLE_HTML, { headers: { 'content-type': 'text/html; charset=utf-8' } })
    case '/pic.png':
      return new Response(new Uint8Array(PNG), { headers: { 'content-type': 'image/png' } })
    case '/big':
      // The tags come first; the megabytes after them are never read.
      return new Response(ARTICLE_HTML.replace('</head>', '</head>' + 'x'.repeat(3 * 1024 * 1024)), { headers: { 'content-type': 'text/html' } })
    case '/huge-picture':
      return new Response(ARTICLE_HTML.replace('/pic.png', '/huge.png'), { headers: { 'content-type': 'text/html' } })
    case '/huge.png':
      return new Response(new Uint8Array(2 * 1024 * 1024), { headers: { 'content-type': 'image/png' } })
    case '/to-private':
      return new Response(null, { status: 302, headers: { location: 'http://127.0.0.1/secret' } })
    case '/plain':
      return new Response('just text', { headers: { 'content-type': 'text/plain' } })
    default:
      return null
  }
}
