// Real Opus packets for the voice benchmark: ffmpeg's libopus encodes a voice-like signal
// (48 kHz mono, 20 ms frames, 32 kbps), and the packets are read out of the Ogg pages.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

/** The packets of an Ogg Opus stream, without its two header packets (OpusHead, OpusTags). */
export function oggPackets(ogg: Buffer): Uint8Array[] {
  const packets: Uint8Array[] = []
  let current: Buffer[] = []
  for (let at = 0; at + 27 <= ogg.length; ) {
    if (ogg.toString('ascii', at, at + 4) !== 'OggS') throw new Error(`not an Ogg page at ${at}`)
    const segments = ogg[at + 26]!
    const table = ogg.subarray(at + 27, at + 27 + segments)
    let body = at + 27 + segments
    for (const len of table) {
      current.push(ogg.subarray(body, body + len))
      body += len
      // A segment shorter than 255 ends a packet.
      if (len < 255) {
        packets.push(new Uint8Array(Buffer.concat(current)))
        current = []
      }
    }
    at = body
  }
  return packets.slice(2)
}

/** `seconds` of 20 ms packets: a warbling tone in syllable-like bursts, as speech is for DTX. */
export function opusFixture(seconds = 10): Uint8Array[] {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'echovalley-opus-')), 'voice.ogg')
  execFileSync('ffmpeg', [
    '-loglevel', 'error', '-y', '-f', 'lavfi',
    '-i', `aevalsrc='if(lt(mod(t\\,0.4)\\,0.3)\\,0.4*sin(2*PI*(220+80*sin(2*PI*3*t))*t)\\,0)':s=48000:d=${seconds}`,
    '-ac', '1', '-c:a', 'libopus', '-b:a', '32k', '-frame_duration', '20', '-application', 'voip', file,
  ])
  return oggPackets(readFileSync(file))
}
