import { SvelteMap, SvelteSet } from 'svelte/reactivity'
import type {
  ClientMessage,
  ConversationEvent,
  ConversationSummary,
  EditEvent,
  HistoryPage,
  KeepDays,
  MemberEvent,
  MessageBody,
  MessageEvent,
  Presence,
  PublicUser,
  Receipt,
  RecallEvent,
  RenameEvent,
  RetentionEvent,
  SearchHit,
  VoiceEvent,
  CallEvent,
  ServerMessage,
} from '../../worker/shared/protocol'
import { TYPING_TTL_MS } from '../../worker/shared/limits'
import { ErrorCode } from '../../worker/shared/errors'
import type { VoiceRoomSummary } from '../../worker/shared/voice'
import { api } from './api'
import { ChatCache, type OutboxItem, type PendingUpload } from './cache'
import { completeUpload, createUpload, finalUploadError } from './tus'
import { bodyText, transcripts } from './media.svelte'
import { ChatSocket } from './chat-socket.svelte'
import { localizeError, t, type MessageKey } from './i18n.svelte'

/** `saving`: shown at once, not yet committed to IndexedDB; `pending`: safe on the device, not yet acked. */
export type SendState = 'saving' | 'pending' | 'failed' | 'sent' | 'delivered' | 'read'

/** What the chat view renders: a message as it stands now, or one still in the outbox. */
export interface DisplayMessage {
  key: string
  /** Membership, rename, voice-room and call events show as a line of their own. */
  system?: MemberEvent | RenameEvent | RetentionEvent | VoiceEvent | CallEvent
  seq: number | null
  senderId: string
  body: MessageBody | null
  serverTs: number
  editedAt?: number
  recalled?: { by: string; byAdmin: boolean; byModerator?: boolean }
  state: SendState | null
  readBy: number
  failed?: string
  reactions?: { emoji: string; count: number; mine: boolean }[]
  /** The quoted message, as it stands now. */
  quote?: { seq: number; senderId: string; text: string | null }
  /** Media of an unsent message, shown from the device until the server has it. */
  local?: { main: Blob; thumb?: Blob }
  /** 0–1 while the media uploads. */
  progress?: number
}

/** "Missed voice call", "Video call · 3:24", in the reader's language. */
export function callText(e: CallEvent): string {
  const video = e.video
  if (e.outcome !== 'answered') return t(`call.${e.outcome}${video ? 'Video' : 'Voice'}` as MessageKey)
  const s = Math.round(e.durationMs / 1000)
  return t(video ? 'call.videoFor' : 'call.voiceFor', { time: `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}` })
}

/** Codes after which resending the same write cannot succeed. */
const FINAL_ERRORS = new Set(['BAD_REQUEST', 'NOT_MEMBER', 'NOT_FOUND', 'FORBIDDEN', 'NOT_ALLOWED', 'PAYLOAD_TOO_LARGE', 'TOO_LATE'])
const ACK_TIMEOUT_MS = 10_000
/** Writes of one conversation sent before the first is acked; the server sequences them in send order. */
const MAX_IN_FLIGHT = 20
const RATE_LIMIT_BACKOFF_MS = 2_000
const HISTORY_PAGE = 50

class ConversationState {
  events = new SvelteMap<number, ConversationEvent>()
  receipts = new SvelteMap<string, Receipt>()
  typing = new SvelteMap<string, number>()
  /** People its events name who are no longer members (the list only holds members). */
  people = new SvelteMap<string, PublicUser>()
  /** Every seq from `base` to `contiguous` is held; sync resumes after `contiguous`. */
  base = $state(0)
  contiguous = $state(0)
  lastSeq = $state(0)
  hasOlder = $state(false)
  loaded = $state(false)
}

/** Stored former members join the ones in memory; a name heard this session wins. */
function keepNames(s: ConversationState, stored: PublicUser[] | undefined) {
  for (const p of stored ?? []) if (!s.people.has(p.id)) s.people.set(p.id, p)
}

/**
 * All chat state of the signed-in user: conversations, events by seq, receipts, and the outbox
 * that survives reloads and goes out one write per conversation at a time.
 */
export class ChatStore {
  #conversations = $state<ConversationSummary[]>([])
  #outbox = $state<OutboxItem[]>([])
  /** Outbox items whose IndexedDB write has not committed yet: a reload now would lose them. */
  #unsaved = new SvelteSet<string>()
  /** Upload progress of queued media messages, by clientMsgId. */
  #progress = new SvelteMap<string, number>()
  #uploading = new Set<string>()
  #saving: Promise<void> = Promise.resolve()
  #byId = new SvelteMap<string, ConversationState>()
  /** Sent and not yet answered, per conversation: clientMsgId → its ack timer. */
  #inFlight = new Map<string, Map<string, ReturnType<typeof setTimeout>>>()
  /** Which socket a conversation's writes in flight went out on (see #pump). */
  #flightPath = new Map<string, ChatSocket>()
  /** The open chat's writer socket: its writes go straight to the conversation's room. */
  #writer: { id: string; socket: ChatSocket } | null = null
  /** Conversations whose outbox waits after RATE_LIMITED. */
  #paused = new Set<string>()
  #deliveredTimers = new Map<string, ReturnType<typeof setTimeout>>()
  #cache: ChatCache
  #socket: ChatSocket
  #activeId = $state<string | null>(null)
  /** Live voice rooms by conversation, as their rooms last said. */
  #voice = new SvelteMap<string, VoiceRoomSummary>()
  #unreadAtOpen = new SvelteMap<string, number>()
  #olderLoads = new Map<string, Promise<void>>()
  #error = $state<string | null>(null)

