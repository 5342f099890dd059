import { describe, it } from 'vitest'
import { befriendInUi, registerInUi, say, uniqueTag, useProduct } from './browser'

const product = useProduct()

describe('after a restart', () => {
  it('the PWA is back online within 2 s of the server, and the chat carries on', { timeout: 120_000 }, async ({ expect }) => {
    const suffix = uniqueTag()
    const a = await (await product.browser.newContext()).newPage()
    const b = await (await product.browser.newContext()).newPage()
    await registerInUi(a, product.server.url, `rea_${suffix}`, 'Rea')
    await registerInUi(b, product.server.url, `reb_${suffix}`, 'Reb')
    await befriendInUi(a, b, `reb_${suffix}`)
    await a.getByTestId('new-chat-handle').fill(`reb_${suffix}`)
    await a.getByTestId('new-chat-submit').click()
    await say(a, 'before the restart')
    const status = (p: typeof a) => p.getByTestId('connection-status').getAttribute('data-status')
    await expect.poll(() => status(a)).toBe('online')

    for (let round = 0; round < 2; round++) {
      // The server goes away for a few seconds (as a crash or a local restart does) and comes back.
      await product.server.restart()
      const back = Date.now()
      await expect.poll(() => status(a), { timeout: 10_000, interval: 50 }).toBe('online')
      await expect.poll(() => status(b), { timeout: 10_000, interval: 50 }).toBe('online')
      const waited = Date.now() - back
      expect(waited).toBeLessThan(2_000)
    }
    await say(a, 'after the restart')
    await b.getByTestId('conversation-item').filter({ hasText: 'Rea' }).click()
    await b.getByTestId('message').filter({ hasText: 'after the restart' }).waitFor()
  })

  it('a burst written at once goes out pipelined and lands in the order it was written', async ({ expect }) => {
    const suffix = uniqueTag()
    const a = await (await product.browser.newContext()).newPage()
    const b = await (await product.browser.newContext()).newPage()
    await registerInUi(a, product.server.url, `pia_${suffix}`, 'Pia')
    await registerInUi(b, product.server.url, `pib_${suffix}`, 'Pib')
    await befriendInUi(a, b, `pib_${suffix}`)
    await a.getByTestId('new-chat-handle').fill(`pib_${suffix}`)
    await a.getByTestId('new-chat-submit').click()
    const texts = Array.from({ length: 12 }, (_, i) => `burst ${i}`)
    for (const t of texts) {
      await a.getByTestId('composer-input').fill(t)
      await a.getByTestId('composer-input').press('Enter')
    }
    await a.getByTestId('message').filter({ hasText: 'burst 11' }).and(a.locator('[data-seq]')).waitFor()
    await b.getByTestId('conversation-item').filter({ hasText: 'Pia' }).click()
    await b.getByTestId('message').filter({ hasText: 'burst 11' }).waitFor()
    const shown = (await b.getByTestId('message-text').allTextContents()).filter((t) => t.startsWith('burst'))
    expect(shown).toEqual(texts)
  })

  it('an open chat writes on its own socket straight to the room, and on the chat socket when that one cannot connect', { timeout: 90_000 }, async ({ expect }) => {
    const suffix = uniqueTag()
    const a = await (await product.browser.newContext()).newPage()
    const b = await (await product.browser.newContext()).newPage()
    /** The `send` frames each of a page's sockets carried, by path. */
    const sendsOn = (page: typeof a) => {
      const sends = new Map<string, string[]>()
      page.on('websocket', (ws) => {
        const path = new URL(ws.url()).pathname
        ws.on('framereceived', (f) => {
          if (typeof f.payload === 'string' && f.payload.includes('"type":"hello"')) sends.set(path, sends.get(path) ?? [])
        })
        ws.on('framesent', (f) => {
          const text = typeof f.payload === 'string' ? f.payload : ''
          if (text.includes('"type":"send"')) sends.set(path, [...(sends.get(path) ?? []), (JSON.parse(text) as { body: { text: string } }).body.text])
        })
      })
      return sends
    }
    const aSends = sendsOn(a)
    await registerInUi(a, product.server.url, `wra_${suffix}`, 'Wra')
    await registerInUi(b, product.server.url, `wrb_${suffix}`, 'Wrb')
    await befriendInUi(a, b, `wrb_${suffix}`)
    await a.getByTestId('new-chat-handle').fill(`wrb_${suffix}`)
    await a.getByTestId('new-chat-submit').click()
    // The chat's writer socket is up (its hello came) before the first write.
    await expect.poll(() => [...aSends.keys()].some((p) => p.startsWith('/api/ws/conversations/'))).toBe(true)
    await say(a, 'one')
    await say(a, 'two')
    await b.getByTestId('conversation-item').filter({ hasText: 'Wra' }).click()
    await b.getByTestId('message').filter({ hasText: 'two' }).waitFor()
    const writerPaths = [...aSends.keys()].filter((p) => p.startsWith('/api/ws/conversations/'))
    expect(writerPaths).toHaveLength(1)
    expect(aSends.get(writerPaths[0]!)).toEqual(['one', 'two'])
    expect(aSends.get('/api/ws') ?? []).toEqual([])

    // B's writer sockets cannot connect (a proxy that drops them, say): after three tries its
    // writes go on the chat socket, and nothing is lost.
    await b.routeWebSocket(/\/api\/ws\/conversations\//, (ws) => ws.close())
    const bSends = sendsOn(b)
    await b.reload()
    await b.getByTestId('conversation-item').filter({ hasText: 'Wra' }).click()
    await say(b, 'through the hub')
    await a.getByTestId('message').filter({ hasText: 'through the hub' }).waitFor()
    expect(bSends.get('/api/ws')).toEqual(['through the hub'])
  })
})
