// Defects a new user found (issue 13): each test here failed on the main of before the fix.
import { readFileSync } from 'node:fs'
import type { BrowserContext, Page } from 'playwright-core'
import { describe, it } from 'vitest'
import { testPng } from '../support/image-fixtures'
import { befriendInUi, launchBrowser, messageAction, registerInUi, say, signInUi, uniqueTag, useProduct } from './browser'

const product = useProduct()
/** A real, decodable PNG of this size. */
const png = (width: number, height: number): Buffer => readFileSync(testPng(width, height))
const IPHONE_UA = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1'

async function pair(prefix: string, bOptions: Parameters<typeof product.browser.newContext>[0] = {}) {
  const s = uniqueTag()
  const aCtx = await product.browser.newContext()
  const bCtx = await product.browser.newContext(bOptions)
  const a = await aCtx.newPage()
  const b = await bCtx.newPage()
  const handles = { a: `${prefix}a_${s}`, b: `${prefix}b_${s}` }
  await registerInUi(a, product.server.url, handles.a, 'Ada')
  await registerInUi(b, product.server.url, handles.b, 'Ben')
  await befriendInUi(a, b, handles.b)
  await a.getByTestId('new-chat-handle').fill(handles.b)
  await a.getByTestId('new-chat-submit').click()
  await a.getByTestId('composer-input').waitFor()
  return { a, b, aCtx, bCtx, handles }
}

/** True when the element's centre is really on top (nothing covers it). */
const onTop = (page: Page, testId: string) =>
  page.getByTestId(testId).evaluate((el) => {
    const r = el.getBoundingClientRect()
    const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)
    return !!hit && (el === hit || el.contains(hit))
  })

/** A touch held in place for `ms`, through the DevTools protocol (what a finger does). */
async function longPress(ctx: BrowserContext, page: Page, x: number, y: number, ms = 700) {
  const cdp = await ctx.newCDPSession(page)
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [{ x, y }] })
  await page.waitForTimeout(ms)
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] })
}

