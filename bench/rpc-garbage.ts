// What one Durable Object RPC leaves for workerd's collector, measured on its own: a room object
// calls 99 hub objects once per "send", as echovalley's fan-out does, with nothing else running.
// A sampling heap profile (CDP) counts what the calls allocate, and a second one counts only what
// a scavenge does not free (it lives until a Mark-Compact, the pauses behind the fan-out p99).
// Before each profile stops, a burst of short-lived garbage (`churn`, left out of the sums) makes
// the young generation scavenge twice, so what the calls left there is either freed or promoted
// rather than counted as alive. The time per member comes from a run without the profiler.
//   npx tsx bench/rpc-garbage.ts [sends per mode, default 1000]
// Modes: `none` (the same loop, no call), `noop` (a method with no argument that returns null),
// `delivery` (echovalley's argument: the member id and [{ meta, frame }]), `socket` (the frame on a
// WebSocket the room keeps open to each hub, which answers with one byte: a call's round trip
// without the call).
import { Miniflare } from 'miniflare'
import { freePort } from '../test/e2e/server'
import { inspect } from './inspector'

const MEMBERS = 99
const SENDS = Number(process.argv[2]) || 1000

const script = /* js */ `
import { DurableObject } from 'cloudflare:workers'
export class Hub extends DurableObject {
  async noop() { return null }
  async deliver(userId, deliveries) { this.n = (this.n ?? 0) + deliveries.length; return null }
  async fetch() {
    const [client, server] = Object.values(new WebSocketPair())
    this.ctx.acceptWebSocket(server)
    return new Response(null, { status: 101, webSocket: client })
  }
  webSocketMessage(ws, data) { ws.send('a') }
}
export class Room extends DurableObject {
  churn(bytes) {
    let keep = null
    for (let i = 0; i < bytes / 64; i++) keep = [i, keep === null ? 0 : 1, 2, 3]
    return keep.length
  }
  async run(mode, sends, members) {
    if (mode === 'churn') return { ms: 0, sink: this.churn(sends) }
    const stubs = Array.from({ length: members }, (_, i) => this.env.HUB.get(this.env.HUB.idFromName('u' + i)))
    const event = { conversationId: 'c'.repeat(20), seq: 0, type: 'message', senderId: 's'.repeat(20), body: { kind: 'text', text: 'fan 123' }, serverTs: Date.now(), clientMsgId: crypto.randomUUID() }
    const frame = JSON.stringify({ type: 'event', event })
    let sink = 0
    if (mode === 'socket' && !this.sockets) {
      this.sockets = []
      for (const h of stubs) {
        const ws = (await h.fetch('http://hub/', { headers: { upgrade: 'websocket' } })).webSocket
        ws.accept()
        ws.addEventListener('message', () => { if (--this.waiting === 0) this.done() })
        ws.addEventListener('close', () => this.failed?.(new Error('a hub closed its socket')))
        this.sockets.push(ws)
      }
    }
    const t0 = performance.now()
    for (let s = 0; s < sends; s++) {
      const meta = { type: 'message', conversationId: event.conversationId, seq: s, senderId: event.senderId, body: { kind: 'text' } }
      if (mode === 'noop') await Promise.all(stubs.map((h) => h.noop()))
      else if (mode === 'delivery') await Promise.all(stubs.map((h, i) => h.deliver('u' + i, [{ meta, frame }])))
      else if (mode === 'socket') {
        // The same frame on a socket per hub (opened once, before the clock), each hub answering.
        const all = new Promise((resolve, reject) => ((this.done = resolve), (this.failed = reject)))
        const timer = setTimeout(() => this.failed(new Error('hubs did not answer within 10 s')), 10_000)
        this.waiting = members
        for (const ws of this.sockets) ws.send(frame)
        await all
        clearTimeout(timer)
      }
      else for (let i = 0; i < members; i++) sink += frame.length + meta.seq
    }
    return { ms: performance.now() - t0, sink }
  }
}
export default {
  async fetch(req, env) {
    const u = new URL(req.url)
    if (u.pathname === '/poke') return new Response('ok')
    const room = env.ROOM.get(env.ROOM.idFromName('r'))
    return Response.json(await room.run(u.searchParams.get('mode'), Number(u.searchParams.get('sends')), ${MEMBERS}))
  },
}`

interface Node {
  callFrame: { functionName: string }
  selfSize: number
  children: Node[]
}
/** Bytes sampled in a profile, without the churn's own (its survivors at the stop). */
const sum = (n: Node): number => (n.callFrame.functionName === 'churn' ? 0 : n.selfSize + n.children.reduce((a, c) => a + sum(c), 0))
const CHURN_BYTES = 256 * 1024 * 1024

const inspectorPort = await freePort()
const mf = new Miniflare({
  modules: [{ type: 'ESModule', path: 'rpc-garbage.js', contents: script }],
  compatibilityDate: '2026-04-20',
  inspectorPort,
  durableObjects: { ROOM: { className: 'Room', useSQLite: true }, HUB: { className: 'Hub', useSQLite: true } },
})
let inspector: Awaited<ReturnType<typeof inspect>> | undefined
try {
  await mf.ready
  const run = async (mode: string, sends: number) => {
    const res = await mf.dispatchFetch(`http://x/?mode=${mode}&sends=${sends}`)
    if (!res.ok) throw new Error(`${mode}: ${res.status} ${await res.text()}`)
    return (await res.json()) as { ms: number }
  }
  const poke = () => mf.dispatchFetch('http://x/poke').then((r) => r.text())
  inspector = await inspect(inspectorPort, 'core:user', poke)
  const { call } = inspector
  await call('HeapProfiler.enable')
  await run('noop', 200) // every hub exists and the code is warm before anything is counted
  await run('delivery', 200)
  await run('socket', 200)
  console.log(`${MEMBERS} calls per send, ${SENDS} sends per mode (bytes are sampled, every 512 bytes)`)
  console.log('mode      | µs per member | allocated per member | of it not freed by a scavenge')
  for (const mode of ['none', 'noop', 'delivery', 'socket']) {
    const sampled = async (minor: boolean) => {
      await call('HeapProfiler.collectGarbage')
      await call('HeapProfiler.startSampling', { samplingInterval: 512, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: minor })
      await run(mode, SENDS)
      await run('churn', CHURN_BYTES)
      const { profile } = await call<{ profile: { head: Node } }>('HeapProfiler.stopSampling')
      return sum(profile.head)
    }
    const { ms } = await run(mode, SENDS)
    const all = await sampled(true)
    const old = await sampled(false)
    const calls = SENDS * MEMBERS
    const per = (b: number) => `${(b / calls).toFixed(0)} B`
    console.log(`${mode.padEnd(9)} | ${((1000 * ms) / calls).toFixed(1).padStart(13)} | ${per(all).padStart(20)} | ${per(old).padStart(29)}`)
  }
} finally {
  inspector?.close()
  await mf.dispose()
}
