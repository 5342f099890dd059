// Real speech for tests: espeak-ng says a phrase, ffmpeg encodes it the way browsers record
// (Opus in WebM, live-style like MediaRecorder, and Ogg). Needs Debian's espeak-ng and ffmpeg.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

/** pocketsphinx recognises this voice and phrase reliably, even after Opus. */
export const SPOKEN_PHRASE = 'hello world'
export const ESPEAK_VOICE = 'en-us+m1'

/** A WAV of the phrase with silence around it, for Chromium's fake microphone. */
export function speechWav(file: string, phrase = SPOKEN_PHRASE) {
  const dir = mkdtempSync(path.join(tmpdir(), 'echovalley-voice-'))
  try {
    const raw = path.join(dir, 'raw.wav')
    execFileSync('espeak-ng', ['-v', ESPEAK_VOICE, '-s', '140', '-w', raw, phrase])
    execFileSync('ffmpeg', ['-loglevel', 'error', '-y', '-i', raw, '-af', 'adelay=300,apad=pad_dur=1', '-ar', '48000', '-ac', '1', '-c:a', 'pcm_s16le', file])
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

export interface VoiceFixtures {
  /** Opus in WebM with unknown-size clusters and no Duration, as MediaRecorder writes it. */
  webmLive: string
  /** Opus in WebM with a Duration element, as a file encoder writes it. */
  webm: string
  ogg: string
  /** AAC in MP4 as a file encoder writes it (duration in mvhd). */
  m4a: string
  /** Fragmented MP4 with an empty moov, as Safari's MediaRecorder writes it (duration only in the fragments). */
  mp4Frag: string
  /** Duration of the spoken audio in ms, as ffprobe reads it. */
  durationMs: number
}

/** Base64 so they can travel as bindings into workerd. */
export function makeVoiceFixtures(): VoiceFixtures {
  const dir = mkdtempSync(path.join(tmpdir(), 'echovalley-voice-'))
  try {
    const wav = path.join(dir, 'speech.wav')
    speechWav(wav)
    const encode = (name: string, args: string[], codec = ['-c:a', 'libopus', '-b:a', '32k']) => {
      const out = path.join(dir, name)
      execFileSync('ffmpeg', ['-loglevel', 'error', '-y', '-i', wav, ...codec, ...args, out])
      return readFileSync(out).toString('base64')
    }
    const probe = execFileSync('ffprobe', ['-v', 'error', '-show_entries', 'format=duration', '-of', 'csv=p=0', wav], { encoding: 'utf8' })
    return {
      webmLive: encode('live.webm', ['-f', 'webm', '-live', '1', '-cluster_time_limit', '1000']),
      webm: encode('file.webm', ['-f', 'webm']),
      ogg: encode('note.ogg', ['-f', 'ogg']),
      m4a: encode('note.m4a', ['-f', 'mp4'], ['-c:a', 'aac', '-b:a', '48k']),
      mp4Frag: encode('frag.mp4', ['-f', 'mp4', '-movflags', 'frag_keyframe+empty_moov+default_base_moof'], ['-c:a', 'aac', '-b:a', '48k']),
      durationMs: Math.round(Number(probe.trim()) * 1000),
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
