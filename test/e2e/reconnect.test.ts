import { describe, it } from 'vitest'
import { befriendInUi, registerInUi, say, useProduct } from './browser'

const product = useProduct()

describe('after a restart', () => {
  it('the PWA is back online within 2 s of the server, and the chat carries on', { timeout: 120_000 }, async ({ expect }) => {
    const suffix = Date.now().toString(36)
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
    const suffix = Date.now().toString(36)
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
})
