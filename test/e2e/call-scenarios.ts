// Call scenarios in real Chromium, run inside a network namespace that has only loopback (see
// calls.test.ts): WebRTC media cannot leave the machine, and ICE pairs 127.0.0.1 with itself.
// Prints one JSON line of findings for the test to judge.
import AxeBuilder from '@axe-core/playwright'
import { execFileSync } from 'node:child_process'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { befriendInUi, launchBrowser, registerInUi, signInUi, uniqueTag } from './browser'
import { startServer } from './server'

// Every RTCPeerConnection the app makes, for getStats from the test.
const TAP = () => {
  const pcs: RTCPeerConnection[] = []
  ;(window as unknown as { __pcs: RTCPeerConnection[] }).__pcs = pcs
  const Native = window.RTCPeerConnection
  window.RTCPeerConnection = function (this: unknown, ...args: ConstructorParameters<typeof RTCPeerConnection>) {
    const pc = new Native(...args)
    pcs.push(pc)
    return pc
  } as unknown as typeof RTCPeerConnection
  window.RTCPeerConnection.prototype = Native.prototype
}

/** Bytes in and out by kind over all of the page's connections. */
function bytes(page: Page) {
  return page.evaluate(async () => {
    const out = { inAudio: 0, inVideo: 0, outAudio: 0, outVideo: 0, states: [] as string[] }
    for (const pc of (window as unknown as { __pcs: RTCPeerConnection[] }).__pcs) {
      out.states.push(pc.iceConnectionState)
      if (pc.connectionState === 'closed') continue
      const stats = await pc.getStats()
      stats.forEach((s: Record<string, unknown>) => {
        const kind = s.kind === 'video' ? 'Video' : 'Audio'
        if (s.type === 'inbound-rtp') out[`in${kind}`] += Number(s.bytesReceived ?? 0)
        if (s.type === 'outbound-rtp') out[`out${kind}`] += Number(s.bytesSent ?? 0)
      })
    }
    return out
  })
}

/**
 * Video frames one of Chromium's fake cameras gets through the encoder of a loopback connection
 * inside one page: the platform fact behind the switch-camera test (camera 1 is a Y16 depth
 * camera that plays in a <video> yet never reaches the encoder; cameras 0 and 2 do).
 */
function framesEncodedFrom(page: Page, camera: number): Promise<number> {
  return page.evaluate(async (camera) => {
    const a = new RTCPeerConnection()
    const b = new RTCPeerConnection()
    a.onicecandidate = (e) => void (e.candidate && b.addIceCandidate(e.candidate))
    b.onicecandidate = (e) => void (e.candidate && a.addIceCandidate(e.candidate))
    const cams = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput')
    const track = (await navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: cams[camera]!.deviceId } } })).getVideoTracks()[0]!
    a.addTransceiver(track, { direction: 'sendonly' })
    await a.setLocalDescription()
    await b.setRemoteDescription(a.localDescription!)
    await b.setLocalDescription()
    await a.setRemoteDescription(b.localDescription!)
    await new Promise((r) => setTimeout(r, 2500))
    let frames = 0
    ;(await a.getStats()).forEach((r: { type: string; framesEncoded?: number }) => void (r.type === 'outbound-rtp' && (frames += r.framesEncoded ?? 0)))
    track.stop()
    a.close()
    b.close()
    return frames
  }, camera)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function axe(page: Page): Promise<string[]> {
  const r = await new AxeBuilder({ page: page as never }).analyze()
  return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => v.id)
}

