import { registerSW } from 'virtual:pwa-register'
import { api } from './api'

interface BeforeInstallPromptEvent extends Event {
  prompt(): Promise<void>
  userChoice: Promise<{ outcome: 'accepted' | 'dismissed' }>
}

/** Set once the person closed the "Add to Home Screen" hint: it never comes back on this device. */
const IOS_HINT_KEY = 'echovalley.iosInstallHintDismissed'

export type PushState = 'unsupported' | 'default' | 'denied' | 'subscribed'

function urlBase64ToBytes(base64: string): Uint8Array<ArrayBuffer> {
  const raw = atob(base64.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (base64.length % 4)) % 4))
  return Uint8Array.from(raw, (c) => c.charCodeAt(0)) as Uint8Array<ArrayBuffer>
}

/** What the installed app needs from the browser: updates, install, connectivity and push. */
export class AppShell {
  #needRefresh = $state(false)
  #online = $state(typeof navigator === 'undefined' ? true : navigator.onLine)
  #installEvent = $state<BeforeInstallPromptEvent | null>(null)
  #installed = $state(false)
  #push = $state<PushState>('default')
  #iosHintDismissed = $state(localStorage.getItem(IOS_HINT_KEY) === '1')
  #update: ((reload?: boolean) => Promise<void>) | null = null

  constructor() {
    window.addEventListener('online', () => (this.#online = true))
    window.addEventListener('offline', () => (this.#online = false))
    window.addEventListener('beforeinstallprompt', (e) => {
      e.preventDefault()
      this.#installEvent = e as BeforeInstallPromptEvent
    })
    window.addEventListener('appinstalled', () => {
      this.#installed = true
      this.#installEvent = null
    })
    this.#installed = matchMedia('(display-mode: standalone)').matches || (navigator as { standalone?: boolean }).standalone === true
    if ('serviceWorker' in navigator) {
      this.#update = registerSW({ onNeedRefresh: () => (this.#needRefresh = true) })
      // A notification click on an open window arrives as a message: go to that conversation.
      navigator.serviceWorker.addEventListener('message', (e) => {
        const data = e.data as { type?: string; conversationId?: string; callId?: string } | null
        if (data?.type === 'open-conversation' && data.conversationId) location.hash = `#/c/${data.conversationId}`
        if (data?.type === 'open-call' && data.callId) location.hash = `#/call/${data.callId}`
      })
    }
    void this.#readPushState()
  }

  get needRefresh() {
    return this.#needRefresh
  }
  get online() {
    return this.#online
  }
  get canInstall() {
    return this.#installEvent !== null && !this.#installed
  }
  /** iOS Safari has no install prompt: people add the app from the Share menu. */
  get showIosInstructions() {
    return !this.#installed && !this.#iosHintDismissed && /iPhone|iPad|iPod/.test(navigator.userAgent)
  }
  dismissIosInstructions() {
    localStorage.setItem(IOS_HINT_KEY, '1')
    this.#iosHintDismissed = true
  }
  get push() {
    return this.#push
  }

  async install() {
    const e = this.#installEvent
    if (!e) return
    await e.prompt()
    if ((await e.userChoice).outcome === 'accepted') this.#installEvent = null
  }

  async applyUpdate() {
    await this.#update?.(true)
  }

  async #readPushState() {
    if (!('PushManager' in window) || !('serviceWorker' in navigator) || !('Notification' in window)) {
      this.#push = 'unsupported'
      return
    }
    if (Notification.permission === 'denied') return void (this.#push = 'denied')
    const reg = await navigator.serviceWorker.getRegistration()
    const sub = await reg?.pushManager.getSubscription()
    this.#push = sub && Notification.permission === 'granted' ? 'subscribed' : 'default'
  }

  /** Only ever called from a user's click, after the app explained what notifications are for. */
  async enablePush(): Promise<PushState> {
    if (this.#push === 'unsupported') return this.#push
    const permission = await Notification.requestPermission()
    if (permission !== 'granted') {
      this.#push = permission === 'denied' ? 'denied' : 'default'
      return this.#push
    }
    const reg = await navigator.serviceWorker.ready
    const { publicKey } = await api<{ publicKey: string }>('/api/push/vapid-key', { auth: false })
    const sub = (await reg.pushManager.getSubscription()) ?? (await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: urlBase64ToBytes(publicKey) }))
    const json = sub.toJSON() as { endpoint: string; keys: { p256dh: string; auth: string } }
    await api('/api/push/subscriptions', { body: { endpoint: json.endpoint, keys: json.keys } })
    this.#push = 'subscribed'
    return this.#push
  }

  async disablePush() {
    const reg = await navigator.serviceWorker.getRegistration()
    const sub = await reg?.pushManager.getSubscription()
    if (sub) {
      await api('/api/push/subscriptions', { method: 'DELETE', body: { endpoint: sub.endpoint } }).catch(() => undefined)
      await sub.unsubscribe()
    }
    this.#push = 'default'
  }
}
