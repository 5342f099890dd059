// A live voice room in three Chromium contexts with fake microphones playing known tones.
import AxeBuilder from '@axe-core/playwright'
import { execFileSync } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Browser, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, it } from 'vitest'
import { befriendInUi, launchBrowser, registerInUi, uniqueTag } from './browser'
import { startServer, type LocalServer } from './server'

const dir = mkdtempSync(path.join(tmpdir(), 'echovalley-voice-'))
/** Half-second bursts: noise suppression fades a steady tone, not speech-like bursts. */
function toneWav(freq: number): string {
  const file = path.join(dir, `tone-${freq}.wav`)
  execFileSync('ffmpeg', ['-loglevel', 'error', '-y', '-f', 'lavfi', '-i', `aevalsrc='if(lt(mod(t\\,1)\\,0.6)\\,0.5*sin(2*PI*${freq}*t)\\,0)':s=48000:d=60`, '-ac', '1', file])
  return file
}

// Every node the app connects to the speakers also feeds an analyser the test reads.
const TAP = () => {
  const taps: AnalyserNode[] = []
  ;(window as unknown as { __taps: AnalyserNode[] }).__taps = taps
  const connect = AudioNode.prototype.connect as (this: AudioNode, ...a: unknown[]) => unknown
  AudioNode.prototype.connect = function (this: AudioNode, dest: unknown, ...rest: unknown[]) {
    if (dest instanceof AudioDestinationNode) {
      const an = this.context.createAnalyser()
      an.fftSize = 2048
      connect.call(this, an)
      taps.push(an)
    }
    return connect.call(this, dest, ...rest)
  } as typeof AudioNode.prototype.connect
}

/** The loudest level (dB) near `freq` in what the page plays, over `ms`. */
function energyAt(page: Page, freq: number, ms = 1500): Promise<number> {
  return page.evaluate(
    async ({ freq, ms }) => {
      const taps = (window as unknown as { __taps: AnalyserNode[] }).__taps
      let best = -Infinity
      const end = performance.now() + ms
      while (performance.now() < end) {
        for (const an of taps) {
          const bins = new Float32Array(an.frequencyBinCount)
          an.getFloatFrequencyData(bins)
          const at = Math.round(freq / (an.context.sampleRate / an.fftSize))
          for (let k = at - 2; k <= at + 2; k++) best = Math.max(best, bins[k] ?? -Infinity)
        }
        await new Promise((r) => setTimeout(r, 40))
      }
      return best
    },
    { freq, ms },
  )
}