async function main() {
  const server = await startServer()
  // Three fake cameras (0: I420, 1: Y16 depth, 2: MJPEG), three fake speakers.
  const browser: Browser = await launchBrowser(['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream=device-count=3', '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required'])
  const findings: Record<string, unknown> = {}
  try {
    const s = uniqueTag()
    const person = async (name: string): Promise<{ page: Page; ctx: BrowserContext; handle: string }> => {
      const ctx = await browser.newContext({ permissions: ['camera', 'microphone'] })
      await ctx.addInitScript(TAP)
      const page = await ctx.newPage()
      if (process.env.CALL_DEBUG) page.on('console', (m) => console.error(name, m.type(), m.text()))
      const handle = `${name.toLowerCase()}_${s}`
      await registerInUi(page, server.url, handle, name)
      return { page, ctx, handle }
    }
    const probe = await (await browser.newContext({ permissions: ['camera'] })).newPage()
    await probe.goto(server.url)
    findings.fakeCameraFrames = { plain: await framesEncodedFrom(probe, 0), depth: await framesEncodedFrom(probe, 1), mjpeg: await framesEncodedFrom(probe, 2) }
    await probe.context().close()
    const ann = await person('Ann')
    const bob = await person('Bob')
    await befriendInUi(ann.page, bob.page, bob.handle)
    // Bob's second device, signed in as Bob: it rings too, and stops when the first answers.
    const bobPhone = await browser.newContext({ permissions: ['camera', 'microphone'] })
    await bobPhone.addInitScript(TAP)
    const phone = await bobPhone.newPage()
    await signInUi(phone, server.url, bob.handle)

    await ann.page.getByTestId('new-chat-handle').fill(bob.handle)
    await ann.page.getByTestId('new-chat-submit').click()
    await ann.page.getByTestId('call-video').click()
    await bob.page.getByTestId('call-screen').and(bob.page.locator('[data-phase="incoming"]')).waitFor({ timeout: 15_000 })
    await phone.getByTestId('call-screen').and(phone.locator('[data-phase="incoming"]')).waitFor({ timeout: 15_000 })
    findings.axeIncoming = await axe(bob.page)
    await bob.page.getByTestId('call-accept').click()
    await phone.getByTestId('call-end-reason').waitFor({ timeout: 10_000 })
    findings.phoneStopped = await phone.getByTestId('call-end-reason').textContent()
    await ann.page.locator('[data-testid="call-screen"][data-phase="connected"]').waitFor({ timeout: 20_000 })
    await bob.page.locator('[data-testid="call-screen"][data-phase="connected"]').waitFor({ timeout: 20_000 })
    findings.iceStates = { ann: (await bytes(ann.page)).states, bob: (await bytes(bob.page)).states }
    const a1 = await bytes(ann.page)
    const b1 = await bytes(bob.page)
    await sleep(2500)
    const a2 = await bytes(ann.page)
    const b2 = await bytes(bob.page)
    findings.grew = {
      annInAudio: a2.inAudio - a1.inAudio, annInVideo: a2.inVideo - a1.inVideo,
      bobInAudio: b2.inAudio - b1.inAudio, bobInVideo: b2.inVideo - b1.inVideo,
    }
    findings.quality = await ann.page.getByTestId('call-quality').textContent().catch(() => null)
    // A network blip: the only network there is (loopback) goes down for 8 s, then comes back.
    // The call says it is reconnecting, then recovers and carries media again; no one redials.
    execFileSync('ip', ['link', 'set', 'lo', 'down'])
    findings.sawReconnecting = await ann.page.locator('[data-testid="call-screen"][data-phase="reconnecting"]').waitFor({ timeout: 8000 }).then(() => true, () => false)
    execFileSync('ip', ['link', 'set', 'lo', 'up'])
    await ann.page.locator('[data-testid="call-screen"][data-phase="connected"]').waitFor({ timeout: 30_000 })
    await sleep(2000)
    const r1 = await bytes(bob.page)
    await sleep(2500)
    const r2 = await bytes(bob.page)
    findings.afterBlip = { bobInAudio: r2.inAudio - r1.inAudio, bobInVideo: r2.inVideo - r1.inVideo, states: r2.states }
    findings.axeInCall = await axe(ann.page)
    // Switch camera: the depth camera gives the encoder nothing, so it is skipped for the third;
    // Bob keeps receiving video.
    await ann.page.getByTestId('call-switch-camera').click()
    findings.switchedTo = await ann.page
      .waitForFunction(() => {
        const v = document.querySelector('[data-testid="local-video"]') as HTMLVideoElement | null
        const label = (v?.srcObject as MediaStream | null)?.getVideoTracks()[0]?.label
        return label && label !== 'fake_device_0' ? label : null
      }, undefined, { timeout: 15_000 })
      .then((h) => h.jsonValue())
    await sleep(1000)
    const sw1 = await bytes(bob.page)
    await sleep(2000)
    findings.afterSwitchBobInVideo = (await bytes(bob.page)).inVideo - sw1.inVideo
    // Speaker choice: every remote video plays on the chosen output.
    const speaker = ann.page.getByTestId('call-speaker')
    const outputs = await speaker.locator('option').evaluateAll((os) => os.map((o) => (o as HTMLOptionElement).value))
    await speaker.selectOption(outputs[1]!)
    await sleep(300)
    findings.speaker = { outputs: outputs.length, chosen: outputs[1], sinks: await ann.page.$$eval('[data-testid="remote-video"]', (vs) => vs.map((v) => (v as HTMLVideoElement).sinkId)) }
    // Mute: Ann's outbound audio stops growing.
    await ann.page.getByTestId('call-mute').click()
    await sleep(1000)
    const m1 = await bytes(ann.page)
    await sleep(2000)
    const m2 = await bytes(ann.page)
    findings.mutedOutAudio = m2.outAudio - m1.outAudio
    findings.mutedOutVideo = m2.outVideo - m1.outVideo
    // Hang up ends both.
    await ann.page.getByTestId('call-hangup').click()
    await bob.page.locator('[data-testid="call-screen"][data-phase="ended"]').waitFor({ timeout: 10_000 })
    findings.bobEnd = await bob.page.getByTestId('call-end-reason').textContent()
    // The chat records it.
    await bob.page.getByTestId('call-close').click()
    await bob.page.getByTestId('conversation-item').first().click()
    findings.log = await bob.page.getByTestId('system-line').filter({ hasText: /Video call · \d+:\d\d/ }).first().textContent({ timeout: 10_000 })

    // Decline: Bob declines a voice call; Ann's screen says so.
    await ann.page.getByTestId('call-close').click()
    await ann.page.getByTestId('call-voice').click()
    await bob.page.locator('[data-testid="call-screen"][data-phase="incoming"]').waitFor({ timeout: 15_000 })
    await bob.page.getByTestId('call-decline').click()
    await ann.page.locator('[data-testid="call-screen"][data-phase="ended"]').waitFor({ timeout: 10_000 })
    findings.declined = await ann.page.getByTestId('call-end-reason').textContent()
    await ann.page.getByTestId('call-close').click()

    // A group of three: everyone accepts, every pair connects (a full mesh).
    const cy = await person('Cy')
    await befriendInUi(ann.page, cy.page, cy.handle)
    await ann.page.getByTestId('new-group').click()
    await ann.page.getByTestId('group-title').fill('Trio')
    // Both friends listed (the list follows the accepted request).
    await ann.page.getByTestId('group-member').nth(1).waitFor({ timeout: 10_000 })
    for (const box of await ann.page.getByTestId('group-member').all()) await box.check()
    await ann.page.getByTestId('group-create').click()
    await ann.page.locator('.chat-head h2').filter({ hasText: 'Trio' }).waitFor()
    await ann.page.getByTestId('call-voice').click()
    for (const p of [bob.page, cy.page]) {
      await p.locator('[data-testid="call-screen"][data-phase="incoming"]').waitFor({ timeout: 15_000 })
      await p.getByTestId('call-accept').click()
    }
    const connectedPairs = async (p: Page) => (await bytes(p)).states.filter((x) => x === 'connected' || x === 'completed').length
    const deadline = Date.now() + 20_000
    let pairs = [0, 0, 0]
    while (Date.now() < deadline) {
      pairs = [await connectedPairs(ann.page), await connectedPairs(bob.page), await connectedPairs(cy.page)]
      if (pairs.every((n) => n >= 2)) break
      await sleep(500)
    }
    findings.groupPairs = pairs
    await ann.page.getByTestId('call-hangup').click()
  } catch (e) {
    findings.error = String(e)
    if (process.env.CALL_DEBUG) {
      for (const p of browser.contexts().flatMap((c) => c.pages())) {
        console.error('SCREEN', await p.evaluate(() => [document.querySelector('[data-testid="call-screen"]')?.getAttribute('data-phase'), document.querySelector('[data-testid="call-screen"]')?.textContent?.slice(0, 120), document.querySelector('.chat-head h2')?.textContent, Array.from(document.querySelectorAll('[role="alert"]'), (e) => e.textContent)]).catch(() => 'n/a'))
        console.error('PCS', await p.evaluate(() => (window as unknown as { __pcs?: RTCPeerConnection[] }).__pcs?.map((pc) => [pc.signalingState, pc.iceConnectionState, pc.iceGatheringState, pc.localDescription?.sdp.match(/a=candidate[^\r\n]*/g)?.slice(0, 3)])).catch(() => 'n/a'))
      }
    }
  } finally {
    console.log(`FINDINGS ${JSON.stringify(findings)}`)
    await browser.close()
    await server.stop()
  }
}

await main()
process.exit(0)
