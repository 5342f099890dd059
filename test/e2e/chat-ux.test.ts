import { describe, it } from 'vitest'
import { befriendInUi, messageAction, registerInUi, say, uniqueTag, useProduct } from './browser'

const product = useProduct()

describe('chat as people expect it', () => {
  it('marks new messages, separates days, replies with a quote, reacts, copies, and answers to shortcuts', async ({ expect }) => {
    const s = uniqueTag()
    const a = await (await product.browser.newContext()).newPage()
    const bCtx = await product.browser.newContext()
    await bCtx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: product.server.url })
    const b = await bCtx.newPage()
    await registerInUi(a, product.server.url, `ux_a_${s}`, 'Ada')
    await registerInUi(b, product.server.url, `ux_b_${s}`, 'Ben')
    await befriendInUi(a, b, `ux_b_${s}`)
    await a.getByTestId('new-chat-handle').fill(`ux_b_${s}`)
    await a.getByTestId('new-chat-submit').click()
    for (const text of ['one', 'two', 'three']) await say(a, text)

    await b.getByTestId('conversation-item').first().click()
    await b.getByTestId('message').filter({ hasText: 'three' }).waitFor()
    // The "new messages" line sits right before the first unread one.
    const order = await b.locator('.messages > li').evaluateAll((els) => els.map((e) => e.getAttribute('data-testid') + ':' + (e.textContent ?? '').trim().slice(0, 12)))
    const line = order.findIndex((x) => x.startsWith('unread-line'))
    expect(line).toBeGreaterThan(-1)
    expect(order[line + 1]).toMatch(/^message:one/)
    expect(await b.getByTestId('day-separator').first().textContent()).toBe('Today')

    const two = b.getByTestId('message').filter({ hasText: 'two' })
    await messageAction(two, 'reply')
    await b.getByTestId('reply-bar').filter({ hasText: 'two' }).waitFor()
    await say(b, 'about two: yes')
    const quoted = a.getByTestId('message').filter({ hasText: 'about two: yes' })
    await quoted.getByTestId('message-quote').filter({ hasText: 'two' }).waitFor()

    await messageAction(quoted, 'react')
    await quoted.getByTestId('react-👍').click()
    await b.getByTestId('message').filter({ hasText: 'about two: yes' }).getByTestId('reaction').filter({ hasText: '👍 1' }).waitFor()

    const one = b.getByTestId('message').filter({ hasText: 'one' })
    await messageAction(one, 'copy')
    await expect.poll(() => b.evaluate(() => navigator.clipboard.readText())).toBe('one')

    await b.keyboard.press('Control+k')
    await expect.poll(() => b.evaluate(() => document.activeElement?.id)).toBe('message-search')
    await b.locator('body').click({ position: { x: 5, y: 5 } })
    await b.keyboard.press('/')
    await expect.poll(() => b.evaluate(() => document.activeElement?.id)).toBe('composer-input')
  })
})
