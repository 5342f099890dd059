import { UPLOAD_LIMITS } from '../../worker/shared/limits'
import { authedFetch } from './api'
import { waveformOf } from './media.svelte'
import { LiveUpload } from './tus'

/** What the browser records best: Opus in WebM (Chromium, Firefox), Ogg, or AAC in MP4 (Safari). */
const TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4;codecs=mp4a.40.2', 'audio/mp4']
/** Chunks leave this often while recording, so the note is on the server moments after stopping. */
const TIMESLICE_MS = 500

export interface Recording {
  blob: Blob
  durationMs: number
  waveform: number[]
  /** The upload that streamed while recording; completing it sends only what is left. */
  uploadUrl: string | null
}

/** One voice note at a time: record with a live timer and level, then preview, send or discard. */
export class VoiceRecorder {
  state = $state<'idle' | 'starting' | 'recording' | 'preview'>('idle')
  elapsedMs = $state(0)
  /** 0–1 input level for the meter. */
  level = $state(0)
  error = $state<string | null>(null)
  recording = $state<Recording | null>(null)

  #rec: MediaRecorder | null = null
  #stream: MediaStream | null = null
  #chunks: Blob[] = []
  #live: LiveUpload | null = null
  #started = 0
  #timer: ReturnType<typeof setInterval> | undefined
  #audioCtx: AudioContext | null = null

  static supported(): boolean {
    return typeof MediaRecorder !== 'undefined' && !!navigator.mediaDevices?.getUserMedia
  }

  async start() {
    if (this.state !== 'idle') return
    this.error = null
    this.state = 'starting'
    try {
      // Nothing plays while a note is recorded, so echo cancellation only costs fidelity (and transcription accuracy).
      this.#stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } })
    } catch (e) {
      this.state = 'idle'
      this.error = (e as DOMException).name === 'NotAllowedError' ? 'mic-denied' : 'mic-missing'
      return
    }
    const mimeType = TYPES.find((t) => MediaRecorder.isTypeSupported(t))
    const rec = new MediaRecorder(this.#stream, { ...(mimeType ? { mimeType } : {}), audioBitsPerSecond: 48_000 })
    this.#rec = rec
    this.#chunks = []
    this.#live = new LiveUpload('voice')
    rec.ondataavailable = (e) => {
      if (e.data.size === 0) return
      this.#chunks.push(e.data)
      this.#live?.push(e.data)
    }
    this.#meter(this.#stream)
    rec.start(TIMESLICE_MS)
    this.#started = performance.now()
    this.elapsedMs = 0
    this.state = 'recording'
    this.#timer = setInterval(() => {
      this.elapsedMs = performance.now() - this.#started
      if (this.elapsedMs >= UPLOAD_LIMITS.voice.maxDurationMs - 1000) void this.stop()
    }, 200)
  }

  #meter(stream: MediaStream) {
    try {
      this.#audioCtx = new AudioContext()
      const analyser = this.#audioCtx.createAnalyser()
      analyser.fftSize = 512
      this.#audioCtx.createMediaStreamSource(stream).connect(analyser)
      const data = new Uint8Array(analyser.fftSize)
      const tick = () => {
        if (this.state !== 'recording') return
        analyser.getByteTimeDomainData(data)
        let peak = 0
        for (const v of data) peak = Math.max(peak, Math.abs(v - 128) / 128)
        this.level = peak
        requestAnimationFrame(tick)
      }
      requestAnimationFrame(tick)
    } catch {
      // No meter is better than no recording.
    }
  }

  #release() {
    clearInterval(this.#timer)
    for (const track of this.#stream?.getTracks() ?? []) track.stop()
    void this.#audioCtx?.close().catch(() => undefined)
    this.#audioCtx = null
    this.#stream = null
    this.level = 0
  }

  /** Stops and keeps the note for preview. */
  async stop() {
    const rec = this.#rec
    if (!rec || this.state !== 'recording') return
    const stopped = new Promise((r) => (rec.onstop = r))
    rec.stop()
    await stopped
    this.#release()
    const durationMs = Math.round(performance.now() - this.#started)
    const blob = new Blob(this.#chunks, { type: rec.mimeType })
    const live = this.#live!
    await live.settled()
    const uploadUrl = await live.url.catch(() => null)
    this.recording = { blob, durationMs, waveform: await waveformOf(blob), uploadUrl }
    this.state = 'preview'
  }

  /** Throws the note away, here and on the server. */
  async cancel() {
    if (this.state === 'recording') {
      const rec = this.#rec!
      rec.ondataavailable = null
      rec.stop()
      this.#release()
    }
    const url = this.recording?.uploadUrl ?? (await this.#live?.url.catch(() => null))
    if (url) void authedFetch(url, { method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0' } }).catch(() => undefined)
    this.#reset()
  }

  /** Hands the note over for sending and gets ready for the next. */
  take(): Recording | null {
    const r = this.recording
    this.#reset()
    return r
  }

  #reset() {
    this.#rec = null
    this.#live = null
    this.#chunks = []
    this.recording = null
    this.elapsedMs = 0
    this.state = 'idle'
  }
}
