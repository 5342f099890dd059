import { SvelteMap } from 'svelte/reactivity'
import { captureClock, decodeVoiceFrame, encodeVoiceFrame, VOICE_GOT_EVERY_MS, VOICE_REJOIN_GRACE_MS } from '../../../worker/shared/voice-frames'
import type { VoiceClientMessage, VoiceRoomState, VoiceServerMessage } from '../../../worker/shared/voice'
import { api } from '../api'
import { backoffDelay } from '../backoff'
import captureUrl from './capture.worklet.ts?worker&url'
import playbackUrl from './playback.worklet.ts?worker&url'

export type VoiceStatus = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'ended' | 'unsupported' | 'error'

const SAMPLE_RATE = 48_000
const FRAME_SAMPLES = 960
/** A speaker counts as speaking this long after a loud frame. */
const SPEAKING_HOLD_MS = 400
const SPEAKING_LEVEL = 12

/**
 * The user's place in one voice room: a socket to the room's Durable Object, the microphone
 * encoded to Opus in 20 ms frames while they may speak, and every other speaker decoded and played
 * through a jitter buffer. One per app: joining another room leaves this one.
 */
export class VoiceSession {
  status = $state<VoiceStatus>('idle')
  conversationId = $state<string | null>(null)
  room = $state<VoiceRoomState | null>(null)
  error = $state<string | null>(null)
  /** Slot → when it was last loud, for speaking indicators. */
  speaking = new SvelteMap<number, number>()
  /** Our own level, 0–255, while the microphone is on. */
  micLevel = $state(0)

  #ws: WebSocket | null = null
  #ctx: AudioContext | null = null
  #player: AudioWorkletNode | null = null
  #mic: { stream: MediaStream; node: AudioWorkletNode; encoder: AudioEncoder } | null = null
  #decoders = new Map<number, AudioDecoder>()
  #seq = 0
  #leaving = false
  #retries = 0
  /** When the current outage began (0 while connected). */
  #outageSince = 0
  /** Per speaker: last transit time and the smoothed jitter, for the buffer's depth. */
  #transit = new Map<number, { last: number; jitter: number }>()
  /** Per speaker: the last sequence number heard, to notice frames lost on the way. */
  #lastSeq = new Map<number, number>()
  /** Per speaker: frames missing before each packet in the decoder, in decode order. */
  #gaps = new Map<number, number[]>()
  #jitterTimer: ReturnType<typeof setInterval> | null = null
  /** Audio frames received on the current socket, reported so the room knows we keep up. */
  #got = 0
  #gotTimer: ReturnType<typeof setInterval> | null = null

  constructor(readonly selfId: string) {}

  static supported(): boolean {
    return typeof AudioEncoder !== 'undefined' && typeof AudioDecoder !== 'undefined' && typeof AudioWorkletNode !== 'undefined'
  }

  get me() {
    return this.room?.participants.find((p) => p.userId === this.selfId) ?? null
  }

  isSpeaking(slot: number): boolean {
    return (this.speaking.get(slot) ?? 0) > Date.now() - SPEAKING_HOLD_MS
  }

