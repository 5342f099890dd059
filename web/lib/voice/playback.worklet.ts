/// <reference path="./worklet-globals.d.ts" />
// Plays every speaker of a voice room: a jitter buffer per speaker (its depth set by the main
// thread from the measured jitter, 40–200 ms), mixed into one output. A frame lost on the way (a
// gap in the speaker's sequence) is covered by the last one, faded; an empty buffer is covered
// once the same way, after which the speaker is silent until their buffer refills.

interface Speaker {
  queue: Float32Array[]
  /** Read position in queue[0]. */
  offset: number
  buffered: number
  playing: boolean
  last: Float32Array | null
  concealed: boolean
}

class PlaybackProcessor extends AudioWorkletProcessor {
  private speakers = new Map<number, Speaker>()
  /** Samples to hold before a speaker starts (or restarts) playing. */
  private target = Math.round(0.06 * sampleRate)

  constructor() {
    super()
    this.port.onmessage = (e: MessageEvent<{ slot: number; pcm: Float32Array } | { targetMs: number } | { forget: number } | { slot: number; lost: number }>) => {
      const m = e.data
      if ('targetMs' in m) this.target = Math.round((Math.min(200, Math.max(40, m.targetMs)) / 1000) * sampleRate)
      else if ('forget' in m) this.speakers.delete(m.forget)
      else if ('lost' in m) this.conceal(m.slot, m.lost)
      else this.push(m.slot, m.pcm)
    }
  }

  private push(slot: number, pcm: Float32Array) {
    let s = this.speakers.get(slot)
    if (!s) this.speakers.set(slot, (s = { queue: [], offset: 0, buffered: 0, playing: false, last: null, concealed: false }))
    s.queue.push(pcm)
    s.buffered += pcm.length
    // Far behind (a stall): drop the oldest so the delay stays bounded.
    while (s.buffered > 4 * this.target && s.queue.length > 1) {
      const old = s.queue.shift()!
      s.buffered -= old.length - s.offset
      s.offset = 0
    }
    if (!s.playing && s.buffered >= this.target) s.playing = true
  }

  /** Stands in for `n` lost frames with the last one heard, each quieter than the one before. */
  private conceal(slot: number, n: number) {
    const s = this.speakers.get(slot)
    const last = s?.queue[s.queue.length - 1] ?? s?.last
    if (!s || !last) return
    for (let k = 1; k <= n; k++) this.push(slot, last.map((x) => x * 0.6 ** k))
  }

  process(_inputs: Float32Array[][], outputs: Float32Array[][]): boolean {
    const out = outputs[0]?.[0]
    if (!out) return true
    out.fill(0)
    for (const s of this.speakers.values()) {
      if (!s.playing) continue
      let i = 0
      while (i < out.length) {
        const head = s.queue[0]
        if (!head) {
          // Underrun: cover one frame with the last, fading, then wait for the buffer to refill.
          if (s.last && !s.concealed) {
            for (let k = 0; i < out.length && k < s.last.length; k++, i++) out[i]! += s.last[k]! * 0.5 * (1 - k / s.last.length)
            s.concealed = true
          }
          s.playing = false
          break
        }
        const n = Math.min(out.length - i, head.length - s.offset)
        for (let k = 0; k < n; k++) out[i + k]! += head[s.offset + k]!
        i += n
        s.offset += n
        s.buffered -= n
        if (s.offset === head.length) {
          s.last = s.queue.shift()!
          s.offset = 0
          s.concealed = false
        }
      }
    }
    for (let i = 0; i < out.length; i++) out[i] = Math.max(-1, Math.min(1, out[i]!))
    for (let c = 1; c < (outputs[0]?.length ?? 0); c++) outputs[0]![c]!.set(out)
    return true
  }
}

registerProcessor('echovalley-playback', PlaybackProcessor)