  constructor(
    readonly userId: string,
    private readonly hooks: {
      presence?: (userId: string, p: Presence) => void
      friendsChanged?: () => void
      isBlocked?: (userId: string) => boolean
      /** Call frames go to the call screen. */
      call?: (m: Extract<ServerMessage, { type: `call-${string}` }>) => void
      /** This user is out of a conversation (removed, or left on some device). */
      left?: (conversationId: string) => void
      /** The account was suspended: the server closed the socket for good. */
      suspended?: () => void
    } = {},
  ) {
    this.#cache = new ChatCache(userId)
    this.#socket = new ChatSocket(
      (m) => this.#onMessage(m),
      () => this.#onOpen(),
      () => this.hooks.suspended?.(),
    )
  }

  get conversations() {
    return this.#conversations
  }
  get status() {
    return this.#socket.status
  }
  get activeId() {
    return this.#activeId
  }
  get error() {
    return this.#error
  }
  get outbox() {
    return this.#outbox
  }

  async start() {
    const [list, outbox] = await Promise.all([this.#cache.conversations(), this.#cache.outbox()])
    if (list) this.#conversations = list
    if (outbox) this.#outbox = outbox
    this.#socket.start()
    document.addEventListener('visibilitychange', this.#onHidden)
    await this.refreshConversations()
  }

  async stop(clearCache: boolean) {
    document.removeEventListener('visibilitychange', this.#onHidden)
    this.#flushDrafts()
    this.#openWriter(null)
    this.#socket.stop()
    if (clearCache) await this.#cache.clear()
  }

  /** Refreshes asked and applied: an answer overtaken by a later one's is dropped. */
  #listAsked = 0
  #listApplied = 0

  async refreshConversations() {
    const asked = ++this.#listAsked
    try {
      const { conversations } = await api<{ conversations: ConversationSummary[] }>('/api/conversations')
      if (asked < this.#listApplied) return
      this.#listApplied = asked
      this.#keepFormerMembers(conversations)
      this.#conversations = conversations.map((c) => this.#withLive(c)).sort((a, b) => b.lastActivityAt - a.lastActivityAt)
      this.#saveList()
    } catch {
      // Offline: the cached list stays.
    }
  }

  /**
   * The list's figures come from D1, which trails the rooms by up to a flush, and an answer can be
   * overtaken by live events on its way: what this tab saw live beyond the answer's cursors stays
   * (a badge counted, a newer preview, a read the server has not recorded yet).
   */
  #withLive(server: ConversationSummary): ConversationSummary {
    const local = this.conversation(server.id)
    if (!local || (local.lastSeq <= server.lastSeq && local.readSeq <= server.readSeq)) return server
    const readSeq = Math.max(local.readSeq, server.readSeq)
    const unread =
      server.unread -
      this.#unreadBetween(server.id, server.readSeq, Math.min(readSeq, server.lastSeq)) +
      this.#unreadBetween(server.id, Math.max(server.lastSeq, readSeq), local.lastSeq)
    const newer = local.lastSeq > server.lastSeq ? { lastSeq: local.lastSeq, lastActivityAt: local.lastActivityAt, preview: local.preview } : {}
    // The chat on screen counts nothing new (as #bump); a list cached before a reload, with none of
    // its events in memory, keeps its own count when it is ahead on both cursors.
    const held = (this.#byId.get(server.id)?.events.size ?? 0) > 0
    const ahead = !held && local.lastSeq >= server.lastSeq && local.readSeq >= server.readSeq
    const count = server.id === this.#activeId ? local.unread : ahead ? Math.max(unread, local.unread) : unread
    return { ...server, ...newer, readSeq, unread: Math.max(0, count) }
  }

  /** Messages and calls from others in (after, upTo] this tab holds, counted as the server counts unread. */
  #unreadBetween(id: string, after: number, upTo: number): number {
    const events = this.#byId.get(id)?.events
    if (!events || upTo <= after) return 0
    let n = 0
    for (const [seq, e] of events) {
      if (seq <= after || seq > upTo || e.senderId === this.userId || this.hooks.isBlocked?.(e.senderId)) continue
      if (e.type === 'call' || (e.type === 'message' && !e.recalled)) n++
    }
    return n
  }

  async startChat(peerHandle: string): Promise<string> {
    const { conversation } = await api<{ conversation: ConversationSummary }>('/api/conversations', { body: { peerHandle } })
    if (!this.#conversations.some((c) => c.id === conversation.id)) this.#conversations = [conversation, ...this.#conversations]
    this.#saveList()
    return conversation.id
  }

  #listSaveQueued = false

  /**
   * The list as it stands goes to IndexedDB, so a reload offline shows the same previews and counts;
   * once per turn, however many changes it had (a message read in the open chat is two).
   */
  #saveList() {
    if (this.#listSaveQueued) return
    this.#listSaveQueued = true
    queueMicrotask(() => {
      this.#listSaveQueued = false
      // A Svelte state proxy cannot be stored (DataCloneError): store a plain copy.
      void this.#cache.saveConversations($state.snapshot(this.#conversations) as ConversationSummary[]).catch((e: unknown) => console.warn('list not cached', e))
    })
  }

  /** Whoever leaves a list's member list keeps their name in that conversation's history. */
  #keepFormerMembers(next: ConversationSummary[]) {
    for (const now of next) {
      const before = this.conversation(now.id)
      if (!before) continue
      const still = new Set(now.members.map((m) => m.id))
      const gone = before.members.filter((m) => !still.has(m.id))
      if (gone.length) this.#addPeople(now.id, gone)
    }
  }

  #addPeople(id: string, people: PublicUser[]) {
    if (people.length === 0) return
    const s = this.#state(id)
    for (const { id: userId, handle, displayName, avatar } of people) s.people.set(userId, { id: userId, handle, displayName, avatar })
    // Merged with what is stored: a conversation not opened yet holds none of its earlier names in memory.
    void this.#cache
      .formerMembers(id)
      .then((stored) => {
        keepNames(s, stored)
        return this.#cache.saveFormerMembers(id, [...s.people.values()].map((p) => ({ ...p })))
      })
      .catch((e: unknown) => console.warn('names not cached', e))
  }

  /** Former members of a conversation whose names its history still shows. */
  formerMembers(id: string): PublicUser[] {
    return [...(this.#byId.get(id)?.people.values() ?? [])]
  }

  #replaceSummary(id: string, change: (c: ConversationSummary) => ConversationSummary) {
    this.#conversations = this.#conversations.map((c) => (c.id === id ? change(c) : c))
    this.#saveList()
  }

  // ---- groups ----

  async createGroup(title: string, memberIds: string[]): Promise<string> {
    const { conversation } = await api<{ conversation: ConversationSummary }>('/api/conversations/groups', { body: { title, memberIds } })
    await this.refreshConversations()
    return conversation.id
  }
  async addMembers(id: string, userIds: string[]) {
    await api(`/api/conversations/${id}/members`, { body: { userIds } })
    await this.refreshConversations()
  }
  async removeMember(id: string, userId: string) {
    await api(`/api/conversations/${id}/members/${userId}`, { method: 'DELETE' })
    await this.refreshConversations()
  }
  async setRole(id: string, userId: string, role: 'admin' | 'member') {
    await api(`/api/conversations/${id}/members/${userId}/role`, { body: { role } })
    await this.refreshConversations()
  }
  async transfer(id: string, userId: string) {
    await api(`/api/conversations/${id}/transfer`, { body: { userId } })
    await this.refreshConversations()
  }
  async rename(id: string, title: string) {
    await api(`/api/conversations/${id}`, { method: 'PATCH', body: { title } })
    await this.refreshConversations()
  }
  /** null: back to the service's default. */
  async setRetention(id: string, keepDays: KeepDays | null) {
    const { conversation } = await api<{ conversation: ConversationSummary }>(`/api/conversations/${id}/retention`, { method: 'PUT', body: { keepDays } })
    this.#replaceSummary(id, () => conversation)
  }

  /**
   * Server search (D1, which gets new messages within a quarter second) merged with what this
   * device holds, so a message already on screen is found at once, and offline too.
   */
  async searchMessages(q: string, conversationId?: string) {
    const params = new URLSearchParams({ q })
    if (conversationId) params.set('conversationId', conversationId)
    const needle = q.toLocaleLowerCase()
    const local: SearchHit[] = []
    for (const [id, s] of this.#byId) {
      if (conversationId && id !== conversationId) continue
      for (const e of s.events.values()) {
        if (e.type === 'message' && e.body?.kind === 'text' && e.body.text.toLocaleLowerCase().includes(needle)) {
          local.push({ conversationId: id, seq: e.seq, senderId: e.senderId, text: e.body.text, serverTs: e.serverTs })
        }
      }
    }
    const remote = await api<{ hits: SearchHit[]; nextCursor: string | null }>(`/api/search?${params}`).catch(() => ({ hits: [], nextCursor: null }))
    const seen = new Set(remote.hits.map((h) => `${h.conversationId}:${h.seq}`))
    const hits = [...remote.hits, ...local.filter((h) => !seen.has(`${h.conversationId}:${h.seq}`))].sort((a, b) => b.serverTs - a.serverTs)
    return { hits, nextCursor: remote.nextCursor }
  }

  /** The messages this device holds from one conversation's time range: D1 may not have the newest yet. */
  messagesBetween(conversationId: string, from: number, to: number): MessageEvent[] {
    const s = this.#byId.get(conversationId)
    if (!s) return []
    return [...s.events.values()].filter((e): e is MessageEvent => e.type === 'message' && e.serverTs >= from && e.serverTs <= to)
  }

  get totalUnread() {
    return this.#conversations.reduce((n, c) => n + c.unread, 0)
  }

  conversation(id: string) {
    return this.#conversations.find((c) => c.id === id) ?? null
  }

  #state(id: string): ConversationState {
    let s = this.#byId.get(id)
    if (!s) {
      s = new ConversationState()
      this.#byId.set(id, s)
    }
    return s
  }

  /** Opens a conversation: cached events at once, then the newest page, then live sync. */
  async open(id: string | null) {
    this.#activeId = id
    this.#openWriter(id)
    if (!id) return
    this.#unreadAtOpen.set(id, this.conversation(id)?.unread ?? 0)
    if (this.conversation(id)?.unread) this.#replaceSummary(id, (c) => ({ ...c, unread: 0, readSeq: Math.max(c.readSeq, c.lastSeq) }))
    const s = this.#state(id)
    if (!s.loaded) {
      const cached = await this.#cache.conversation(id)
      keepNames(s, await this.#cache.formerMembers(id))
      if (cached && s.events.size === 0) {
        this.#ingest(id, cached.events, false)
        s.hasOlder = s.base > 1
      }
      if (s.events.size === 0) await this.#loadLatestPage(id)
      s.loaded = true
    }
    this.#sync(id)
    this.#markRead(id)
  }

  async #loadLatestPage(id: string) {
    try {
      const page = await api<HistoryPage>(`/api/conversations/${id}/messages?limit=${HISTORY_PAGE}`)
      this.#addPeople(id, page.people)
      this.#ingest(id, page.events, false)
      this.#state(id).hasOlder = page.nextBefore !== null
    } catch {
      // Offline: whatever sync brings later.
    }
  }

  /** Loads the page before the oldest held event; the scroll trigger and the button share one load. */
  loadOlder(id: string): Promise<void> {
    let load = this.#olderLoads.get(id)
    if (!load) {
      load = this.#fetchOlder(id).finally(() => this.#olderLoads.delete(id))
      this.#olderLoads.set(id, load)
    }
    return load
  }

  async #fetchOlder(id: string) {
    const s = this.#state(id)
    if (!s.hasOlder || s.base <= 1) return
    try {
      const page = await api<HistoryPage>(`/api/conversations/${id}/messages?limit=${HISTORY_PAGE}&before=${s.base}`)
      this.#addPeople(id, page.people)
      this.#ingest(id, page.events, false)
      s.hasOlder = page.nextBefore !== null
    } catch {
      // Offline: the button stays for another try.
    }
  }

  /** Events in seq order plus the outbox, as the chat view shows them. */
  messages(id: string): DisplayMessage[] {
    const s = this.#byId.get(id)
    const out: DisplayMessage[] = []
    const others = (this.conversation(id)?.members ?? []).filter((m) => m.id !== this.userId)
    if (s) {
      const seqs = [...s.events.keys()].sort((a, b) => a - b)
      const reactions = this.#reactions(s, seqs)
      for (const seq of seqs) {
        const e = s.events.get(seq)!
        if (e.type === 'member' || e.type === 'renamed' || e.type === 'retention' || e.type === 'voice' || e.type === 'call') {
          out.push({ key: `sys-${e.seq}`, system: e, seq: e.seq, senderId: e.senderId, body: null, serverTs: e.serverTs, state: null, readBy: 0 })
          continue
        }
        if (e.type !== 'message') continue
        const shown = this.#display(e, s, others.map((o) => o.id))
        shown.reactions = reactions.get(seq)
        const replyTo = e.body?.kind === 'text' ? e.body.replyTo?.seq : undefined
        if (replyTo !== undefined) {
          const q = s.events.get(replyTo)
          shown.quote = { seq: replyTo, senderId: q?.senderId ?? '', text: q?.type === 'message' ? bodyText(q.body) : null }
        }
        out.push(shown)
      }
    }
    for (const item of this.#outbox) {
      if (item.conversationId !== id) continue
      out.push({
        key: item.clientMsgId,
        seq: null,
        senderId: this.userId,
        body: item.body,
        serverTs: item.createdAt,
        state: item.failed ? 'failed' : this.#unsaved.has(item.clientMsgId) ? 'saving' : 'pending',
        readBy: 0,
        failed: item.failed,
        ...(item.uploads ? { local: { main: item.uploads.find((u) => u.field === 'mediaId')!.blob, thumb: item.uploads.find((u) => u.field === 'thumbId')?.blob } } : {}),
        progress: this.#progress.get(item.clientMsgId),
      })
    }
    return out
  }

  /** Folds reaction events into per-message counts: each person's latest word on an emoji counts. */
  #reactions(s: ConversationState, seqs: number[]) {
    const latest = new Map<string, { target: number; emoji: string; user: string; on: boolean }>()
    for (const seq of seqs) {
      const e = s.events.get(seq)!
      if (e.type === 'reaction') latest.set(`${e.targetSeq}|${e.emoji}|${e.senderId}`, { target: e.targetSeq, emoji: e.emoji, user: e.senderId, on: e.on })
    }
    const out = new Map<number, { emoji: string; count: number; mine: boolean }[]>()
    for (const r of latest.values()) {
      if (!r.on) continue
      const list = out.get(r.target) ?? []
      const chip = list.find((c) => c.emoji === r.emoji) ?? (list.push({ emoji: r.emoji, count: 0, mine: false }), list[list.length - 1]!)
      chip.count++
      chip.mine ||= r.user === this.userId
      out.set(r.target, list)
    }
    return out
  }

  #display(e: MessageEvent, s: ConversationState, otherIds: string[]): DisplayMessage {
    let state: SendState | null = null
    let readBy = 0
    if (e.senderId === this.userId) {
      const cursors = otherIds.map((uid) => s.receipts.get(uid))
      readBy = cursors.filter((r) => r && r.readSeq >= e.seq).length
      const deliveredTo = cursors.filter((r) => r && r.deliveredSeq >= e.seq).length
      state = otherIds.length > 0 && readBy === otherIds.length ? 'read' : otherIds.length > 0 && deliveredTo === otherIds.length ? 'delivered' : 'sent'
    }
    return {
      key: e.clientMsgId,
      seq: e.seq,
      senderId: e.senderId,
      body: e.body,
      serverTs: e.serverTs,
      editedAt: e.editedAt,
      recalled: e.recalled,
      state,
      readBy,
    }
  }

  /** Who of the others has read, only received, or not yet received one of the user's messages. */
  messageInfo(id: string, seq: number): { read: string[]; delivered: string[]; waiting: string[] } {
    const s = this.#byId.get(id)
    const out = { read: [] as string[], delivered: [] as string[], waiting: [] as string[] }
    for (const m of this.conversation(id)?.members ?? []) {
      if (m.id === this.userId) continue
      const r = s?.receipts.get(m.id)
      if (r && r.readSeq >= seq) out.read.push(m.id)
      else if (r && r.deliveredSeq >= seq) out.delivered.push(m.id)
      else out.waiting.push(m.id)
    }
    return out
  }

  /** Loads older pages until `seq` is held (a search result far back), a bounded number of pages. */
  async reveal(id: string, seq: number, maxPages = 40): Promise<boolean> {
    const s = this.#state(id)
    for (let i = 0; i < maxPages && !s.events.has(seq) && s.hasOlder && s.base > seq; i++) await this.loadOlder(id)
    return s.events.has(seq)
  }

  /** The live room of a conversation, or null; the list's flag until a room has said more. */
  voiceRoom(id: string): VoiceRoomSummary | null {
    const known = this.#voice.get(id)
    if (known) return known.live ? known : null
    const since = this.conversation(id)?.voiceLiveSince
    return since ? { conversationId: id, live: true, startedAt: since, hostId: null, speakers: [], listeners: 0 } : null
  }

  async loadVoiceRoom(id: string) {
    try {
      this.#voice.set(id, (await api<{ summary: VoiceRoomSummary }>(`/api/voice/${id}`)).summary)
    } catch {
      // Offline: the list's flag stands.
    }
  }

  /** True once the conversation's cached or newest page is in (reactive). */
  isLoaded(id: string): boolean {
    return this.#byId.get(id)?.loaded ?? false
  }

  hasOlder(id: string): boolean {
    return this.#byId.get(id)?.hasOlder ?? false
  }

  typingIn(id: string): string[] {
    const s = this.#byId.get(id)
    if (!s) return []
    const now = Date.now()
    return [...s.typing].filter(([, until]) => until > now).map(([uid]) => uid)
  }

  // ---- writes ----

  send(conversationId: string, text: string, replyTo?: number) {
    const body: MessageBody = replyTo ? { kind: 'text', text, replyTo: { seq: replyTo } } : { kind: 'text', text }
    const item: OutboxItem = { conversationId, clientMsgId: crypto.randomUUID(), body, createdAt: Date.now() }
    this.#enqueue(item)
  }

  /**
   * Queues a voice note, image or file. The message goes through the outbox like text: its media
   * is uploaded first (resuming after a cut connection or a restart), then the message is sent.
   */
  sendMedia(conversationId: string, body: MessageBody, uploads: PendingUpload[]) {
    const item: OutboxItem = { conversationId, clientMsgId: crypto.randomUUID(), body, createdAt: Date.now(), uploads }
    this.#enqueue(item)
  }

  /**
   * Passes a message on to other chats. Media is copied on the server (one copy per chat, as each
   * chat owns what it carries), never downloaded and uploaded again; then each copy goes through
   * the outbox like any message.
   */
  async forward(fromId: string, seq: number, toIds: string[]) {
    const e = this.#byId.get(fromId)?.events.get(seq)
    if (e?.type !== 'message' || !e.body) return
    const source = e.body
    for (const to of toIds) {
      let body: MessageBody
      if (source.kind === 'text') {
        body = { kind: 'text', text: source.text, forwarded: true }
      } else {
        const copy = (id: string) => api<{ id: string }>(`/api/media/${id}/copy`, { method: 'POST' }).then((r) => r.id)
        const mediaId = await copy(source.mediaId)
        const thumbId = source.kind === 'image' && source.thumbId ? await copy(source.thumbId) : undefined
        // Mime, size and dimensions are filled again by the room from its own reading.
        const { mime: _m, size: _s, ...rest } = source
        body = { ...rest, mediaId, ...(thumbId ? { thumbId } : {}), forwarded: true } as MessageBody
      }
      const item: OutboxItem = { conversationId: to, clientMsgId: crypto.randomUUID(), body, createdAt: Date.now() }
      this.#enqueue(item)
    }
  }

  // ---- conversation settings ----

  /** Mute, pin or archive for this user; the server tells their other devices. */
  async setSettings(id: string, change: { mute?: 'off' | '1h' | '8h' | 'always'; pinned?: boolean; archived?: boolean }) {
    const { conversation } = await api<{ conversation: ConversationSummary }>(`/api/conversations/${id}/settings`, { method: 'PATCH', body: change })
    this.#replaceSummary(id, (c) => ({ ...c, mutedUntil: conversation.mutedUntil, pinned: conversation.pinned, archived: conversation.archived }))
  }

  /** Shown at once, kept in IndexedDB, and sent in order. */
  #enqueue(item: OutboxItem) {
    this.#outbox = [...this.#outbox, item]
    this.#unsaved.add(item.clientMsgId)
    this.#saveOutbox()
    this.#pump(item.conversationId)
  }

  #updateItem(clientMsgId: string, change: (o: OutboxItem) => OutboxItem) {
    this.#outbox = this.#outbox.map((o) => (o.clientMsgId === clientMsgId ? change(o) : o))
    this.#saveOutbox()
  }

  /** Uploads what a queued message needs, then fills the ids into its body and pumps again. */
  async #upload(item: OutboxItem) {
    if (this.#uploading.has(item.clientMsgId)) return
    this.#uploading.add(item.clientMsgId)
    const id = item.clientMsgId
    const current = () => this.#outbox.find((o) => o.clientMsgId === id)
    try {
      const total = item.uploads!.reduce((n, u) => n + u.blob.size, 0)
      let before = 0
      for (const u of item.uploads!) {
        if (!current()) return
        if (!u.mediaId) {
          const url = u.url ?? (await createUpload(u.kind, { length: u.blob.size, filename: u.filename }))
          if (!u.url) this.#updateItem(id, (o) => ({ ...o, uploads: o.uploads!.map((x) => (x.field === u.field ? { ...x, url } : x)) }))
          const media = await completeUpload(url, u.blob, (sent) => this.#progress.set(id, (before + sent) / total)).catch(async (e) => {
            // The upload expired or was refused before the bytes were checked: start it again once.
            if (finalUploadError(e) && (e as { status: number }).status === 404) return completeUpload(await createUpload(u.kind, { length: u.blob.size, filename: u.filename }), u.blob)
            throw e
          })
          this.#updateItem(id, (o) => ({ ...o, uploads: o.uploads!.map((x) => (x.field === u.field ? { ...x, url, mediaId: media.id } : x)) }))
        }
        before += u.blob.size
      }
      this.#updateItem(id, (o) => {
        const ids = Object.fromEntries(o.uploads!.map((u) => [u.field, u.mediaId]))
        return { ...o, body: { ...o.body, ...ids } as MessageBody }
      })
      this.#progress.delete(id)
    } catch (e) {
      if (finalUploadError(e)) this.#updateItem(id, (o) => ({ ...o, failed: e instanceof Error ? e.message : String(e) }))
      // Otherwise the network is down: the next reconnect pumps again and resumes.
      return
    } finally {
      this.#uploading.delete(id)
    }
    this.#pump(item.conversationId)
  }

  retry(clientMsgId: string) {
    const item = this.#outbox.find((o) => o.clientMsgId === clientMsgId)
    if (!item) return
    this.#outbox = this.#outbox.map((o) => (o.clientMsgId === clientMsgId ? { ...o, failed: undefined } : o))
    this.#saveOutbox()
    this.#pump(item.conversationId)
  }

  discard(clientMsgId: string) {
    this.#outbox = this.#outbox.filter((o) => o.clientMsgId !== clientMsgId)
    this.#saveOutbox()
  }

  edit(conversationId: string, targetSeq: number, text: string) {
    // An edit replaces the body, so it carries the quote along.
    const target = this.#byId.get(conversationId)?.events.get(targetSeq)
    const replyTo = target?.type === 'message' && target.body?.kind === 'text' ? target.body.replyTo : undefined
    this.#socket.send({ type: 'edit', conversationId, clientMsgId: crypto.randomUUID(), targetSeq, body: { kind: 'text', text, ...(replyTo ? { replyTo } : {}) } })
  }

  react(conversationId: string, targetSeq: number, emoji: string, on: boolean) {
    this.#socket.send({ type: 'react', conversationId, clientMsgId: crypto.randomUUID(), targetSeq, emoji, on })
  }

  // ---- drafts ----

  #draftTimers = new Map<string, ReturnType<typeof setTimeout>>()
  /** The newest text per conversation, ahead of its (debounced) IndexedDB write. */
  #drafts = new Map<string, string>()

  // A tab hidden or closed right after typing still keeps the last words.
  #onHidden = () => document.visibilityState === 'hidden' && this.#flushDrafts()

  #flushDrafts() {
    for (const [id, timer] of this.#draftTimers) {
      clearTimeout(timer)
      void this.#cache.saveDraft(id, this.#drafts.get(id) ?? '').catch(() => undefined)
    }
    this.#draftTimers.clear()
  }

  async loadDraft(id: string): Promise<string> {
    return this.#drafts.get(id) ?? (await this.#cache.draft(id).catch(() => undefined)) ?? ''
  }

  /** Kept in memory at once and on disk a moment after the last keystroke, one write per pause in typing. */
  saveDraft(id: string, text: string) {
    this.#drafts.set(id, text)
    clearTimeout(this.#draftTimers.get(id))
    this.#draftTimers.set(
      id,
      setTimeout(() => {
        this.#draftTimers.delete(id)
        void this.#cache.saveDraft(id, text).catch(() => undefined)
      }, 300),
    )
  }

  /** How many were unread when the conversation was last opened, for the "new messages" line. */
  unreadAtOpen(id: string): number {
    return this.#unreadAtOpen.get(id) ?? 0
  }

  recall(conversationId: string, targetSeq: number) {
    this.#socket.send({ type: 'recall', conversationId, clientMsgId: crypto.randomUUID(), targetSeq })
  }

  typing(conversationId: string) {
    this.#socket.send({ type: 'typing', conversationId })
  }

  /**
   * Writes the outbox as it stands once the previous write has committed, so writes land in order
   * and a slow one never overwrites a newer list; items count as saved only after the commit.
   */
  #saveOutbox() {
    this.#saving = this.#saving.then(async () => {
      const items = $state.snapshot(this.#outbox) as OutboxItem[]
      try {
        await this.#cache.saveOutbox(items)
        const saved = new Set(items.map((i) => i.clientMsgId))
        const current = new Set(this.#outbox.map((o) => o.clientMsgId))
        for (const id of [...this.#unsaved]) if (saved.has(id) || !current.has(id)) this.#unsaved.delete(id)
      } catch (e) {
        console.warn('outbox not saved', e)
      }
    })
  }

  /**
   * Sends a conversation's unsent writes in order, up to MAX_IN_FLIGHT unanswered. A message whose
   * media is still uploading holds back the ones behind it, so the order never changes.
   */
  #pump(conversationId: string) {
    if (this.#paused.has(conversationId)) return
    let flying = this.#inFlight.get(conversationId)
    if (!flying) this.#inFlight.set(conversationId, (flying = new Map()))
    // The open chat writes on its writer socket when it is up, else on the chat socket. Each keeps
    // its frames in order, but not across the two: on a switch, whatever is in flight goes again
    // on the new one, in order (the server answers a repeat with its first seq).
    const writer = this.#writer?.id === conversationId && this.#writer.socket.status === 'online' ? this.#writer.socket : null
    const socket = writer ?? this.#socket
    if (this.#flightPath.get(conversationId) !== socket) {
      for (const timer of flying.values()) clearTimeout(timer)
      flying.clear()
      this.#flightPath.set(conversationId, socket)
    }
    for (const next of this.#outbox) {
      if (next.conversationId !== conversationId || next.failed || flying.has(next.clientMsgId)) continue
      if (flying.size >= MAX_IN_FLIGHT) return
      if (next.uploads?.some((u) => !u.mediaId)) return void this.#upload(next)
      if (!socket.send({ type: 'send', conversationId, clientMsgId: next.clientMsgId, body: next.body })) return
      const id = next.clientMsgId
      flying.set(
        id,
        setTimeout(() => {
          // No ack in time: send the same clientMsgId again; the server deduplicates.
          flying.delete(id)
          this.#pump(conversationId)
        }, ACK_TIMEOUT_MS),
      )
    }
  }

  #settle(conversationId: string, clientMsgId: string) {
    const flying = this.#inFlight.get(conversationId)
    const timer = flying?.get(clientMsgId)
    if (timer === undefined) return
    clearTimeout(timer)
    flying!.delete(clientMsgId)
  }

  /** Opens the writer socket of the chat now open (and closes the one before); null: none. */
  #openWriter(id: string | null) {
    if (this.#writer?.id === id) return
    const before = this.#writer
    this.#writer = null
    before?.socket.stop()
    if (before) this.#pump(before.id)
    if (!id) return
    let reopened = false
    const socket: ChatSocket = new ChatSocket(
      (m) => this.#onMessage(m),
      // The room sends this chat's events on it too: after a reconnect, ask for what a broken one lost.
      () => {
        this.#pump(id)
        if (reopened && this.#byId.get(id)?.loaded) this.#sync(id)
        reopened = true
      },
      // Out of the conversation, signed out, or it cannot connect: the chat socket carries the writes.
      () => {
        if (this.#writer?.socket !== socket) return
        this.#writer = null
        this.#pump(id)
      },
      { path: `/api/ws/conversations/${encodeURIComponent(id)}`, shutOutReasons: Object.values(ErrorCode), maxFailures: 3, onDown: () => this.#pump(id) },
    )
    this.#writer = { id, socket }
    socket.start()
  }

  // ---- socket ----

  #onOpen() {
    this.#error = null
    for (const flying of this.#inFlight.values()) for (const timer of flying.values()) clearTimeout(timer)
    this.#inFlight.clear()
    this.#paused.clear()
    this.#syncLoaded()
    for (const id of new Set(this.#outbox.map((o) => o.conversationId))) this.#pump(id)
    void this.refreshConversations()
  }

  /** Every conversation this session has opened asks for what it missed. */
  #syncLoaded() {
    for (const [id, s] of this.#byId) if (s.loaded) this.#sync(id)
  }

  #sync(id: string) {
    this.#socket.send({ type: 'sync', conversationId: id, afterSeq: this.#state(id).contiguous })
  }

  #onMessage(msg: ServerMessage) {
    switch (msg.type) {
      case 'ack':
        return this.#acked(msg.conversationId, msg.clientMsgId, msg.seq, msg.serverTs)
      case 'event': {
        const id = msg.event.conversationId
        // Another tab of this device wrote it on its writer socket: for this tab's outbox, as good as the ack.
        if (msg.event.type === 'message' && msg.event.senderId === this.userId && this.#outbox.some((o) => o.clientMsgId === msg.event.clientMsgId)) {
          return this.#acked(id, msg.event.clientMsgId, msg.event.seq, msg.event.serverTs)
        }
        if (!this.conversation(id)) void this.refreshConversations()
        const s = this.#state(id)
        const fresh = !s.events.has(msg.event.seq)
        const e = msg.event
        const target = e.type === 'edit' || e.type === 'recall' ? s.events.get(e.targetSeq) : undefined
        this.#ingest(id, [e], true)
        if (fresh && (e.type === 'message' || e.type === 'call')) this.#bump(e)
        if (fresh && (e.type === 'edit' || e.type === 'recall')) this.#follow(e, target?.type === 'message' ? target : undefined)
        if (msg.event.seq > s.contiguous + 1 && s.loaded) this.#sync(id)
        if (msg.event.type === 'member' || msg.event.type === 'renamed' || msg.event.type === 'retention') void this.refreshConversations()
        if (e.type === 'member' && (e.action === 'removed' || e.action === 'left') && e.userIds.includes(this.userId)) this.hooks.left?.(id)
        return
      }
      case 'events': {
        const s = this.#state(msg.conversationId)
        for (const r of msg.receipts) this.#receipt(msg.conversationId, r)
        s.lastSeq = Math.max(s.lastSeq, msg.lastSeq)
        if (msg.historyFrom) this.#forgetBefore(msg.conversationId, msg.historyFrom)
        const follow = msg.events.flatMap((e) => ((e.type === 'edit' || e.type === 'recall') && !s.events.has(e.seq) ? [{ e, target: s.events.get(e.targetSeq) }] : []))
        this.#ingest(msg.conversationId, msg.events, true)
        for (const { e, target } of follow) this.#follow(e, target?.type === 'message' ? target : undefined)
        if (msg.hasMore) this.#sync(msg.conversationId)
        return
      }
      case 'receipt':
        this.#receipt(msg.conversationId, msg.receipt)
        return
      case 'receipts':
        for (const r of msg.receipts) this.#receipt(msg.conversationId, r)
        return
      case 'typing':
        if (!this.hooks.isBlocked?.(msg.userId)) this.#state(msg.conversationId).typing.set(msg.userId, Date.now() + TYPING_TTL_MS)
        return
      case 'presence':
        this.hooks.presence?.(msg.userId, { online: msg.online, lastSeenAt: msg.lastSeenAt })
        return
      case 'voice-room':
        this.#voice.set(msg.summary.conversationId, msg.summary)
        return
      case 'transcript':
        transcripts.set(msg.mediaId, msg.text)
        return
      case 'friends-changed':
        this.hooks.friendsChanged?.()
        return
      case 'conversations-changed':
        void this.refreshConversations()
        return
      case 'error': {
        // The hub drops frames over a socket's budget; a dropped sync is asked again after a pause.
        if (msg.code === 'RATE_LIMITED' && !msg.ref) {
          setTimeout(() => this.#syncLoaded(), RATE_LIMIT_BACKOFF_MS)
          return
        }
        if (!msg.ref) return
        const item = this.#outbox.find((o) => o.clientMsgId === msg.ref)
        if (!item) {
          this.#error = localizeError(msg.code, msg.message)
          return
        }
        this.#settle(item.conversationId, item.clientMsgId)
        if (FINAL_ERRORS.has(msg.code)) {
          this.#outbox = this.#outbox.map((o) => (o.clientMsgId === msg.ref ? { ...o, failed: localizeError(msg.code, msg.message) } : o))
          this.#saveOutbox()
          this.#pump(item.conversationId)
        } else {
          this.#paused.add(item.conversationId)
          setTimeout(() => {
            this.#paused.delete(item.conversationId)
            this.#pump(item.conversationId)
          }, RATE_LIMIT_BACKOFF_MS)
        }
        return
      }
      case 'hello':
        return
      case 'call-ring':
      case 'call-update':
      case 'call-ended':
      case 'call-signal':
        this.hooks.call?.(msg)
        return
    }
  }

  #acked(conversationId: string, clientMsgId: string, seq: number, serverTs: number) {
    const item = this.#outbox.find((o) => o.clientMsgId === clientMsgId)
    this.#settle(conversationId, clientMsgId)
    if (item) {
      const event: MessageEvent = { type: 'message', conversationId, seq, senderId: this.userId, clientMsgId, serverTs, body: item.body }
      this.#outbox = this.#outbox.filter((o) => o.clientMsgId !== clientMsgId)
      this.#saveOutbox()
      const fresh = !this.#state(conversationId).events.has(seq)
      this.#ingest(conversationId, [event], true)
      if (fresh) this.#bump(event)
    }
    this.#pump(conversationId)
  }

  /** This device's session (from the socket's hello): calls address devices by it. */
  get sessionId() {
    return this.#socket.sessionId
  }

  /** A frame of another feature (calls) on the one socket; false when it is not open. */
  sendFrame(msg: ClientMessage): boolean {
    return this.#socket.send(msg)
  }

  /** Cursors only move forward: a late or replayed receipt never takes a tick back. */
  #receipt(conversationId: string, r: Receipt) {
    const receipts = this.#state(conversationId).receipts
    const known = receipts.get(r.userId)
    if (known && known.deliveredSeq >= r.deliveredSeq && known.readSeq >= r.readSeq) return
    receipts.set(r.userId, known ? { userId: r.userId, deliveredSeq: Math.max(known.deliveredSeq, r.deliveredSeq), readSeq: Math.max(known.readSeq, r.readSeq) } : r)
  }

  /** Moves a conversation to the top with the new message as preview, counting it unread unless open. */
  #bump(e: MessageEvent | CallEvent) {
    const c = this.conversation(e.conversationId)
    if (!c) return
    // Someone the user blocked can still write in a shared group: it counts for nothing and moves nothing.
    if (this.hooks.isBlocked?.(e.senderId)) return
    const unread = e.senderId !== this.userId && e.conversationId !== this.#activeId ? c.unread + 1 : c.unread
    const text = e.type === 'call' ? callText(e) : (bodyText(e.body) ?? t('msg.recalled'))
    // Sending implies having read everything before (the server moves the cursor the same way).
    const readSeq = e.senderId === this.userId ? Math.max(c.readSeq, e.seq) : c.readSeq
    const updated = { ...c, unread, readSeq, lastSeq: e.seq, lastActivityAt: e.serverTs, preview: { seq: e.seq, senderId: e.senderId, text, serverTs: e.serverTs } }
    this.#conversations = [updated, ...this.#conversations.filter((x) => x.id !== c.id)]
    this.#saveList()
  }

  /**
   * An edit or recall rewrites the list preview when it is about the previewed message, and a
   * recalled unread message stops counting; neither moves the conversation nor counts as new.
   * `target` is the message as it was before, when this device holds it.
   */
  #follow(e: EditEvent | RecallEvent, target: MessageEvent | undefined) {
    const c = this.conversation(e.conversationId)
    if (!c) return
    const onPreview = c.preview?.seq === e.targetSeq
    // A recall by its sender names the author; an admin's removal does only through the held message.
    const author = target?.senderId ?? (e.type === 'recall' && !e.byAdmin ? e.senderId : null)
    const wasUnread = e.type === 'recall' && c.unread > 0 && e.targetSeq > c.readSeq && author !== null && author !== this.userId && !this.hooks.isBlocked?.(author)
    if (!onPreview && !wasUnread) return
    this.#replaceSummary(c.id, (x) => ({
      ...x,
      unread: wasUnread ? x.unread - 1 : x.unread,
      preview: onPreview && x.preview ? { ...x.preview, text: e.type === 'recall' ? t(e.byModerator ? 'msg.removedByModerator' : 'msg.recalled') : (bodyText(e.body) ?? x.preview.text) } : x.preview,
    }))
  }

  /** Retention deleted the history before `from` on the server: this device lets it go too, screen and cache. */
  #forgetBefore(id: string, from: number) {
    const s = this.#state(id)
    for (const seq of [...s.events.keys()]) if (seq < from) s.events.delete(seq)
    if (s.base < from) s.base = from
    s.contiguous = Math.max(s.contiguous, from - 1)
    // Older kept history may still be there to page back to; nothing before `from` is.
    if (s.base <= from) s.hasOlder = false
    const seqs = [...s.events.keys()].sort((a, b) => a - b)
    void this.#cache.saveConversation(id, seqs.map((q) => $state.snapshot(s.events.get(q)!) as ConversationEvent))
  }

  /** Applies events idempotently by seq; edits and recalls rewrite their target in place. */
  #ingest(id: string, events: ConversationEvent[], confirm: boolean) {
    if (events.length === 0) return
    const s = this.#state(id)
    for (const e of events) {
      // A message from someone ends their typing indicator.
      if (e.type === 'message') s.typing.delete(e.senderId)
      s.events.set(e.seq, e)
      s.lastSeq = Math.max(s.lastSeq, e.seq)
      if (e.type === 'edit' || e.type === 'recall') {
        const target = s.events.get(e.targetSeq)
        if (target?.type === 'message') {
          s.events.set(
            e.targetSeq,
            e.type === 'edit'
              ? { ...target, body: target.recalled ? null : e.body, editedAt: e.serverTs }
              : { ...target, body: null, recalled: { by: e.senderId, byAdmin: e.byAdmin, ...(e.byModerator ? { byModerator: true } : {}) } },
          )
        }
      }
    }
    const seqs = [...s.events.keys()].sort((a, b) => a - b)
    if (s.base === 0 || seqs[0]! < s.base) s.base = seqs[0]!
    let c = Math.max(s.contiguous, s.base - 1)
    while (s.events.has(c + 1)) c++
    s.contiguous = c
    // The cache holds what the screen holds: recalled content is gone from it too.
    void this.#cache.saveConversation(id, seqs.map((q) => $state.snapshot(s.events.get(q)!) as ConversationEvent))
    if (confirm) this.#confirmDelivered(id)
    if (id === this.#activeId) this.#markRead(id)
  }

  #confirmDelivered(id: string) {
    if (this.#deliveredTimers.has(id)) return
    this.#deliveredTimers.set(
      id,
      setTimeout(() => {
        this.#deliveredTimers.delete(id)
        const s = this.#state(id)
        if (s.contiguous === 0) return
        const frame = { type: 'delivered', conversationId: id, seq: s.contiguous } as const
        this.#socket.send(frame)
        // The room sends an open chat's events on its writer socket and waits for word there.
        if (this.#writer?.id === id) this.#writer.socket.send(frame)
      }, 150),
    )
  }

  #markRead(id: string) {
    if (typeof document !== 'undefined' && document.visibilityState !== 'visible') return
    const s = this.#state(id)
    const mine = s.receipts.get(this.userId)
    if (s.contiguous > 0 && (!mine || mine.readSeq < s.contiguous)) {
      this.#socket.send({ type: 'read', conversationId: id, seq: s.contiguous })
    }
    const c = this.conversation(id)
    if (c && (c.readSeq < s.contiguous || c.unread > 0)) this.#replaceSummary(id, (x) => ({ ...x, unread: 0, readSeq: Math.max(x.readSeq, s.contiguous) }))
  }
}
