/// <reference path="./worklet-globals.d.ts" />
// Cuts the microphone into 20 ms frames (960 samples at 48 kHz) for the Opus encoder.
const FRAME = 960

class CaptureProcessor extends AudioWorkletProcessor {
  private buffer = new Float32Array(FRAME)
  private filled = 0

  process(inputs: Float32Array[][]): boolean {
    const input = inputs[0]?.[0]
    if (!input) return true
    let at = 0
    while (at < input.length) {
      const n = Math.min(FRAME - this.filled, input.length - at)
      this.buffer.set(input.subarray(at, at + n), this.filled)
      this.filled += n
      at += n
      if (this.filled === FRAME) {
        const frame = this.buffer
        this.port.postMessage(frame, [frame.buffer])
        this.buffer = new Float32Array(FRAME)
        this.filled = 0
      }
    }
    return true
  }
}

registerProcessor('echovalley-capture', CaptureProcessor)