  async join(conversationId: string) {
    if (this.conversationId === conversationId && this.status !== 'ended' && this.status !== 'error') return
    if (this.conversationId) this.leave()
    this.conversationId = conversationId
    if (!VoiceSession.supported()) {
      this.status = 'unsupported'
      return
    }
    this.status = 'connecting'
    this.error = null
    this.#leaving = false
    this.#retries = 0
    this.#outageSince = 0
    // Made on the user's click, so the browser lets it play.
    this.#ctx = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: 'interactive' })
    await Promise.all([this.#ctx.audioWorklet.addModule(captureUrl), this.#ctx.audioWorklet.addModule(playbackUrl)])
    this.#player = new AudioWorkletNode(this.#ctx, 'echovalley-playback', { numberOfInputs: 0, outputChannelCount: [1] })
    this.#player.connect(this.#ctx.destination)
    this.#jitterTimer = setInterval(() => this.#tuneBuffer(), 1000)
    await this.#connect()
  }

  async #connect() {
    const id = this.conversationId
    if (!id) return
    let ticket: string
    try {
      ticket = (await api<{ ticket: string }>('/api/ws/ticket', { method: 'POST' })).ticket
    } catch (e) {
      return this.#retry(e instanceof Error ? e.message : String(e))
    }
    if (this.#leaving || this.conversationId !== id) return
    const url = new URL(`/api/voice/${id}/ws`, location.href)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    url.searchParams.set('ticket', ticket)
    const ws = new WebSocket(url)
    ws.binaryType = 'arraybuffer'
    this.#ws = ws
    this.#got = 0
    if (this.#gotTimer) clearInterval(this.#gotTimer)
    let reported = 0
    this.#gotTimer = setInterval(() => {
      if (this.#got !== reported && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'got', n: (reported = this.#got) } satisfies VoiceClientMessage))
    }, VOICE_GOT_EVERY_MS)
    ws.onmessage = (e) => (typeof e.data === 'string' ? this.#control(JSON.parse(e.data) as VoiceServerMessage) : this.#audio(e.data as ArrayBuffer))
    ws.onclose = (e) => {
      if (this.#ws !== ws) return
      this.#ws = null
      // 4000 ended, 4003 removed: nothing to rejoin. Anything else is a drop (or a deploy).
      if (this.#leaving || e.code === 4000 || e.code === 4003 || e.code === 4001) return
      void this.#retry('connection lost')
    }
  }

  #retry(reason: string) {
    if (this.#leaving) return
    this.status = 'reconnecting'
    this.error = null
    this.#outageSince ||= Date.now()
    // The chat socket's backoff: almost at once first, then growing with jitter; after the room's
    // rejoin grace the place is gone, so the bar says so instead of trying on.
    const outage = Date.now() - this.#outageSince
    const delay = backoffDelay(this.#retries++, outage)
    if (outage > VOICE_REJOIN_GRACE_MS) {
      this.status = 'error'
      this.error = reason
      return
    }
    setTimeout(() => void this.#connect(), delay)
  }

  #control(m: VoiceServerMessage) {
    switch (m.type) {
      case 'welcome':
      case 'state':
        this.room = m.state
        this.status = 'live'
        this.#retries = 0
        this.#outageSince = 0
        void this.#followRole()
        for (const slot of this.#decoders.keys()) if (!m.state.participants.some((p) => p.slot === slot)) this.#forget(slot)
        return
      case 'ended':
        this.#teardown()
        this.status = 'ended'
        return
      case 'error':
        this.error = m.message
        return
    }
  }

  /** The microphone is on exactly while this person may speak and is not muted. */
  async #followRole() {
    const me = this.me
    const shouldSpeak = !!me && me.role !== 'listener' && !me.muted
    if (shouldSpeak && !this.#mic) await this.#startMic()
    else if (!shouldSpeak && this.#mic) this.#stopMic()
  }

  async #startMic() {
    const ctx = this.#ctx
    if (!ctx) return
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 } })
      const node = new AudioWorkletNode(ctx, 'echovalley-capture', { numberOfOutputs: 0 })
      ctx.createMediaStreamSource(stream).connect(node)
      const encoder = new AudioEncoder({
        output: (chunk) => {
          const packet = new Uint8Array(chunk.byteLength)
          chunk.copyTo(packet)
          if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(encodeVoiceFrame({ level: this.micLevel, seq: this.#seq++, captureMs: captureClock(), packet }))
        },
        error: (e) => (this.error = e.message),
      })
      // Opus 48 kHz mono, 20 ms frames, DTX: silence costs almost nothing.
      encoder.configure({ codec: 'opus', sampleRate: SAMPLE_RATE, numberOfChannels: 1, bitrate: 32_000, opus: { frameDuration: 20_000, usedtx: true } } as AudioEncoderConfig)
      let timestamp = 0
      node.port.onmessage = (e: MessageEvent<Float32Array<ArrayBuffer>>) => {
        const pcm = e.data
        let sum = 0
        for (let i = 0; i < pcm.length; i++) sum += pcm[i]! * pcm[i]!
        this.micLevel = Math.min(255, Math.round(Math.sqrt(sum / pcm.length) * 4 * 255))
        if (encoder.state !== 'configured') return
        encoder.encode(new AudioData({ format: 'f32-planar', sampleRate: SAMPLE_RATE, numberOfFrames: FRAME_SAMPLES, numberOfChannels: 1, timestamp, data: pcm }))
        timestamp += 20_000
      }
      this.#mic = { stream, node, encoder }
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e)
    }
  }

  #stopMic() {
    const mic = this.#mic
    this.#mic = null
    if (!mic) return
    mic.node.port.onmessage = null
    mic.node.disconnect()
    for (const t of mic.stream.getTracks()) t.stop()
    if (mic.encoder.state !== 'closed') mic.encoder.close()
    this.micLevel = 0
  }

  #audio(data: ArrayBuffer) {
    this.#got++
    const frame = decodeVoiceFrame(data)
    if (!frame || !this.#player) return
    const now = Date.now()
    if (frame.level >= SPEAKING_LEVEL) this.speaking.set(frame.slot, now)
    const transit = (captureClock(now) - frame.captureMs) >>> 0
    const t = this.#transit.get(frame.slot)
    if (t) {
      t.jitter += (Math.abs(transit - t.last) - t.jitter) / 16
      t.last = transit
    } else this.#transit.set(frame.slot, { last: transit, jitter: 0 })
    // A late duplicate is dropped; a sequence far behind is a speaker who rejoined and starts over.
    const prev = this.#lastSeq.get(frame.slot)
    if (prev !== undefined && frame.seq <= prev && prev - frame.seq < 50) return
    // Up to three frames missing (60 ms) are covered in the player, in order; a longer gap is silence.
    const gap = prev !== undefined && frame.seq > prev ? frame.seq - prev - 1 : 0
    this.#lastSeq.set(frame.slot, frame.seq)
    let decoder = this.#decoders.get(frame.slot)
    if (!decoder) {
      const slot = frame.slot
      const gaps: number[] = []
      this.#gaps.set(slot, gaps)
      decoder = new AudioDecoder({
        // One output per packet, in order: the gap noted with a packet is covered just before it.
        output: (audio) => {
          const lost = gaps.shift() ?? 0
          if (lost > 0 && lost <= 3) this.#player?.port.postMessage({ slot, lost })
          const pcm = new Float32Array(audio.numberOfFrames)
          audio.copyTo(pcm, { planeIndex: 0, format: 'f32-planar' })
          audio.close()
          this.#player?.port.postMessage({ slot, pcm }, [pcm.buffer])
        },
        error: () => this.#forget(slot),
      })
      decoder.configure({ codec: 'opus', sampleRate: SAMPLE_RATE, numberOfChannels: 1 })
      this.#decoders.set(frame.slot, decoder)
    }
    this.#gaps.get(frame.slot)?.push(gap)
    decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: frame.seq * 20_000, data: frame.packet }))
  }

  /** Buffer depth follows the worst speaker's jitter: 40 ms on a calm network, up to 200 ms. */
  #tuneBuffer() {
    const worst = Math.max(0, ...[...this.#transit.values()].map((t) => t.jitter))
    this.#player?.port.postMessage({ targetMs: 40 + 3 * worst })
  }

  #forget(slot: number) {
    const d = this.#decoders.get(slot)
    if (d && d.state !== 'closed') d.close()
    this.#decoders.delete(slot)
    this.#transit.delete(slot)
    this.#lastSeq.delete(slot)
    this.#gaps.delete(slot)
    this.#player?.port.postMessage({ forget: slot })
  }

  send(m: VoiceClientMessage) {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(m))
  }

  leave() {
    this.send({ type: 'leave' })
    this.#teardown()
    this.status = 'idle'
    this.conversationId = null
    this.room = null
  }

  end() {
    this.send({ type: 'end' })
  }

  #teardown() {
    this.#leaving = true
    this.#stopMic()
    for (const slot of [...this.#decoders.keys()]) this.#forget(slot)
    if (this.#jitterTimer) clearInterval(this.#jitterTimer)
    this.#jitterTimer = null
    if (this.#gotTimer) clearInterval(this.#gotTimer)
    this.#gotTimer = null
    const ws = this.#ws
    this.#ws = null
    ws?.close(1000, 'left')
    void this.#ctx?.close()
    this.#ctx = null
    this.#player = null
  }
}
