import type { Env } from '../env'

/** Speech to text for one voice note. Implementations must not invent text: silence is ''. */
export interface Transcriber {
  transcribe(audio: Uint8Array, mime: string): Promise<string>
}

/** Production: the Workers AI binding runs Whisper next to the Worker. */
class WorkersAiWhisper implements Transcriber {
  constructor(private ai: Ai) {}
  async transcribe(audio: Uint8Array): Promise<string> {
    const out = (await this.ai.run('@cf/openai/whisper', { audio: [...audio] })) as { text?: string }
    return (out.text ?? '').trim()
  }
}

/**
 * Local development and tests: a transcriber service on loopback (scripts/transcriber.ts, which
 * wraps pocketsphinx) takes the audio as the request body and answers { text }.
 */
class HttpTranscriber implements Transcriber {
  constructor(private url: string) {}
  async transcribe(audio: Uint8Array, mime: string): Promise<string> {
    const res = await fetch(this.url, { method: 'POST', headers: { 'content-type': mime }, body: audio })
    if (!res.ok) throw new Error(`transcriber answered ${res.status}: ${(await res.text()).slice(0, 200)}`)
    const out = (await res.json()) as { text?: unknown }
    if (typeof out.text !== 'string') throw new Error('transcriber answered without text')
    return out.text.trim()
  }
}

/** The configured transcriber, or null when speech to text is not set up here. */
export function transcriberFor(env: Env): Transcriber | null {
  if (env.AI) return new WorkersAiWhisper(env.AI)
  if (env.TRANSCRIBER_URL) return new HttpTranscriber(env.TRANSCRIBER_URL)
  return null
}
