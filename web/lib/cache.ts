import { clear, createStore, del, get, set, type UseStore } from 'idb-keyval'
import type { ConversationEvent, ConversationSummary, MessageBody, PublicUser } from '../../worker/shared/protocol'
import type { UploadKind } from '../../worker/shared/limits'

/** A file a queued message still has to upload; the Blob itself is kept in IndexedDB. */
export interface PendingUpload {
  field: 'mediaId' | 'thumbId'
  kind: UploadKind
  blob: Blob
  filename?: string
  /** The tus upload URL once created, so a restart resumes instead of starting over. */
  url?: string
  /** Set when the server has every byte. */
  mediaId?: string
}

/** A message written on this device and not yet acknowledged. */
export interface OutboxItem {
  conversationId: string
  clientMsgId: string
  body: MessageBody
  createdAt: number
  /** Set when the server refused it for good; the user may retry or delete it. */
  failed?: string
  /** Media to upload before the message can be sent. */
  uploads?: PendingUpload[]
}

export interface CachedConversation {
  events: ConversationEvent[]
}

/** Recent events kept per conversation, so the app opens instantly and offline. */
export const CACHED_EVENTS = 300

/** IndexedDB cache of one signed-in user; nothing of one account is visible to another. */
export class ChatCache {
  private store: UseStore

  constructor(userId: string) {
    this.store = createStore(`echovalley-${userId}`, 'kv')
  }

  conversations(): Promise<ConversationSummary[] | undefined> {
    return get('conversations', this.store)
  }
  saveConversations(list: ConversationSummary[]) {
    return set('conversations', list, this.store)
  }
  conversation(id: string): Promise<CachedConversation | undefined> {
    return get(`c:${id}`, this.store)
  }
  saveConversation(id: string, events: ConversationEvent[]) {
    return set(`c:${id}`, { events: events.slice(-CACHED_EVENTS) } satisfies CachedConversation, this.store)
  }
  /** Former members a conversation's history names (see ChatStore.formerMembers). */
  formerMembers(id: string): Promise<PublicUser[] | undefined> {
    return get(`people:${id}`, this.store)
  }
  saveFormerMembers(id: string, people: PublicUser[]) {
    return set(`people:${id}`, people, this.store)
  }
  outbox(): Promise<OutboxItem[] | undefined> {
    return get('outbox', this.store)
  }
  saveOutbox(items: OutboxItem[]) {
    return set('outbox', items, this.store)
  }
  draft(id: string): Promise<string | undefined> {
    return get(`draft:${id}`, this.store)
  }
  saveDraft(id: string, text: string) {
    return text ? set(`draft:${id}`, text, this.store) : del(`draft:${id}`, this.store)
  }
  /** On sign-out nothing of the account stays on the device. */
  clear() {
    return clear(this.store)
  }
}
