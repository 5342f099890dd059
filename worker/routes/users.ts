import { and, asc, eq, gt, notExists, or, sql } from 'drizzle-orm'
import { Hono } from 'hono'
import { getDb } from '../db/client'
import { blocks, users } from '../db/schema'
import { getUserHub } from '../durable-objects'
import type { AppEnv } from '../env'
import { fail, requireAuth, validate } from '../http'
import { newId } from '../ids'
import { sniffImage } from '../media/sniff'
import { ErrorCode } from '../shared/errors'
import { Id, ProfileBody, SearchUsersQuery } from '../shared/protocol'
import { profileOf, relationship, userById, visiblePresence } from '../social/policy'

export const MAX_AVATAR_BYTES = 1024 * 1024

function likePrefix(q: string) {
  return `${q.toLowerCase().replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`
}

export const userRoutes = new Hono<AppEnv>()
  // Avatars load in <img> tags, which send no token; the unguessable id and key are the guard.
  .get('/:id/avatar', async (c) => {
    const id = Id.safeParse(c.req.param('id'))
    const user = id.success ? await userById(getDb(c.env), id.data) : undefined
    if (!user?.avatarKey) fail(404, ErrorCode.NOT_FOUND, 'no avatar')
    const object = await c.env.MEDIA.get(user.avatarKey)
    if (!object) fail(404, ErrorCode.NOT_FOUND, 'no avatar')
    // The URL stays when the avatar changes, so caches revalidate by ETag after five minutes.
    if (c.req.header('if-none-match') === object.httpEtag) return c.body(null, 304)
    return new Response(object.body, {
      headers: { 'content-type': object.httpMetadata?.contentType ?? 'application/octet-stream', 'cache-control': 'private, max-age=300', etag: object.httpEtag },
    })
  })
  .use(requireAuth)
  .get('/search', validate('query', SearchUsersQuery), async (c) => {
    const { userId } = c.get('auth')
    const { q, cursor, limit } = c.req.valid('query')
    const prefix = likePrefix(q.replace(/^@/, ''))
    const rows = await getDb(c.env)
      .select()
      .from(users)
      .where(
        and(
          or(sql`${users.handle} LIKE ${prefix} ESCAPE '\\'`, sql`lower(${users.displayName}) LIKE ${prefix} ESCAPE '\\'`),
          cursor ? gt(users.handle, cursor) : undefined,
          // People who blocked the searcher do not show up.
          notExists(getDb(c.env).select({ x: blocks.blockerId }).from(blocks).where(and(eq(blocks.blockerId, users.id), eq(blocks.blockedId, userId)))),
        ),
      )
      .orderBy(asc(users.handle))
      .limit(limit + 1)
    const page = rows.slice(0, limit)
    return c.json({ users: page.map(profileOf), nextCursor: rows.length > limit ? page[page.length - 1]!.handle : null })
  })
  .get('/:id', async (c) => {
    const { userId } = c.get('auth')
    const id = Id.safeParse(c.req.param('id'))
    const db = getDb(c.env)
    const user = id.success ? await userById(db, id.data) : undefined
    if (!user) fail(404, ErrorCode.NOT_FOUND, 'no such user')
    const rel = await relationship(db, userId, user.id)
    const presence = await visiblePresence(db, userId, user, await getUserHub(c.env, user.id).presence())
    return c.json({ user: profileOf(user), relationship: rel, presence })
  })

export const profileRoutes = new Hono<AppEnv>()
  .use(requireAuth)
  .patch('/profile', validate('json', ProfileBody), async (c) => {
    const { userId } = c.get('auth')
    const db = getDb(c.env)
    const change = c.req.valid('json')
    await db.update(users).set(change).where(eq(users.id, userId))
    if (change.presenceVisibility) await getUserHub(c.env, userId).setPresenceVisible(change.presenceVisibility !== 'nobody')
    return c.json({ user: profileOf((await userById(db, userId))!) })
  })
  .put('/avatar', async (c) => {
    const { userId } = c.get('auth')
    const declared = Number(c.req.header('content-length') ?? NaN)
    if (declared > MAX_AVATAR_BYTES) fail(413, ErrorCode.PAYLOAD_TOO_LARGE, `avatars are limited to ${MAX_AVATAR_BYTES} bytes`)
    const bytes = new Uint8Array(await c.req.arrayBuffer())
    if (bytes.length > MAX_AVATAR_BYTES) fail(413, ErrorCode.PAYLOAD_TOO_LARGE, `avatars are limited to ${MAX_AVATAR_BYTES} bytes`)
    const type = sniffImage(bytes.subarray(0, 16))
    if (!type || type === 'image/gif') fail(415, ErrorCode.UNSUPPORTED_TYPE, 'an avatar must be a PNG, JPEG or WebP image')
    const db = getDb(c.env)
    const previous = (await userById(db, userId))?.avatarKey
    const key = `avatars/${userId}/${newId()}`
    await c.env.MEDIA.put(key, bytes, { httpMetadata: { contentType: type } })
    await db.update(users).set({ avatarKey: key }).where(eq(users.id, userId))
    if (previous) await c.env.MEDIA.delete(previous)
    return c.json({ user: profileOf((await userById(db, userId))!) })
  })
