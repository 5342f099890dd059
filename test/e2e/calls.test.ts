// WebRTC calls between real Chromium contexts. Media must stay on loopback: filtering candidates
// does not do it (Chromium pairs the machine's other addresses as peer-reflexive), so the whole
// scenario (server and browsers) runs in a user and network namespace with only `lo`.
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { describe, it } from 'vitest'

const ROOT = path.resolve(import.meta.dirname, '../..')

describe('calls in the PWA', () => {
  it('a video call rings both of the callee’s devices, connects on loopback, carries audio and video both ways, switches camera, picks a speaker, mutes, hangs up; a decline ends it; a group of three connects every pair; axe is clean', { timeout: 240_000 }, ({ expect }) => {
    const r = spawnSync('unshare', ['-rn', 'sh', '-c', `ip link set lo up && exec node --import tsx ${path.join(ROOT, 'test/e2e/call-scenarios.ts')}`], { cwd: ROOT, encoding: 'utf8', timeout: 230_000 })
    const line = r.stdout.split('\n').find((l) => l.startsWith('FINDINGS '))
    expect(line, `${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`).toBeTruthy()
    const f = JSON.parse(line!.slice('FINDINGS '.length)) as Record<string, any>
    expect(f.error).toBeUndefined()
    expect(f.phoneStopped).toBe('Answered on another device.')
    expect(f.iceStates.ann.some((s: string) => s === 'connected' || s === 'completed')).toBe(true)
    for (const [k, v] of Object.entries(f.grew as Record<string, number>)) expect(v, k).toBeGreaterThan(1000)
    expect(f.quality).toMatch(/ms/)
    expect(f.sawReconnecting).toBe(true)
    // Loopback down for a few seconds and back: the same call carries media again.
    expect(f.afterBlip.bobInAudio).toBeGreaterThan(1000)
    expect(f.afterBlip.bobInVideo).toBeGreaterThan(1000)
    // The platform fact first: Chromium's second fake camera never reaches a WebRTC encoder.
    expect(f.fakeCameraFrames.plain).toBeGreaterThan(10)
    expect(f.fakeCameraFrames.depth).toBe(0)
    expect(f.fakeCameraFrames.mjpeg).toBeGreaterThan(10)
    // Switch camera skips it for the third, and Bob keeps seeing Ann.
    expect(f.switchedTo).toBe('fake_device_2')
    expect(f.afterSwitchBobInVideo).toBeGreaterThan(1000)
    expect(f.speaker.outputs).toBeGreaterThan(1)
    expect(f.speaker.sinks.length).toBeGreaterThan(0)
    for (const sink of f.speaker.sinks) expect(sink).toBe(f.speaker.chosen)
    expect(f.mutedOutAudio).toBe(0)
    expect(f.mutedOutVideo).toBeGreaterThan(1000)
    expect(f.bobEnd).toBe('The call ended.')
    expect(f.log).toMatch(/Video call · \d+:\d\d/)
    expect(f.declined).toBe('Declined.')
    expect(f.axeIncoming).toEqual([])
    expect(f.axeInCall).toEqual([])
    // Each of the three holds a live connection to each of the other two.
    expect(f.groupPairs).toEqual([2, 2, 2])
  })
})
