import { SvelteMap } from 'svelte/reactivity'
import type { FriendRequest, Presence, Profile } from '../../worker/shared/protocol'
import { api } from './api'
import { i18n, t } from './i18n.svelte'

export type Friend = Profile & { presence: Presence | null }

/** Friends, requests, blocks and live presence of the signed-in user. */
export class SocialStore {
  #friends = $state<Friend[]>([])
  #incoming = $state<FriendRequest[]>([])
  #outgoing = $state<FriendRequest[]>([])
  #blocked = $state<Profile[]>([])
  #presence = new SvelteMap<string, Presence>()

  get friends() {
    return this.#friends
  }
  get incoming() {
    return this.#incoming
  }
  get outgoing() {
    return this.#outgoing
  }
  get blocked() {
    return this.#blocked
  }
  /** Where the user stands with someone, from the lists as they are now (search results go stale). */
  relationOf(userId: string, selfId: string): 'self' | 'friend' | 'request-sent' | 'request-received' | 'none' {
    if (userId === selfId) return 'self'
    if (this.#friends.some((f) => f.id === userId)) return 'friend'
    if (this.#outgoing.some((r) => r.to.id === userId)) return 'request-sent'
    if (this.#incoming.some((r) => r.from.id === userId)) return 'request-received'
    return 'none'
  }
  isBlocked(userId: string): boolean {
    return this.#blocked.some((b) => b.id === userId)
  }

  presenceOf(userId: string): Presence | null {
    return this.#presence.get(userId) ?? this.#friends.find((f) => f.id === userId)?.presence ?? null
  }

  setPresence(userId: string, presence: Presence) {
    this.#presence.set(userId, presence)
  }

  async refresh() {
    try {
      const [f, r, b] = await Promise.all([
        api<{ friends: Friend[] }>('/api/friends'),
        api<{ incoming: FriendRequest[]; outgoing: FriendRequest[] }>('/api/friends/requests'),
        api<{ blocked: Profile[] }>('/api/blocks'),
      ])
      this.#friends = f.friends
      this.#incoming = r.incoming
      this.#outgoing = r.outgoing
      this.#blocked = b.blocked
      for (const friend of f.friends) if (friend.presence) this.#presence.set(friend.id, friend.presence)
    } catch {
      // Offline: keep what we have.
    }
  }

  search(q: string, cursor?: string) {
    const params = new URLSearchParams({ q })
    if (cursor) params.set('cursor', cursor)
    return api<{ users: Profile[]; nextCursor: string | null }>(`/api/users/search?${params}`)
  }

  async request(handle: string, note: string) {
    await api('/api/friends/requests', { body: { handle, note } })
    await this.refresh()
  }
  async accept(id: string) {
    await api(`/api/friends/requests/${id}/accept`, { method: 'POST' })
    await this.refresh()
  }
  async decline(id: string) {
    await api(`/api/friends/requests/${id}/decline`, { method: 'POST' })
    await this.refresh()
  }
  async cancel(id: string) {
    await api(`/api/friends/requests/${id}`, { method: 'DELETE' })
    await this.refresh()
  }
  async unfriend(userId: string) {
    await api(`/api/friends/${userId}`, { method: 'DELETE' })
    await this.refresh()
  }
  async block(userId: string) {
    await api('/api/blocks', { body: { userId } })
    await this.refresh()
  }
  async unblock(userId: string) {
    await api(`/api/blocks/${userId}`, { method: 'DELETE' })
    await this.refresh()
  }
}

export function lastSeenText(p: Presence | null): string {
  if (!p) return ''
  if (p.online) return t('presence.online')
  if (!p.lastSeenAt) return t('presence.offline')
  const mins = Math.round((Date.now() - p.lastSeenAt) / 60_000)
  if (mins < 1) return t('presence.justNow')
  if (mins < 60) return t('presence.minutes', { n: mins })
  return t('presence.at', { when: new Date(p.lastSeenAt).toLocaleString(i18n.locale, { dateStyle: 'short', timeStyle: 'short' }) })
}
