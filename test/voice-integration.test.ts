import { exports } from 'cloudflare:workers'
import { describe, it } from 'vitest'
import type { AuthResult, ConversationEvent, ConversationSummary } from '../worker/shared/protocol'
import { captureClock, decodeVoiceFrame, encodeVoiceFrame, VOICE_MAX_OUTSTANDING, type VoiceClientMessage, type VoiceFrame, type VoiceServerMessage } from '../worker/shared/voice'
import { api, createGroup, Device, json, register, ticketFor } from './helpers'

const BASE = 'https://echovalley.test'

/** One participant's socket to a voice room: control frames and relayed audio, as they come. */
class VoiceClient {
  readonly frames: VoiceServerMessage[] = []
  readonly audio: VoiceFrame[] = []
  closed: { code: number } | null = null
  private waiters: (() => void)[] = []
  private seq = 0

  constructor(readonly ws: WebSocket) {
    ws.binaryType = 'arraybuffer'
    ws.addEventListener('message', (e) => {
      if (typeof e.data === 'string') this.frames.push(JSON.parse(e.data) as VoiceServerMessage)
      else this.audio.push(decodeVoiceFrame(e.data as ArrayBuffer)!)
      this.wake()
    })
    ws.addEventListener('close', (e) => {
      this.closed = { code: e.code }
      this.wake()
    })
  }

