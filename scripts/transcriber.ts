// Local speech-to-text service: the Worker's HttpTranscriber posts a voice note here (loopback
// only) and gets { text } back. It decodes with ffmpeg and recognises with Debian's pocketsphinx
// (packages ffmpeg, pocketsphinx, pocketsphinx-en-us). Production uses Workers AI Whisper instead.
//   npx tsx scripts/transcriber.ts [--port 8788]
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)
const MAX_AUDIO_BYTES = 16 * 1024 * 1024
/** Idle servers started by tests stop by themselves. */
const DEFAULT_IDLE_MS = 30 * 60 * 1000

/** Whether ffmpeg and pocketsphinx are installed here. */
export async function transcriberAvailable(): Promise<boolean> {
  try {
    await run('ffmpeg', ['-version'])
    await run('which', ['pocketsphinx_continuous'])
    return true
  } catch {
    return false
  }
}

/** Audio bytes in any container ffmpeg reads → recognised English text ('' for silence). */
export async function transcribe(audio: Buffer): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'echovalley-stt-'))
  try {
    const input = path.join(dir, 'in')
    const wav = path.join(dir, 'in.wav')
    await writeFile(input, audio)
    // pocketsphinx wants 16 kHz mono 16-bit PCM; a little silence after speech helps it finish the last word.
    await run('ffmpeg', ['-loglevel', 'error', '-y', '-i', input, '-af', 'apad=pad_dur=0.5', '-ar', '16000', '-ac', '1', '-c:a', 'pcm_s16le', wav], { timeout: 60_000 })
    const { stdout } = await run('pocketsphinx_continuous', ['-infile', wav, '-logfn', '/dev/null'], { timeout: 120_000, maxBuffer: 1024 * 1024 })
    return stdout.replace(/\s+/g, ' ').trim()
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export interface TranscriberService {
  url: string
  close(): Promise<void>
}

export function startTranscriber(opts: { port?: number; idleMs?: number } = {}): Promise<TranscriberService> {
  let idle: NodeJS.Timeout | undefined
  const server: Server = createServer((req, res) => {
    idle?.refresh()
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(body))
    }
    if (req.method !== 'POST') return reply(405, { error: 'POST audio bytes' })
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > MAX_AUDIO_BYTES) req.destroy()
      else chunks.push(c)
    })
    req.on('end', () => {
      transcribe(Buffer.concat(chunks)).then(
        (text) => reply(200, { text }),
        (e: Error) => reply(422, { error: `could not transcribe: ${e.message.split('\n')[0]}` }),
      )
    })
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      idle = setTimeout(() => server.close(), opts.idleMs ?? DEFAULT_IDLE_MS)
      idle.unref()
      server.unref()
      resolve({ url: `http://127.0.0.1:${port}/`, close: () => new Promise((r) => server.close(() => r())) })
    })
  })
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const i = process.argv.indexOf('--port')
  const port = i > 0 ? Number(process.argv[i + 1]) : 8788
  if (!(await transcriberAvailable())) {
    console.error('transcriber: ffmpeg or pocketsphinx is missing (apt-get install -y ffmpeg pocketsphinx pocketsphinx-en-us); speech to text stays off')
    process.exit(1)
  }
  const svc = await startTranscriber({ port, idleMs: 2 ** 31 - 1 })
  console.log(`transcriber listening on ${svc.url}`)
  // Keep the process alive as a service (the server is unref'd for tests).
  setInterval(() => undefined, 1 << 30)
}
