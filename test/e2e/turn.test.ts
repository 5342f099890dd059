// TURN credentials minted by the Worker, checked by a real TURN server: Debian's coturn on
// loopback with the REST shared secret; Chromium allocates a relay with what the Worker gave it.
import { spawn, type ChildProcess } from 'node:child_process'
import type { Page } from 'playwright-core'
import { afterAll, beforeAll, describe, it } from 'vitest'
import { launchBrowser, registerInUi, uniqueTag } from './browser'
import { freePort, startServer, type LocalServer } from './server'
import type { Browser } from 'playwright-core'

const SECRET = `turn-secret-${uniqueTag()}`
let turn: ChildProcess
let turnPort: number
let server: LocalServer
let browser: Browser

beforeAll(async () => {
  turnPort = await freePort()
  const relayFrom = 49_152 + Math.floor(Math.random() * 10_000)
  turn = spawn('turnserver', ['-n', '--listening-ip=127.0.0.1', `--listening-port=${turnPort}`, '--relay-ip=127.0.0.1', `--min-port=${relayFrom}`, `--max-port=${relayFrom + 100}`, '--use-auth-secret', `--static-auth-secret=${SECRET}`, '--realm=echovalley.test', '--no-tls', '--no-dtls', '--no-cli', '--allow-loopback-peers', '--log-file=stdout'], { stdio: ['ignore', 'pipe', 'pipe'] })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('coturn did not start')), 10_000)
    turn.stdout!.on('data', (d: Buffer) => {
      if (/listener opened on|Total General servers/i.test(d.toString())) {
        clearTimeout(timer)
        resolve()
      }
    })
    turn.once('exit', (code) => reject(new Error(`coturn exited with ${code}`)))
  })
  server = await startServer({ vars: { TURN_URLS: `turn:127.0.0.1:${turnPort}?transport=udp`, TURN_SECRET: SECRET, STUN_URLS: `stun:127.0.0.1:${turnPort}` } })
  browser = await launchBrowser(['--allow-loopback-in-peer-connection'])
})
afterAll(async () => {
  await browser?.close()
  await server?.stop()
  turn?.kill('SIGTERM')
})

/** The candidate types Chromium gathers with only these ICE servers and relays allowed. */
function relayCandidates(page: Page, iceServers: unknown): Promise<{ relay: number; errors: number[] }> {
  return page.evaluate(async (servers) => {
    const pc = new RTCPeerConnection({ iceServers: servers as RTCIceServer[], iceTransportPolicy: 'relay' })
    pc.createDataChannel('probe')
    let relay = 0
    const errors: number[] = []
    pc.onicecandidate = (e) => {
      if (e.candidate?.candidate.includes(' typ relay ')) relay++
    }
    pc.onicecandidateerror = (e) => errors.push((e as RTCPeerConnectionIceErrorEvent).errorCode)
    await pc.setLocalDescription(await pc.createOffer())
    await new Promise<void>((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve()
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve()
      setTimeout(resolve, 8000)
    })
    pc.close()
    return { relay, errors }
  }, iceServers)
}

describe('TURN for calls', () => {
  it('mints per-user credentials that a real TURN server accepts, and a tampered one is refused', async ({ expect }) => {
    const page = await (await browser.newContext()).newPage()
    await registerInUi(page, server.url, `turn_${uniqueTag()}`, 'Tura')
    const { iceServers } = await page.evaluate(async () => {
      const { accessToken } = JSON.parse(localStorage.getItem('echovalley.session')!) as { accessToken: string }
      return (await (await fetch('/api/calls/ice-servers', { headers: { authorization: `Bearer ${accessToken}` } })).json()) as { iceServers: { urls: string[]; username?: string; credential?: string }[] }
    })
    const turnServer = iceServers.find((s) => s.urls.some((u) => u.startsWith('turn:')))!
    expect(turnServer.username).toMatch(/^\d+:[A-Za-z0-9_-]+$/)
    expect(Number(turnServer.username!.split(':')[0])).toBeGreaterThan(Date.now() / 1000)
    expect(JSON.stringify(iceServers)).not.toContain(SECRET)
    const good = await relayCandidates(page, [turnServer])
    expect(good.relay).toBeGreaterThan(0)
    const bad = await relayCandidates(page, [{ ...turnServer, credential: `${turnServer.credential}x` }])
    expect(bad.relay).toBe(0)
    // Without a session there are no credentials.
    expect((await fetch(`${server.url}/api/calls/ice-servers`)).status).toBe(401)
  })
})
