import type { Capabilities } from '../../worker/shared/protocol'
import { api } from './api'

/**
 * What this server can do, asked once per page load; until the answer arrives (or when offline)
 * optional features stay hidden rather than offered and then refused.
 */
class ServerCapabilities {
  #caps = $state<Capabilities | null>(null)
  #asked: Promise<void> | null = null

  get transcribe() {
    this.#ask()
    return this.#caps?.transcribe ?? false
  }
  get push() {
    this.#ask()
    return this.#caps?.push ?? false
  }

  #ask() {
    this.#asked ??= api<Capabilities>('/api/capabilities', { auth: false })
      .then((c) => void (this.#caps = c))
      // Offline: ask again on the next read.
      .catch(() => void (this.#asked = null))
  }
}

export const capabilities = new ServerCapabilities()