describe('defects a new user found', () => {
  it('iPhone: the install hint is dismissible, remembered, and never covers the chat header', async ({ expect }) => {
    const phone = { viewport: { width: 390, height: 844 }, userAgent: IPHONE_UA, isMobile: true, hasTouch: true }
    const { a, b } = await pair('ios', phone)
    await say(a, 'hi from Ada')
    await b.getByTestId('ios-install').waitFor()
    await b.getByTestId('conversation-item').first().click()
    await b.getByTestId('message').filter({ hasText: 'hi from Ada' }).waitFor()
    // In the chat: Back, the name and presence are there to touch.
    expect(await onTop(b, 'chat-back')).toBe(true)
    await b.getByTestId('chat-back').click()
    await b.getByTestId('ios-install-dismiss').click()
    expect(await b.getByTestId('ios-install').count()).toBe(0)
    await b.reload()
    await b.getByTestId('conversation-item').first().waitFor()
    expect(await b.getByTestId('ios-install').count()).toBe(0)
  })

  it('the list preview and unread count follow edits and recalls at once, and after an offline reload', async ({ expect }) => {
    const { a, b, bCtx } = await pair('prev')
    for (const text of ['first', 'typo', 'secret']) await say(a, text)
    const item = b.getByTestId('conversation-item').first()
    const badge = item.getByTestId('unread-badge')
    await expect.poll(() => badge.textContent()).toBe('3')
    await expect.poll(() => item.locator('.preview').textContent()).toContain('secret')

    await messageAction(a.getByTestId('message').filter({ hasText: 'typo' }), 'edit')
    await a.getByTestId('composer-input').fill('fixed')
    await a.getByTestId('composer-input').press('Enter')
    await a.getByTestId('message').filter({ hasText: 'fixed' }).waitFor()
    // An edit of an older message is no new message: same count, same preview.
    await b.waitForTimeout(500)
    expect(await badge.textContent()).toBe('3')

    await messageAction(a.getByTestId('message').filter({ hasText: 'secret' }), 'recall')
    await a.getByTestId('recall-confirm').click()
    await expect.poll(() => item.locator('.preview').textContent()).toContain('This message was recalled')
    expect(await item.locator('.preview').textContent()).not.toContain('secret')
    await expect.poll(() => badge.textContent()).toBe('2')

    // The newest message edited: the preview follows.
    await say(a, 'tpyo')
    await expect.poll(() => item.locator('.preview').textContent()).toContain('tpyo')
    await messageAction(a.getByTestId('message').filter({ hasText: 'tpyo' }), 'edit')
    await a.getByTestId('composer-input').fill('typo again, fixed')
    await a.getByTestId('composer-input').press('Enter')
    await expect.poll(() => item.locator('.preview').textContent()).toContain('typo again, fixed')
    expect(await badge.textContent()).toBe('3')

    // Offline, after a reload: the cached list says the same.
    await bCtx.setOffline(true)
    await b.reload()
    const cached = b.getByTestId('conversation-item').first()
    await expect.poll(() => cached.locator('.preview').textContent()).toContain('typo again, fixed')
    expect(await cached.getByTestId('unread-badge').textContent()).toBe('3')
    await bCtx.setOffline(false)
  })

  it('a long press (touch) or right-click opens the message menu; it works from the keyboard too', async ({ expect }) => {
    const { a, b, bCtx } = await pair('menu', { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })
    await say(a, 'press and hold me')
    await b.getByTestId('conversation-item').first().click()
    const msg = b.getByTestId('message').filter({ hasText: 'press and hold me' })
    await msg.waitFor()
    const box = (await msg.getByTestId('bubble').boundingBox())!
    await longPress(bCtx, b, box.x + box.width / 2, box.y + box.height / 2)
    const menu = msg.getByRole('menu')
    await menu.waitFor()
    expect(await menu.getByRole('menuitem').allTextContents()).toEqual(expect.arrayContaining(['Reply', 'React', 'Copy']))
    await b.keyboard.press('Escape')
    expect(await menu.count()).toBe(0)

    // Keyboard and screen reader: a named button that says it opens a menu.
    const more = msg.getByRole('button', { name: 'More actions' })
    expect(await more.getAttribute('aria-haspopup')).toBe('menu')
    await more.focus()
    await b.keyboard.press('Enter')
    await menu.waitFor()
    expect(await b.evaluate(() => document.activeElement?.getAttribute('role'))).toBe('menuitem')
    await b.keyboard.press('ArrowDown')
    await b.keyboard.press('Escape')
    expect(await b.evaluate(() => document.activeElement?.getAttribute('data-testid'))).toBe('message-more')

    // Right-click on a desktop.
    const mine = a.getByTestId('message').filter({ hasText: 'press and hold me' })
    await mine.getByTestId('bubble').click({ button: 'right' })
    await mine.getByRole('menu').waitFor()
    expect(await mine.getByTestId('message-recall').count()).toBe(1)
  })

  it('opening a chat lands on the newest message even when images load after the scroll', async ({ expect }) => {
    const { a, b } = await pair('scroll')
    for (let i = 0; i < 25; i++) {
      await a.getByTestId('composer-input').fill(`line ${i}`)
      await a.getByTestId('composer-input').press('Enter')
    }
    await a.getByTestId('message').filter({ hasText: 'line 24' }).and(a.locator('[data-seq]')).waitFor()
    for (const [w, h] of [[300, 900], [320, 640]] as const) {
      await a.getByTestId('attach-input').setInputFiles({ name: `tall-${w}.png`, mimeType: 'image/png', buffer: png(w, h) })
      await expect.poll(() => a.locator('[data-testid="message"][data-seq]').filter({ has: a.getByTestId('image-thumb') }).count(), { timeout: 20_000 }).toBe(w === 300 ? 1 : 2)
    }
    await say(a, 'the very last line')
    // Images answer slowly, as on a phone network.
    await b.route('**/api/media/**', async (route) => {
      await new Promise((r) => setTimeout(r, 800))
      await route.continue()
    })
    await b.getByTestId('conversation-item').first().click()
    await b.getByTestId('message').filter({ hasText: 'the very last line' }).waitFor()
    const imgs = b.getByTestId('image-thumb').locator('img')
    await expect.poll(() => imgs.evaluateAll((els) => els.length > 0 && els.every((e) => (e as HTMLImageElement).complete && (e as HTMLImageElement).naturalWidth > 0)), { timeout: 15_000 }).toBe(true)
    await b.waitForTimeout(300)
    const gap = await b.getByTestId('message-log').evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight)
    expect(gap).toBeLessThan(5)
    expect(await onTop(b, 'composer-input')).toBe(true)
    await b.unroute('**/api/media/**')
  })

  it('edits in place in the composer (Esc cancels) and asks before a recall', async ({ expect }) => {
    const { a } = await pair('edit')
    let prompted = 0
    a.on('dialog', (d) => {
      prompted++
      void d.dismiss()
    })
    const msg = a.getByTestId('message').filter({ hasText: 'helo' })
    await a.getByTestId('composer-input').fill('helo')
    await a.getByTestId('composer-input').press('Enter')
    await msg.and(a.locator('[data-seq]')).waitFor()
    await a.getByTestId('composer-input').fill('half-written draft')

    await messageAction(msg, 'edit')
    await a.getByTestId('edit-bar').waitFor()
    expect(await a.getByTestId('composer-input').inputValue()).toBe('helo')
    await a.keyboard.press('Escape')
    expect(await a.getByTestId('edit-bar').count()).toBe(0)
    expect(await a.getByTestId('composer-input').inputValue()).toBe('half-written draft')

    await messageAction(msg, 'edit')
    await a.getByTestId('composer-input').fill('hello')
    await a.getByTestId('composer-input').press('Enter')
    const edited = a.getByTestId('message').filter({ hasText: 'hello' })
    await edited.locator('.edited').waitFor()
    expect(await a.getByTestId('composer-input').inputValue()).toBe('half-written draft')

    await messageAction(edited, 'recall')
    await a.getByTestId('recall-dialog').waitFor()
    await a.getByTestId('recall-cancel').click()
    expect(await edited.getByTestId('message-recalled').count()).toBe(0)
    await messageAction(edited, 'recall')
    await a.getByTestId('recall-confirm').click()
    await a.getByTestId('message-recalled').waitFor()
    expect(prompted).toBe(0)
  })

  it('a search result scrolls to and marks the message; a new query clears the old results', async ({ expect }) => {
    const { a, b } = await pair('find')
    await say(a, 'the needle is here')
    // Sent back to back (the outbox pipelines them); the last one acked means all are.
    for (let i = 0; i < 40; i++) {
      await a.getByTestId('composer-input').fill(`hay ${i}`)
      await a.getByTestId('composer-input').press('Enter')
    }
    await a.getByTestId('message').filter({ hasText: 'hay 39' }).and(a.locator('[data-seq]')).waitFor()
    await b.getByTestId('message-search').fill('needle')
    await b.getByTestId('message-search').press('Enter')
    // Anywhere on the result opens it, not only its text.
    await b.getByTestId('search-hit').first().click({ position: { x: 250, y: 10 } })
    const target = b.locator('[data-testid="message"][data-highlight="true"]')
    await target.waitFor()
    expect(await target.textContent()).toContain('the needle is here')
    await expect
      .poll(() =>
        target.evaluate((el) => {
          const log = el.closest('[data-testid="message-log"]')!.getBoundingClientRect()
          const r = el.getBoundingClientRect()
          return r.top >= log.top && r.bottom <= log.bottom
        }),
      )
      .toBe(true)

    await b.getByTestId('message-search').fill('nothing like this at all')
    await b.getByTestId('message-search').press('Enter')
    // The old hit is gone at once, before (and after) the new answer.
    expect(await b.getByTestId('search-hit').filter({ hasText: 'needle' }).count()).toBe(0)
    await b.getByText('No messages found.').waitFor()
    expect(await b.getByTestId('search-hit').filter({ hasText: 'needle' }).count()).toBe(0)
  })

  it('the offline banner sits above the chat header on a desktop, not over it', async ({ expect }) => {
    const { a, aCtx } = await pair('off')
    await aCtx.setOffline(true)
    await a.getByTestId('offline-banner').waitFor()
    const banner = (await a.getByTestId('offline-banner').boundingBox())!
    const head = (await a.locator('.chat-head').boundingBox())!
    expect(head.y).toBeGreaterThanOrEqual(banner.y + banner.height - 1)
    expect(await a.locator('.chat-head h2').evaluate((el) => {
      const r = el.getBoundingClientRect()
      const hit = document.elementFromPoint(r.x + 5, r.y + r.height / 2)
      return !!hit && (hit === el || el.contains(hit))
    })).toBe(true)
    await aCtx.setOffline(false)
  })

  it('hides Transcribe when the server has no speech to text', async ({ expect }) => {
    const { a, b, handles } = await pair('stt')
    const caps = await a.evaluate(async () => (await (await fetch('/api/capabilities')).json()) as { transcribe: boolean })
    expect(caps.transcribe).toBe(false)
    // A voice note from Chromium's fake microphone, in a browser that has one.
    const micBrowser = await launchBrowser(['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'])
    try {
      const m = await (await micBrowser.newContext({ permissions: ['microphone'] })).newPage()
      // Ada signs in on a second device.
      await signInUi(m, product.server.url, handles.a)
      await m.getByTestId('conversation-item').first().click()
      await m.getByTestId('record').click()
      await m.getByTestId('recorder').waitFor()
      await expect.poll(() => m.getByTestId('recorder-time').textContent(), { timeout: 10_000 }).toMatch(/0:0[2-9]/)
      await m.getByTestId('recorder-stop').click()
      await m.getByTestId('recorder-send').click()
      await m.locator('[data-testid="message"][data-seq]').filter({ has: m.getByTestId('voice-note') }).waitFor({ timeout: 20_000 })
    } finally {
      await micBrowser.close()
    }
    await b.getByTestId('conversation-item').first().click()
    const note = b.getByTestId('message').filter({ has: b.getByTestId('voice-note') })
    await note.waitFor()
    await b.waitForTimeout(500)
    expect(await note.getByTestId('voice-transcribe').count()).toBe(0)
  })

  it('others see the avatar a person set, in the list and the chat header', async ({ expect }) => {
    const { a, b } = await pair('av')
    await say(a, 'look at my picture')
    await a.getByTestId('tab-me').click()
    await a.locator('input[type="file"][accept^="image/"]').setInputFiles({ name: 'me.png', mimeType: 'image/png', buffer: png(64, 64) })
    await a.locator('img.avatar-large').waitFor()
    await b.reload()
    const item = b.getByTestId('conversation-item').first()
    await expect.poll(() => item.getByTestId('avatar-image').evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth)).toBe(64)
    await item.click()
    await expect.poll(() => b.locator('.chat-head').getByTestId('avatar-image').count()).toBe(1)
  })

  it('message info shows who read and who only received a group message', async ({ expect }) => {
    const s = uniqueTag()
    const pages: Page[] = []
    for (const name of ['Ada', 'Ben', 'Cy']) {
      const p = await (await product.browser.newContext()).newPage()
      await registerInUi(p, product.server.url, `info${name.toLowerCase()}_${s}`, name)
      pages.push(p)
    }
    const [a, b, c] = pages as [Page, Page, Page]
    await befriendInUi(a, b, `infoben_${s}`)
    await befriendInUi(a, c, `infocy_${s}`)
    await a.getByTestId('new-group').click()
    await a.getByTestId('group-title').fill('Trio')
    await a.getByTestId('group-member').first().check()
    await a.getByTestId('group-member').nth(1).check()
    await a.getByTestId('group-create').click()
    await a.getByTestId('composer-input').waitFor()
    await say(a, 'who has seen this?')
    await b.getByTestId('conversation-item').filter({ hasText: 'Trio' }).click()
    await b.getByTestId('message').filter({ hasText: 'who has seen this?' }).waitFor()
    const mine = a.getByTestId('message').filter({ hasText: 'who has seen this?' })
    await mine.getByTestId('read-by').waitFor()
    expect(await mine.getByTestId('read-by').textContent()).toBe('Read by 1')
    await mine.getByTestId('read-by').click()
    const dialog = a.getByTestId('message-info-dialog')
    await dialog.waitFor()
    expect(await dialog.getByTestId('info-readBy').textContent()).toContain('Ben')
    expect(await dialog.getByTestId('info-readBy').textContent()).not.toContain('Cy')
    // Cy is signed in with the app open, so it was delivered, not read.
    await expect.poll(async () => (await dialog.getByTestId('info-deliveredTo').textContent()) ?? '').toContain('Cy')
    void c
  })

  it('presence speaks Chinese, a friend is no longer offered "Add", and opening a new chat logs no clone error', async ({ expect }) => {
    const s = uniqueTag()
    const aCtx = await product.browser.newContext({ locale: 'zh-CN' })
    const a = await aCtx.newPage()
    const b = await (await product.browser.newContext()).newPage()
    const errors: string[] = []
    a.on('console', (m) => m.type() !== 'log' && errors.push(m.text()))
    a.on('pageerror', (e) => errors.push(String(e)))
    await a.addInitScript(() => localStorage.setItem('echovalley.locale', 'zh-CN'))
    await registerInUi(a, product.server.url, `zha_${s}`, 'Ada')
    await registerInUi(b, product.server.url, `zhb_${s}`, 'Ben')
    // befriendInUi waits for English text; do it by hand in Chinese.
    await a.getByTestId('tab-people').click()
    await a.getByTestId('people-search').fill(`zhb_${s}`)
    await a.getByTestId('people-search').press('Enter')
    await a.getByTestId('search-result').getByTestId('send-request').click()
    await b.getByTestId('tab-people').click()
    await b.getByTestId('incoming-request').first().getByTestId('accept-request').click()
    await a.getByTestId('friend').first().waitFor()
    // The same search again: a friend now, so no "Add".
    await a.getByTestId('people-search').press('Enter')
    await a.getByTestId('search-result').getByTestId('already-friends').waitFor()
    expect(await a.getByTestId('search-result').getByTestId('send-request').count()).toBe(0)

    await a.getByTestId('tab-chats').click()
    await a.getByTestId('new-chat-handle').fill(`zhb_${s}`)
    await a.getByTestId('new-chat-submit').click()
    await expect.poll(() => a.getByTestId('chat-subtitle').textContent()).toMatch(/在线|离线/)
    expect(await a.getByTestId('chat-subtitle').textContent()).not.toMatch(/online|offline|last seen/)
    await a.waitForTimeout(300)
    expect(errors.filter((e) => /could not be cloned|DataCloneError/.test(e))).toEqual([])
  })

  it('buttons are icons that render without an emoji font, each with a name', async ({ expect }) => {
    const { a } = await pair('icon')
    for (const id of ['attach', 'record']) {
      const button = a.getByTestId(id)
      expect(await button.locator('svg').count()).toBe(1)
      expect(await button.getAttribute('aria-label')).toBeTruthy()
      expect((await button.textContent())!.trim()).toBe('')
    }
  })
})
