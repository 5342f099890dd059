// Voice frames through real sockets (Node `ws` over TCP to wrangler dev): a burst from a speaker
// reaches a listener in the order it was sent. (The workers test pool's in-isolate client sockets
// can reorder such a burst; this is the check that the room itself never does.)
import WebSocket from 'ws'
import { describe, it } from 'vitest'
import { decodeVoiceFrame, encodeVoiceFrame } from '../../worker/shared/voice'
import { uniqueTag, useProduct } from './browser'

const product = useProduct()

async function call<T>(path: string, init: { token?: string; body?: unknown } = {}): Promise<T> {
  const res = await fetch(product.server.url + path, {
    method: init.body ? 'POST' : 'GET',
    headers: { 'content-type': 'application/json', ...(init.token ? { authorization: `Bearer ${init.token}` } : {}) },
    body: init.body ? JSON.stringify(init.body) : undefined,
  })
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`)
  return (await res.json()) as T
}

describe('voice frames over real sockets', () => {
  it('arrive at a listener in the order the speaker sent them, bursts included', async ({ expect }) => {
    const s = uniqueTag()
    type Auth = { accessToken: string; user: { id: string } }
    const a = await call<Auth>('/api/auth/register', { body: { handle: `vo_a_${s}`, password: 'order-password-1', displayName: 'A' } })
    const b = await call<Auth>('/api/auth/register', { body: { handle: `vo_b_${s}`, password: 'order-password-1', displayName: 'B' } })
    const req = await call<{ id: string }>('/api/friends/requests', { token: a.accessToken, body: { handle: `vo_b_${s}` } })
    await call(`/api/friends/requests/${req.id}/accept`, { token: b.accessToken, body: {} })
    const group = (await call<{ conversation: { id: string } }>('/api/conversations/groups', { token: a.accessToken, body: { title: 'order', memberIds: [b.user.id] } })).conversation
    const join = async (u: Auth) => {
      const { ticket } = await call<{ ticket: string }>('/api/ws/ticket', { token: u.accessToken, body: {} })
      const ws = new WebSocket(`${product.server.url.replace(/^http/, 'ws')}/api/voice/${group.id}/ws?ticket=${encodeURIComponent(ticket)}`)
      await new Promise((resolve) => ws.once('message', resolve))
      return ws
    }
    const speaker = await join(a)
    const listener = await join(b)
    const got: number[] = []
    listener.on('message', (data, binary) => {
      if (binary) got.push(decodeVoiceFrame(new Uint8Array(data as Buffer))!.seq)
    })
    let seq = 0
    for (let burst = 0; burst < 60; burst++) {
      for (let i = 0; i < 5; i++) speaker.send(encodeVoiceFrame({ level: 1, seq: seq++, captureMs: 0, packet: new Uint8Array([1, 2, 3]) }))
      listener.send(JSON.stringify({ type: 'got', n: got.length }))
      await new Promise((r) => setTimeout(r, 5))
    }
    await expect.poll(() => got.length, { timeout: 5000 }).toBe(300)
    expect(got).toEqual(Array.from({ length: 300 }, (_, i) => i))
    speaker.close()
    listener.close()
  })
})
