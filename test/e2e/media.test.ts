import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import type { Browser, Page } from 'playwright-core'
import { Upload } from 'tus-js-client'
import { afterAll, beforeAll, describe, it } from 'vitest'
import { startTranscriber, type TranscriberService } from '../../scripts/transcriber'
import { testPng } from '../support/image-fixtures'
import { speechWav } from '../support/voice-fixtures'
import { befriendInUi, launchBrowser, recallMessage, registerInUi, uniqueTag } from './browser'
import { startServer, type LocalServer } from './server'

const dir = mkdtempSync(path.join(tmpdir(), 'echovalley-media-e2e-'))
const wav = path.join(dir, 'mic.wav')
let server: LocalServer
let browser: Browser
let transcriber: TranscriberService

beforeAll(async () => {
  // Chromium's fake microphone plays a WAV of real speech (espeak-ng), looped.
  speechWav(wav)
  transcriber = await startTranscriber()
  server = await startServer({ vars: { TRANSCRIBER_URL: transcriber.url } })
  browser = await launchBrowser([
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}`,
    '--autoplay-policy=no-user-gesture-required',
  ])
})
afterAll(async () => {
  await browser?.close()
  await server?.stop()
  await transcriber?.close()
})

async function twoFriends(prefix: string) {
  const s = uniqueTag()
  const aCtx = await browser.newContext({ permissions: ['microphone'] })
  const bCtx = await browser.newContext()
  const a = await aCtx.newPage()
  const b = await bCtx.newPage()
  await registerInUi(a, server.url, `${prefix}a_${s}`, 'Sender Sam')
  await registerInUi(b, server.url, `${prefix}b_${s}`, 'Listener Lee')
  await befriendInUi(a, b, `${prefix}b_${s}`)
  await a.getByTestId('new-chat-handle').fill(`${prefix}b_${s}`)
  await a.getByTestId('new-chat-submit').click()
  await a.getByTestId('composer-input').waitFor()
  return { a, b, aCtx, bCtx }
}

async function openFirstChat(p: Page) {
  await p.getByTestId('conversation-item').first().click()
}

describe('voice notes', () => {
  it('records with a fake microphone, survives a cut connection mid-upload, plays and transcribes on the other side, and is gone after recall', async ({ expect }) => {
    const { a, b, aCtx } = await twoFriends('v')
    const patches: { offset: number; length: string | null; status?: number }[] = []
    a.on('request', (r) => {
      if (r.method() === 'PATCH' && r.url().includes('/api/uploads/')) patches.push({ offset: Number(r.headers()['upload-offset']), length: r.headers()['upload-length'] ?? null })
    })

    // Tap to record hands-free; the timer and level meter run while chunks stream to the server.
    await a.getByTestId('record').click()
    await a.getByTestId('recorder').waitFor()
    await expect.poll(() => a.getByTestId('recorder-time').textContent(), { timeout: 10_000 }).toMatch(/0:0[2-9]/)
    await expect.poll(() => patches.length).toBeGreaterThan(0)
    // The network goes away mid-recording: streaming stops, the note is still recorded.
    await aCtx.setOffline(true)
    await expect.poll(() => a.getByTestId('recorder-time').textContent(), { timeout: 10_000 }).toMatch(/0:0[4-9]/)
    await a.getByTestId('recorder-stop').click()
    await a.getByTestId('recorder-preview').waitFor()
    await a.getByTestId('recorder-send').click()
    const mine = a.getByTestId('message').filter({ has: a.getByTestId('voice-note') })
    await expect.poll(() => mine.getAttribute('data-state')).toBe('pending')
    const streamedBeforeCut = Math.max(...patches.map((p) => p.offset))

    await aCtx.setOffline(false)
    await expect.poll(() => mine.getAttribute('data-seq'), { timeout: 30_000 }).not.toBeNull()
    // It resumed where the server stood instead of starting over, and declared the length at the end.
    const afterCut = patches.filter((p) => p.length !== null)
    expect(afterCut.length).toBeGreaterThan(0)
    expect(afterCut[0]!.offset).toBeGreaterThan(0)
    expect(afterCut[0]!.offset).toBeGreaterThanOrEqual(streamedBeforeCut)

    await openFirstChat(b)
    const note = b.getByTestId('message').filter({ has: b.getByTestId('voice-note') })
    await note.waitFor()
    // The duration shown is the server's reading of the file (about 4–6 s here).
    expect(await note.getByTestId('voice-time').textContent()).toMatch(/^0:0[3-9]$/)
    await note.getByTestId('voice-speed').click()
    expect(await note.getByTestId('voice-speed').textContent()).toBe('1.5×')
    await note.getByTestId('voice-play').click()
    await expect.poll(() => note.getByTestId('voice-note').getAttribute('data-playing'), { timeout: 10_000 }).toBe('true')
    await expect.poll(() => note.getByTestId('voice-audio').evaluate((el: HTMLAudioElement) => el.currentTime), { timeout: 10_000 }).toBeGreaterThan(0.3)
    expect(await note.getByTestId('voice-audio').evaluate((el: HTMLAudioElement) => el.playbackRate)).toBe(1.5)

    // On a phone the time and speed labels stay on one line each ("0:06", never "0:" over "06").
    await b.setViewportSize({ width: 390, height: 844 })
    for (const id of ['voice-time', 'voice-speed']) {
      expect(await note.getByTestId(id).evaluate((el) => el.getBoundingClientRect().height < 2 * parseFloat(getComputedStyle(el).fontSize) + 8)).toBe(true)
    }
    await b.setViewportSize({ width: 1280, height: 720 })

    // Speech to text through the real recogniser, offered because the server says it can.
    expect(await b.evaluate(async () => (await (await fetch('/api/capabilities')).json()) as unknown)).toMatchObject({ transcribe: true })
    await note.getByTestId('voice-transcribe').click()
    await expect.poll(() => note.getByTestId('voice-transcript').textContent(), { timeout: 60_000 }).toMatch(/hello|world/i)
    // The sender's device shows the same transcript at once, without a reload or a click.
    await expect.poll(() => mine.getByTestId('voice-transcript').textContent(), { timeout: 10_000 }).toBe(await note.getByTestId('voice-transcript').textContent())

    // Recall: gone from the other side, and its download with it.
    const mediaId = await note.getByTestId('voice-note').getAttribute('data-media-id')
    expect(mediaId).toMatch(/^[A-Za-z0-9_-]{8,}$/)
    const download = (p: Page) =>
      p.evaluate(async (id) => {
        const { accessToken } = JSON.parse(localStorage.getItem('echovalley.session')!) as { accessToken: string }
        return (await fetch(`/api/media/${id}`, { headers: { authorization: `Bearer ${accessToken}` } })).status
      }, mediaId)
    expect(await download(b)).toBe(200)
    await recallMessage(a, mine)
    await b.getByTestId('message-recalled').waitFor()
    expect(await b.getByTestId('voice-note').count()).toBe(0)
    await expect.poll(() => download(b)).toBe(404)
    expect(await download(a)).toBe(404)
  })
})

describe('photos and files', () => {
  it('sends a photo downscaled with a thumbnail and a file with its name; the other side views and downloads them', async ({ expect }) => {
    const { a, b } = await twoFriends('p')
    const png = testPng(2400, 1600)
    await a.getByTestId('attach-input').setInputFiles(png)
    const photo = a.getByTestId('message').filter({ has: a.getByTestId('image-thumb') })
    await expect.poll(() => photo.getAttribute('data-seq'), { timeout: 20_000 }).not.toBeNull()
    await a.getByTestId('attach-input').setInputFiles({ name: 'notes für morgen.txt', mimeType: 'text/plain', buffer: Buffer.from('bring the maps\n') })
    const file = a.getByTestId('message').filter({ has: a.getByTestId('file-message') })
    await expect.poll(() => file.getAttribute('data-seq'), { timeout: 20_000 }).not.toBeNull()

    await openFirstChat(b)
    const img = b.getByTestId('image-thumb').locator('img')
    await img.waitFor()
    await expect.poll(() => img.evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth)).toBeGreaterThan(0)
    // The chat shows the thumbnail (≤ 320 px); the full view the downscaled photo (≤ 1600 px).
    expect(await img.evaluate((el: HTMLImageElement) => el.naturalWidth)).toBeLessThanOrEqual(320)
    await b.getByTestId('image-thumb').click()
    const full = b.getByTestId('image-viewer').locator('img')
    await expect.poll(() => full.evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth)).toBe(1600)
    await b.keyboard.press('Escape')

    expect(await b.getByTestId('file-message').locator('.name').textContent()).toBe('notes für morgen.txt')
    // The first click downloads (it once did nothing until a media token happened to be loaded).
    const [download] = await Promise.all([b.waitForEvent('download'), b.getByTestId('file-download').click()])
    expect(download.suggestedFilename()).toBe('notes für morgen.txt')
    expect(readFileSync(await download.path(), 'utf8')).toBe('bring the maps\n')
    expect(readFileSync(png).length).toBeGreaterThan(1000)
  })
})

describe('a standard tus client', () => {
  it('tus-js-client uploads in chunks, is interrupted, resumes from the server offset, and the bytes arrive intact', async ({ expect }) => {
    const reg = await fetch(`${server.url}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ handle: `tus_${uniqueTag()}`, password: 'tus-password-1', displayName: 'Tus' }),
    })
    const { accessToken } = (await reg.json()) as { accessToken: string }
    const data = randomBytes(3 * 1024 * 1024 + 17)
    const options = {
      endpoint: `${server.url}/api/uploads`,
      chunkSize: 1024 * 1024,
      headers: { authorization: `Bearer ${accessToken}` },
      metadata: { kind: 'file', filename: 'tus.bin' },
      retryDelays: [0, 200, 500],
    }
    // First attempt: stop after the first chunk is confirmed, as a dropped connection would.
    const firstUrl = await new Promise<string>((resolve, reject) => {
      const up: Upload = new Upload(data, {
        ...options,
        onError: reject,
        onChunkComplete: (_chunk, accepted) => {
          if (accepted >= 1024 * 1024) void up.abort().then(() => resolve(up.url!))
        },
      })
      up.start()
    })
    const head = await fetch(firstUrl, { method: 'HEAD', headers: { 'tus-resumable': '1.0.0', authorization: `Bearer ${accessToken}` } })
    const offset = Number(head.headers.get('upload-offset'))
    expect(offset).toBeGreaterThanOrEqual(1024 * 1024)
    expect(offset).toBeLessThan(data.length)
    // Second attempt resumes the same upload URL from the server's offset.
    const offsets: number[] = []
    await new Promise<void>((resolve, reject) => {
      const up = new Upload(data, { ...options, uploadUrl: firstUrl, onError: reject, onSuccess: () => resolve(), onChunkComplete: (_c, accepted) => offsets.push(accepted) })
      up.start()
    })
    expect(offsets[0]).toBe(Math.min(offset + 1024 * 1024, data.length))
    const id = new URL(firstUrl).pathname.split('/').pop()
    const download = await fetch(`${server.url}/api/media/${id}`, { headers: { authorization: `Bearer ${accessToken}` } })
    expect(download.status).toBe(200)
    const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')
    expect(sha(new Uint8Array(await download.arrayBuffer()))).toBe(sha(data))
  })
})
