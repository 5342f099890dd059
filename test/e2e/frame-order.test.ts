import { randomUUID } from 'node:crypto'
import { Miniflare } from 'miniflare'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { directChat, registerUser } from '../../scripts/fault/client'
import { uniqueTag } from './browser'
import { startServer, type LocalServer } from './server'

// The smallest check of the platform property pipelining rests on: a hibernatable Durable Object
// gets one socket's frames in the order they were sent, while it awaits a call to another object
// (as the UserHub does) and writes storage. Bare workerd through Miniflare, no product code.
const PROBE = `
import { DurableObject } from 'cloudflare:workers'
export class Probe extends DurableObject {
  seen = []
  async fetch(req) {
    if (new URL(req.url).pathname === '/order') return Response.json(this.seen)
    const { 0: client, 1: server } = new WebSocketPair()
    this.ctx.acceptWebSocket(server)
    return new Response(null, { status: 101, webSocket: client })
  }
  async webSocketMessage(ws, data) {
    this.seen.push(Number(data))
    this.ctx.storage.sql.exec('CREATE TABLE IF NOT EXISTS t (n INTEGER); INSERT INTO t VALUES (?)', Number(data))
    ws.send(String(await this.env.OTHER.get(this.env.OTHER.idFromName('o')).echo(Number(data))))
  }
}
export class Other extends DurableObject { async echo(n) { return n } }
export default { fetch: (req, env) => env.PROBE.get(env.PROBE.idFromName(new URL(req.url).searchParams.get('n') ?? 'p')).fetch(req) }
`

describe('frame order', () => {
  it('workerd hands a hibernatable object one socket’s frames in the order sent', async ({ expect }) => {
    const mf = new Miniflare({
      modules: true,
      script: PROBE,
      compatibilityDate: '2026-04-20',
      durableObjects: { PROBE: { className: 'Probe', useSQLite: true }, OTHER: { className: 'Other', useSQLite: true } },
    })
    try {
      const url = await mf.ready
      const ws = new WebSocket(`${url.href.replace('http', 'ws')}?n=burst`)
      await new Promise((r) => ws.once('open', r))
      const N = 2000
      let echoed = 0
      const done = new Promise<void>((resolve) => ws.on('message', () => ++echoed === N && resolve()))
      for (let i = 0; i < N; i++) ws.send(String(i))
      await done
      const seen = (await (await fetch(`${url.href}order?n=burst`)).json()) as number[]
      expect(seen).toEqual(Array.from({ length: N }, (_, i) => i))
      ws.close()
    } finally {
      await mf.dispose()
    }
  })
})

describe('pipelined sends against the product', () => {
  let server: LocalServer
  beforeAll(async () => {
    server = await startServer({ vars: { WRITE_RATE: '100000/100000', FRAME_RATE: '100000/100000' } })
  })
  afterAll(async () => {
    await server?.stop()
  })

  it.each([
    ['the chat socket, through the hub', (_conv: string) => '/api/ws'],
    ['a writer socket, straight to the room', (conv: string) => `/api/ws/conversations/${conv}`],
  ])('five writes sent without waiting on %s are sequenced in send order, 100 rounds', async (_name, pathOf) => {
    const tag = uniqueTag()
    const a = await registerUser(server.url, `pipe_a_${tag}`)
    const b = await registerUser(server.url, `pipe_b_${tag}`)
    const conv = await directChat(server.url, a, b)
    const { ticket } = (await (await fetch(`${server.url}/api/ws/ticket`, { method: 'POST', headers: { authorization: `Bearer ${a.accessToken}` } })).json()) as { ticket: string }
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}${pathOf(conv)}?ticket=${ticket}`)
    const acks = new Map<string, (seq: number) => void>()
    ws.on('message', (d) => {
      const m = JSON.parse(d.toString()) as { type: string; clientMsgId?: string; seq?: number }
      if (m.type === 'ack') acks.get(m.clientMsgId!)?.(m.seq!)
    })
    await new Promise((r) => ws.once('message', r))
    const order: number[][] = []
    for (let round = 0; round < 100; round++) {
      const ids = Array.from({ length: 5 }, () => randomUUID())
      const seqs = ids.map((id) => new Promise<number>((r) => acks.set(id, r)))
      for (const [i, id] of ids.entries()) ws.send(JSON.stringify({ type: 'send', conversationId: conv, clientMsgId: id, body: { kind: 'text', text: `round ${round} #${i}` } }))
      order.push(await Promise.all(seqs))
    }
    ws.close()
    expect(order.flat()).toEqual(Array.from({ length: 500 }, (_, i) => i + 1))
  })
})