let server: LocalServer
let hostBrowser: Browser
let guestBrowser: Browser
beforeAll(async () => {
  server = await startServer()
  const flags = (wav: string) => ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${wav}`, '--autoplay-policy=no-user-gesture-required']
  hostBrowser = await launchBrowser(flags(toneWav(1000)))
  guestBrowser = await launchBrowser(flags(toneWav(600)))
})
afterAll(async () => {
  await hostBrowser?.close()
  await guestBrowser?.close()
  await server?.stop()
})

async function person(browser: Browser, name: string, s: string) {
  const ctx = await browser.newContext({ permissions: ['microphone'] })
  await ctx.addInitScript(TAP)
  const page = await ctx.newPage()
  await registerInUi(page, server.url, `${name.toLowerCase()}_${s}`, name)
  return { page, handle: `${name.toLowerCase()}_${s}` }
}

describe('voice rooms in the PWA', () => {
  it('the host speaks and two listeners hear it; a raised hand is invited and heard; mute silences; leave and end work', async ({ expect }) => {
    const s = uniqueTag()
    const host = await person(hostBrowser, 'Hana', s)
    const ann = await person(guestBrowser, 'Aiko', s)
    const bob = await person(guestBrowser, 'Bode', s)
    await befriendInUi(host.page, ann.page, ann.handle)
    await befriendInUi(host.page, bob.page, bob.handle)
    await host.page.getByTestId('new-group').click()
    await host.page.getByTestId('group-title').fill('Choir')
    await host.page.getByTestId('group-member').first().check()
    await host.page.getByTestId('group-member').nth(1).check()
    await host.page.getByTestId('group-create').click()
    await host.page.getByTestId('composer-input').waitFor()

    await host.page.getByTestId('voice-start').click()
    await host.page.getByTestId('voice-bar').filter({ hasText: 'Host' }).waitFor()
    for (const p of [ann.page, bob.page]) {
      await p.getByTestId('conversation-item').filter({ hasText: 'Choir' }).getByTestId('voice-live-badge').waitFor()
      await p.getByTestId('conversation-item').filter({ hasText: 'Choir' }).click()
      await p.getByTestId('voice-join').click()
      await p.getByTestId('voice-bar').filter({ hasText: 'Listener' }).waitFor()
    }
    // Both listeners hear the host's 1 kHz tone; nobody hears 600 Hz yet.
    await expect.poll(() => energyAt(ann.page, 1000), { timeout: 20_000 }).toBeGreaterThan(-50)
    await expect.poll(() => energyAt(bob.page, 1000), { timeout: 20_000 }).toBeGreaterThan(-50)
    // The bar says who is talking, from the frames' audio level.
    await bob.page.getByTestId('voice-talking').filter({ hasText: 'Hana' }).waitFor({ timeout: 10_000 })
    // (Opus and the analyser's window leak a little energy next to a tone: compare, with a margin.)
    expect(await energyAt(bob.page, 600)).toBeLessThan((await energyAt(bob.page, 1000)) - 20)
    await expect.poll(() => host.page.getByTestId('voice-card-listeners').textContent()).toBe('2 listening')

    // Aiko raises a hand; the host invites her; everyone hears her 600 Hz.
    await ann.page.getByTestId('voice-hand').click()
    await host.page.getByTestId('voice-people').click()
    const sheet = host.page.getByTestId('voice-people-sheet')
    await sheet.getByTestId('voice-person').filter({ hasText: 'Hand raised' }).getByTestId('voice-invite').click()
    await ann.page.getByTestId('voice-mute').waitFor()
    await expect.poll(() => energyAt(bob.page, 600), { timeout: 20_000 }).toBeGreaterThan(-50)
    await expect.poll(() => energyAt(host.page, 600), { timeout: 20_000 }).toBeGreaterThan(-50)
    // The room UI passes axe, sheet open.
    const axe = await new AxeBuilder({ page: host.page as never }).analyze()
    expect(axe.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => v.id)).toEqual([])
    await host.page.keyboard.press('Escape')

    // The host mutes: Bode hears no more 1 kHz, still 600 Hz.
    await host.page.getByTestId('voice-mute').click()
    await expect.poll(async () => (await energyAt(bob.page, 600)) - (await energyAt(bob.page, 1000)), { timeout: 20_000 }).toBeGreaterThan(20)
    expect(await energyAt(bob.page, 600)).toBeGreaterThan(-50)

    // A deploy (here: the runtime killed and started again) closes every socket: all rejoin, roles kept.
    await server.crash()
    await bob.page.getByTestId('voice-bar').filter({ hasText: 'Reconnecting…' }).waitFor()
    await server.restart()
    const up = Date.now()
    await bob.page.getByTestId('voice-bar').filter({ hasText: 'Listener' }).waitFor({ timeout: 10_000 })
    await ann.page.getByTestId('voice-bar').filter({ hasText: 'Speaker' }).waitFor({ timeout: 10_000 })
    const rejoinMs = Date.now() - up
    console.log(`voice rejoin after restart: ${rejoinMs} ms`)
    expect(rejoinMs).toBeLessThan(2_500)
    await expect.poll(() => energyAt(bob.page, 600), { timeout: 20_000 }).toBeGreaterThan(-50)

    // Aiko leaves; the host ends the room for everyone; the chat records it.
    await ann.page.getByTestId('voice-leave').click()
    await host.page.getByTestId('voice-people').click()
    await expect.poll(() => sheet.getByTestId('voice-person').count()).toBe(2)
    await sheet.getByTestId('voice-end').click()
    await bob.page.getByTestId('voice-bar').filter({ hasText: 'The voice room ended.' }).waitFor()
    await bob.page.getByTestId('system-line').filter({ hasText: /Voice room · \d+ min · 3 people/ }).waitFor()
    await bob.page.getByTestId('voice-start').waitFor()
  })

  it('a browser without WebCodecs audio is told so, in both languages, and nothing starts', async ({ expect }) => {
    const s = uniqueTag()
    const ctx = await hostBrowser.newContext()
    await ctx.addInitScript(() => {
      delete (window as { AudioEncoder?: unknown }).AudioEncoder
      delete (window as { AudioDecoder?: unknown }).AudioDecoder
    })
    const page = await ctx.newPage()
    const friend = await person(guestBrowser, 'Fitz', s)
    await registerInUi(page, server.url, `old_${s}`, 'Oldie')
    await befriendInUi(page, friend.page, friend.handle)
    await page.getByTestId('new-chat-handle').fill(friend.handle)
    await page.getByTestId('new-chat-submit').click()
    await page.getByTestId('voice-start').click()
    expect(await page.getByTestId('voice-unsupported').textContent()).toContain('WebCodecs')
    expect(await page.getByTestId('voice-bar').count()).toBe(0)
    await page.getByTestId('tab-me').click()
    await page.getByTestId('language').selectOption('zh-CN')
    await page.getByTestId('tab-chats').click()
    await page.getByTestId('conversation-item').first().click()
    await page.getByTestId('voice-start').click()
    expect(await page.getByTestId('voice-unsupported').textContent()).toContain('浏览器')
    // No room was started on the server.
    expect(await friend.page.getByTestId('voice-live-badge').count()).toBe(0)
  })
})
