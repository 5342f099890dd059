/// <reference lib="webworker" />
import { cleanupOutdatedCaches, createHandlerBoundToURL, precacheAndRoute } from 'workbox-precaching'
import { NavigationRoute, registerRoute } from 'workbox-routing'
import type { CallPushPayload, PushPayload } from '../worker/shared/protocol'

declare const self: ServiceWorkerGlobalScope & { __WB_MANIFEST: { url: string; revision: string | null }[] }

// The app shell is precached, so the app opens offline; the API is never cached here.
precacheAndRoute(self.__WB_MANIFEST)
cleanupOutdatedCaches()
registerRoute(new NavigationRoute(createHandlerBoundToURL('index.html'), { denylist: [/^\/api\//] }))

// The first install takes the open page at once, so push clicks can reach it.
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()))

// The page asks the waiting worker to take over when the user accepts the update prompt.
self.addEventListener('message', (event) => {
  if ((event.data as { type?: string } | null)?.type === 'SKIP_WAITING') void self.skipWaiting()
})

/** An incoming call rings until answered, declined or missed; then its notification goes (or says "missed"). */
async function callNotification(data: CallPushPayload) {
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true })
  for (const n of await self.registration.getNotifications({ tag: `call-${data.callId}` })) n.close()
  // A visible window rings on its own socket.
  if (data.ringing && windows.some((w) => w.visibilityState === 'visible')) return
  if (!data.ringing && !data.body) return
  await self.registration.showNotification(data.title, {
    body: data.body,
    tag: `call-${data.callId}`,
    requireInteraction: data.ringing,
    data: { callId: data.ringing ? data.callId : undefined, conversationId: data.conversationId },
    icon: '/icons/icon-192.png',
    badge: '/icons/icon-192.png',
  })
}

self.addEventListener('push', (event) => {
  let data: PushPayload | CallPushPayload
  try {
    data = event.data!.json() as PushPayload | CallPushPayload
  } catch {
    data = { conversationId: '', seq: 0, title: 'echovalley', body: 'New message' }
  }
  if ('callId' in data) return event.waitUntil(callNotification(data))
  event.waitUntil(
    self.registration.showNotification(data.title, {
      body: data.body,
      // One notification per conversation: a newer message replaces the older one.
      tag: data.conversationId || undefined,
      data: { conversationId: data.conversationId },
      icon: '/icons/icon-192.png',
      badge: '/icons/icon-192.png',
    }),
  )
})

self.addEventListener('notificationclick', (event) => {
  event.notification.close()
  const { conversationId: id, callId } = (event.notification.data as { conversationId?: string; callId?: string } | null) ?? {}
  const target = new URL(callId ? `/#/call/${callId}` : id ? `/#/c/${id}` : '/', self.location.origin).href
  event.waitUntil(
    (async () => {
      const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true })
      const open = windows.find((w) => new URL(w.url).origin === self.location.origin)
      if (open) {
        // The app routes by hash, so telling the page is enough and keeps its state.
        open.postMessage(callId ? { type: 'open-call', callId } : { type: 'open-conversation', conversationId: id })
        await open.focus()
        return
      }
      await self.clients.openWindow(target)
    })(),
  )
})
