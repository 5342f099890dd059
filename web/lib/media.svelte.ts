import { SvelteMap } from 'svelte/reactivity'
import type { MediaTokenResult, MessageBody } from '../../worker/shared/protocol'
import { api } from './api'
import { t } from './i18n.svelte'

/** One line for a message: its text, or what kind of media it is. */
export function bodyText(body: MessageBody | null | undefined): string | null {
  if (!body) return null
  switch (body.kind) {
    case 'text':
      return body.text
    case 'voice':
      return `🎤 ${t('media.voice')} ${formatDuration(body.durationMs ?? 0)}`
    case 'image':
      return `📷 ${body.caption || t('media.photo')}`
    case 'file':
      return `📎 ${body.name}`
  }
}

/**
 * Voice-note transcripts by media id: filled by whoever asked for one (the server tells every
 * member's devices) or by a lookup when a note is first shown.
 */
export const transcripts = new SvelteMap<string, string>()
/** Notes whose stored transcript was already asked for in this page. */
export const transcriptLookups = new Set<string>()

/**
 * <img> and <audio> cannot send an Authorization header, so media URLs carry a short-lived media
 * token that opens downloads only. It is renewed well before it expires.
 */
class MediaAccess {
  token = $state<string | null>(null)
  #expiresAt = 0
  #pending: Promise<void> | null = null

  ensure(): Promise<void> {
    if (this.token && Date.now() < this.#expiresAt) return Promise.resolve()
    this.#pending ??= api<MediaTokenResult>('/api/media/token')
      .then((r) => {
        this.token = r.token
        this.#expiresAt = Date.now() + (r.expiresInS * 1000) / 2
      })
      .catch(() => undefined)
      .finally(() => (this.#pending = null))
    return this.#pending
  }

  url(id: string): string | null {
    void this.ensure()
    return this.token ? `/api/media/${id}?t=${encodeURIComponent(this.token)}` : null
  }

  clear() {
    this.token = null
    this.#expiresAt = 0
  }
}

export const media = new MediaAccess()

export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`
}

export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`
}

/** Loudness bars (0–255) from decoded audio, for the player's waveform. */
export async function waveformOf(blob: Blob, bars = 48): Promise<number[]> {
  try {
    const ctx = new OfflineAudioContext(1, 1, 48000)
    const audio = await ctx.decodeAudioData(await blob.arrayBuffer())
    const data = audio.getChannelData(0)
    const step = Math.max(1, Math.floor(data.length / bars))
    const peaks: number[] = []
    for (let i = 0; i < bars; i++) {
      let peak = 0
      for (let j = i * step; j < Math.min(data.length, (i + 1) * step); j++) peak = Math.max(peak, Math.abs(data[j]!))
      peaks.push(peak)
    }
    const max = Math.max(...peaks, 1e-6)
    return peaks.map((p) => Math.round((p / max) * 255))
  } catch {
    return []
  }
}

/** A downscaled copy of an image (JPEG unless it has transparency worth keeping), at most `edge` px on the long side. */
export async function downscale(file: Blob, edge: number, quality = 0.85): Promise<Blob> {
  const bitmap = await createImageBitmap(file)
  const scale = Math.min(1, edge / Math.max(bitmap.width, bitmap.height))
  const w = Math.max(1, Math.round(bitmap.width * scale))
  const h = Math.max(1, Math.round(bitmap.height * scale))
  const canvas = document.createElement('canvas')
  canvas.width = w
  canvas.height = h
  canvas.getContext('2d')!.drawImage(bitmap, 0, 0, w, h)
  bitmap.close()
  const type = file.type === 'image/png' || file.type === 'image/gif' ? 'image/png' : 'image/jpeg'
  return new Promise((resolve, reject) => canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('could not encode the image'))), type, quality))
}