  private wake() {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  static async join(a: AuthResult, conversationId: string): Promise<VoiceClient> {
    const res = await exports.default.fetch(new Request(`${BASE}/api/voice/${conversationId}/ws?ticket=${encodeURIComponent(await ticketFor(a))}`, { headers: { upgrade: 'websocket' } }))
    if (res.status !== 101 || !res.webSocket) throw Object.assign(new Error(`join failed: ${res.status}`), { status: res.status })
    res.webSocket.accept()
    const c = new VoiceClient(res.webSocket)
    await c.until(() => c.frames.some((f) => f.type === 'welcome'))
    return c
  }

  control(m: VoiceClientMessage) {
    this.ws.send(JSON.stringify(m))
  }

  speak(packet = new Uint8Array([0xf8, 0xff, 0xfe, this.seq & 0xff])) {
    this.ws.send(encodeVoiceFrame({ level: 200, seq: this.seq++, captureMs: captureClock(), packet }))
  }

  async until(check: () => boolean, timeoutMs = 5000) {
    const end = Date.now() + timeoutMs
    while (!check()) {
      if (Date.now() > end) throw new Error(`timed out; frames: ${JSON.stringify(this.frames.slice(-4))}`)
      await new Promise<void>((r) => {
        this.waiters.push(r)
        setTimeout(r, 50)
      })
    }
  }

  /** The latest room state this client was told. */
  state() {
    const last = [...this.frames].reverse().find((f) => f.type === 'state' || f.type === 'welcome') as Extract<VoiceServerMessage, { type: 'state' | 'welcome' }>
    return last.state
  }
  roleOf(userId: string) {
    return this.state().participants.find((p) => p.userId === userId)?.role
  }
}

async function trio() {
  const [host, ann, bob] = [await register(), await register(), await register()]
  const group: ConversationSummary = await createGroup(host, [ann, bob], 'Voice club')
  return { host, ann, bob, group }
}

describe('voice rooms', () => {
  it('relays a speaker’s frames to everyone else untouched, with the room’s slot; listeners cannot speak until promoted', async ({ expect }) => {
    const { host, ann, bob, group } = await trio()
    const h = await VoiceClient.join(host, group.id)
    expect(h.roleOf(host.user.id)).toBe('host')
    const a = await VoiceClient.join(ann, group.id)
    const b = await VoiceClient.join(bob, group.id)
    expect(b.roleOf(ann.user.id)).toBe('listener')

    h.speak(new Uint8Array([1, 2, 3, 4, 5]))
    await a.until(() => a.audio.length === 1)
    await b.until(() => b.audio.length === 1)
    const got = a.audio[0]!
    expect([...got.packet]).toEqual([1, 2, 3, 4, 5])
    expect(got.slot).toBe(h.state().participants.find((p) => p.userId === host.user.id)!.slot)
    expect(got.level).toBe(200)
    expect(Math.abs(captureClock() - got.captureMs)).toBeLessThan(5000)
    expect(h.audio).toHaveLength(0)

    // A listener's audio is refused, not relayed.
    a.speak()
    await a.until(() => a.frames.some((f) => f.type === 'error' && f.code === 'NOT_ALLOWED'))
    await new Promise((r) => setTimeout(r, 200))
    expect(h.audio).toHaveLength(0)
    expect(b.audio).toHaveLength(1)

    // Hand raised, promoted by the host: now heard.
    a.control({ type: 'hand', raised: true })
    await h.until(() => h.state().participants.find((p) => p.userId === ann.user.id)?.hand === true)
    h.control({ type: 'promote', userId: ann.user.id })
    await a.until(() => a.roleOf(ann.user.id) === 'speaker')
    a.speak(new Uint8Array([9, 9]))
    await h.until(() => h.audio.length === 1)
    await b.until(() => b.audio.length === 2)
    expect([...h.audio[0]!.packet]).toEqual([9, 9])

    // A speaker who mutes is silent; a frame claiming another slot still carries its own.
    a.control({ type: 'mute', muted: true })
    await h.until(() => h.state().participants.find((p) => p.userId === ann.user.id)?.muted === true)
    a.speak()
    await new Promise((r) => setTimeout(r, 200))
    expect(h.audio).toHaveLength(1)
    a.control({ type: 'mute', muted: false })
    await h.until(() => h.state().participants.find((p) => p.userId === ann.user.id)?.muted === false)
    a.ws.send(encodeVoiceFrame({ level: 0, slot: 1, seq: 99, captureMs: 0, packet: new Uint8Array([7]) }))
    await h.until(() => h.audio.length === 2)
    expect(h.audio[1]!.slot).toBe(a.state().participants.find((p) => p.userId === ann.user.id)!.slot)
    for (const c of [h, a, b]) c.ws.close()
  })

  it('a listener that falls behind loses frames and catches up; one that keeps up gets every frame and nobody waits', async ({ expect }) => {
    const { host, ann, bob, group } = await trio()
    const h = await VoiceClient.join(host, group.id)
    const keeps = await VoiceClient.join(ann, group.id)
    const lags = await VoiceClient.join(bob, group.id)
    const report = setInterval(() => keeps.control({ type: 'got', n: keeps.audio.length }), 20)
    for (let i = 0; i < VOICE_MAX_OUTSTANDING + 50; i++) {
      h.speak()
      if (i % 10 === 9) await new Promise((r) => setTimeout(r, 30))
    }
    await keeps.until(() => keeps.audio.length === VOICE_MAX_OUTSTANDING + 50)
    // Bob never said what he got: the room stopped at the outstanding limit.
    await new Promise((r) => setTimeout(r, 200))
    expect(lags.audio).toHaveLength(VOICE_MAX_OUTSTANDING)
    // Caught up (he reports), he hears what is said from then on.
    lags.control({ type: 'got', n: lags.audio.length })
    await new Promise((r) => setTimeout(r, 100))
    for (let i = 0; i < 5; i++) h.speak()
    await lags.until(() => lags.audio.length === VOICE_MAX_OUTSTANDING + 5)
    // The new frames, not the skipped ones. (As a set: this pool's in-isolate client sockets can
    // reorder a burst of binary frames; through real sockets the order holds, test/e2e/voice-order.)
    expect(lags.audio.slice(VOICE_MAX_OUTSTANDING).map((f) => f.seq).sort((x, y) => x - y)).toEqual([250, 251, 252, 253, 254].map((n) => n + VOICE_MAX_OUTSTANDING - 200))
    clearInterval(report)
    for (const c of [h, keeps, lags]) c.ws.close()
  })

  it('refuses host actions from others, and joining to non-members; a removed member is dropped at once', async ({ expect }) => {
    const { host, ann, bob, group } = await trio()
    const outsider = await register()
    await expect(VoiceClient.join(outsider, group.id)).rejects.toMatchObject({ status: 404 })
    expect((await api(`/api/voice/${group.id}`, { token: outsider.accessToken })).status).toBe(404)
    const h = await VoiceClient.join(host, group.id)
    const a = await VoiceClient.join(ann, group.id)
    const b = await VoiceClient.join(bob, group.id)
    for (const m of [{ type: 'promote', userId: bob.user.id }, { type: 'remove', userId: host.user.id }, { type: 'end' }, { type: 'force-mute', userId: host.user.id }] as const) {
      a.control(m)
      await a.until(() => a.frames.some((f) => f.type === 'error' && f.code === 'NOT_ALLOWED'))
      a.frames.length = 0
    }
    expect(h.roleOf(bob.user.id)).toBe('listener')
    a.control({ type: 'promote', nonsense: true } as never)
    await a.until(() => a.frames.some((f) => f.type === 'error' && f.code === 'BAD_REQUEST'))

    // Removed from the group: out of the room at once.
    expect((await api(`/api/conversations/${group.id}/members/${bob.user.id}`, { method: 'DELETE', token: host.accessToken })).status).toBe(200)
    await b.until(() => b.closed !== null)
    expect(b.closed!.code).toBe(4003)
    await h.until(() => !h.state().participants.some((p) => p.userId === bob.user.id))
    await expect(VoiceClient.join(bob, group.id)).rejects.toMatchObject({ status: 404 })
    for (const c of [h, a]) c.ws.close()
  })

  it('tells members it is live, and writes one end event into the log when the host ends it', async ({ expect }) => {
    const { host, ann, group } = await trio()
    const watcher = await Device.connect(ann)
    const h = await VoiceClient.join(host, group.id)
    const live = await watcher.next((m) => m.type === 'voice-room' && m.summary.live)
    expect(live.type === 'voice-room' && live.summary).toMatchObject({ conversationId: group.id, live: true, hostId: host.user.id, speakers: [host.user.id], listeners: 0 })
    const summary = await json<{ summary: { live: boolean } }>(await api(`/api/voice/${group.id}`, { token: ann.accessToken }))
    expect(summary.summary.live).toBe(true)
    const list = await json<{ conversations: (ConversationSummary & { voiceLiveSince: number | null })[] }>(await api('/api/conversations', { token: ann.accessToken }))
    expect(list.conversations.find((c) => c.id === group.id)!.voiceLiveSince).toBeGreaterThan(0)

    const a = await VoiceClient.join(ann, group.id)
    h.control({ type: 'end' })
    await a.until(() => a.frames.some((f) => f.type === 'ended' && f.reason === 'host-ended'))
    await a.until(() => a.closed !== null)
    const event = (await watcher.next((m) => m.type === 'event' && m.event.type === 'voice')) as { event: ConversationEvent }
    expect(event.event).toMatchObject({ type: 'voice', senderId: host.user.id, people: 2 })
    await watcher.next((m) => m.type === 'voice-room' && !m.summary.live)
    // Once: the history holds one voice event.
    const voiceEvents = async () => (await json<{ events: ConversationEvent[] }>(await api(`/api/conversations/${group.id}/messages?limit=50`, { token: ann.accessToken }))).events.filter((e) => e.type === 'voice').length
    // D1 has it within a flush tick.
    await expect.poll(voiceEvents, { timeout: 3000 }).toBe(1)
    const after = await json<{ conversations: (ConversationSummary & { voiceLiveSince: number | null })[] }>(await api('/api/conversations', { token: ann.accessToken }))
    expect(after.conversations.find((c) => c.id === group.id)!.voiceLiveSince).toBeNull()
    watcher.close()
  })

  it('a dropped listener rejoins with its role; the last one to leave ends the room; a ticket opens one socket', async ({ expect }) => {
    const { host, ann, bob, group } = await trio()
    const h = await VoiceClient.join(host, group.id)
    const a = await VoiceClient.join(ann, group.id)
    h.control({ type: 'promote', userId: ann.user.id })
    await a.until(() => a.roleOf(ann.user.id) === 'speaker')
    a.ws.close(1000, 'network')
    await h.until(() => h.state().participants.find((p) => p.userId === ann.user.id)?.connected === false)
    const again = await VoiceClient.join(ann, group.id)
    expect(again.roleOf(ann.user.id)).toBe('speaker')

    const ticket = await ticketFor(bob)
    const url = `${BASE}/api/voice/${group.id}/ws?ticket=${encodeURIComponent(ticket)}`
    const first = await exports.default.fetch(new Request(url, { headers: { upgrade: 'websocket' } }))
    expect(first.status).toBe(101)
    first.webSocket!.accept()
    const replay = await exports.default.fetch(new Request(url, { headers: { upgrade: 'websocket' } }))
    expect(replay.status).toBe(401)
    first.webSocket!.close()
    await h.until(() => h.state().participants.find((p) => p.userId === bob.user.id)?.connected === false)

    h.control({ type: 'leave' })
    // The host left: the room passes to the speaker.
    await again.until(() => again.roleOf(ann.user.id) === 'host')
    // Bob's dropped place still counts until its grace ends; Ann leaving with only that left ends the room.
    again.control({ type: 'remove', userId: bob.user.id })
    await again.until(() => !again.state().participants.some((p) => p.userId === bob.user.id))
    again.control({ type: 'leave' })
    await again.until(() => again.closed !== null)
    await new Promise((r) => setTimeout(r, 300))
    expect((await json<{ summary: { live: boolean } }>(await api(`/api/voice/${group.id}`, { token: host.accessToken }))).summary.live).toBe(false)
  })
})
