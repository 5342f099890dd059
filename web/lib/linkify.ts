/** A piece of message text: plain, or a web link to open. */
export type TextPart = { text: string; href?: undefined } | { text: string; href: string }

// http(s) only: no javascript:, data: or anything else ever becomes a link.
const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi
const TRAILING = /[.,;:!?'"”’)\]}>]+$/

/**
 * Splits text into plain parts and links. Trailing punctuation stays text ("see https://a.b/c."),
 * except a closing bracket that closes one inside the link (Wikipedia-style URLs).
 */
export function linkify(text: string): TextPart[] {
  const parts: TextPart[] = []
  let last = 0
  for (const m of text.matchAll(URL_RE)) {
    let link = m[0]
    let cut = link.match(TRAILING)?.[0] ?? ''
    while (cut.startsWith(')') && (link.slice(0, link.length - cut.length).match(/\(/g)?.length ?? 0) > (link.slice(0, link.length - cut.length).match(/\)/g)?.length ?? 0)) cut = cut.slice(1)
    link = link.slice(0, link.length - cut.length)
    let href: string
    try {
      href = new URL(link).href
    } catch {
      continue
    }
    if (m.index > last) parts.push({ text: text.slice(last, m.index) })
    parts.push({ text: link, href })
    last = m.index + link.length
  }
  if (last < text.length) parts.push({ text: text.slice(last) })
  return parts
}

/** The first link of a text, for its preview card. */
export const firstLink = (text: string): string | null => linkify(text).find((p) => p.href)?.href ?? null
