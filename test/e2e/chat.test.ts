import type { Page } from 'playwright-core'
import { describe, it } from 'vitest'
import { befriendInUi, registerInUi, uniqueTag, useProduct } from './browser'

const product = useProduct()

async function openConversationWith(page: Page, title: string) {
  await page.getByTestId('conversation-item').filter({ hasText: title }).click()
}

describe('two people chat in two browsers', () => {
  it('registers, starts a chat by handle, exchanges live messages and reloads history', async ({ expect }) => {
    const suffix = uniqueTag()
    const alice = await product.browser.newContext()
    const bob = await product.browser.newContext()
    const a = await alice.newPage()
    const b = await bob.newPage()
    await registerInUi(a, product.server.url, `alice_${suffix}`, 'Alice')
    await registerInUi(b, product.server.url, `bob_${suffix}`, 'Bob')
    await befriendInUi(a, b, `bob_${suffix}`)

    await a.getByTestId('new-chat-handle').fill(`bob_${suffix}`)
    await a.getByTestId('new-chat-submit').click()
    await a.getByTestId('composer-input').fill('Hello Bob')
    await a.getByTestId('composer-input').press('Enter')
    const sent = a.getByTestId('message').filter({ hasText: 'Hello Bob' })
    // Bob is online, so the tick may already have moved on to delivered.
    await expect.poll(() => sent.getAttribute('data-state')).toMatch(/^(sent|delivered)$/)
    expect(await sent.getAttribute('data-seq')).toBe('1')
    expect(await sent.getAttribute('data-own')).toBe('true')

    // Bob's list learns of the new chat from the live event, without a reload.
    await openConversationWith(b, 'Alice')
    const received = b.getByTestId('message').filter({ hasText: 'Hello Bob' })
    await received.waitFor()
    expect(await received.getAttribute('data-own')).toBe('false')

    await b.getByTestId('composer-input').fill('Hi Alice')
    await b.getByTestId('composer-send').click()
    await a.getByTestId('message').filter({ hasText: 'Hi Alice' }).waitFor()

    // History comes back from the server after a reload, in order.
    await b.reload()
    await openConversationWith(b, 'Alice')
    await b.getByTestId('message').filter({ hasText: 'Hi Alice' }).waitFor()
    const texts = await b.getByTestId('message-text').allTextContents()
    expect(texts.map((t) => t.trim())).toEqual(['Hello Bob', 'Hi Alice'])
    await alice.close()
    await bob.close()
  })

  it('shows a clear error for a wrong password and an unknown handle', async ({ expect }) => {
    const ctx = await product.browser.newContext()
    const page = await ctx.newPage()
    await page.goto(product.server.url)
    if (await page.getByTestId('auth-display-name').isVisible()) await page.getByTestId('auth-toggle').click()
    await page.getByTestId('auth-handle').fill('nobody_at_all')
    await page.getByTestId('auth-password').fill('wrong-password')
    await page.getByTestId('auth-submit').click()
    await expect.poll(() => page.getByRole('alert').textContent()).toMatch(/wrong handle or password/i)
    await ctx.close()
  })
})
