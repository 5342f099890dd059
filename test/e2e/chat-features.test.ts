// The everyday features of issue 13, driven through the PWA in Chromium.
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { Page } from 'playwright-core'
import { afterAll, describe, it } from 'vitest'
import { linkSite } from '../support/link-site'
import { testPng } from '../support/image-fixtures'
import { befriendInUi, messageAction, registerInUi, say, signInUi, uniqueTag, useProduct } from './browser'

// The link-preview fixture site on loopback; the server may fetch it (LINK_PREVIEW_ALLOW), nothing else private.
let site: Server
const siteUrl = () => `http://127.0.0.1:${(site.address() as { port: number }).port}`
const product = useProduct(async () => {
  site = createServer(async (req, res) => {
    const r = linkSite(new URL(req.url ?? '/', 'http://x').pathname)
    if (!r) return void res.writeHead(404).end()
    const headers: Record<string, string> = {}
    r.headers.forEach((v, k) => (headers[k] = v))
    res.writeHead(r.status, headers)
    res.end(Buffer.from(await r.arrayBuffer()))
  })
  await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve))
  return { LINK_PREVIEW_ALLOW: new URL(siteUrl()).host }
})
afterAll(() => site?.close())

async function person(name: string, s: string) {
  const ctx = await product.browser.newContext()
  const page = await ctx.newPage()
  await registerInUi(page, product.server.url, `${name.toLowerCase()}_${s}`, name)
  return { page, ctx, handle: `${name.toLowerCase()}_${s}` }
}

async function chatWith(page: Page, handle: string) {
  await page.getByTestId('tab-chats').click()
  await page.getByTestId('new-chat-handle').fill(handle)
  await page.getByTestId('new-chat-submit').click()
  // The form empties once the chat is open; the composer may still be the previous chat's.
  await page.waitForFunction(() => (document.getElementById('new-chat-handle') as HTMLInputElement | null)?.value === '')
  await page.getByTestId('composer-input').waitFor()
}

/** Three people; the first is friends with the other two. */
async function trio(names: [string, string, string]) {
  const s = uniqueTag()
  const [a, b, c] = [await person(names[0], s), await person(names[1], s), await person(names[2], s)]
  await befriendInUi(a.page, b.page, b.handle)
  await befriendInUi(a.page, c.page, c.handle)
  return { a, b, c }
}

/** Two friends; the first has their chat open. */
async function pairInChat(names: [string, string]) {
  const s = uniqueTag()
  const [a, b] = [await person(names[0], s), await person(names[1], s)]
  await befriendInUi(a.page, b.page, b.handle)
  await chatWith(a.page, b.handle)
  return { a, b }
}

const item = (page: Page, title: string) => page.getByTestId('conversation-item').filter({ has: page.locator('.title').getByText(title, { exact: true }) })

describe('everyday chat features', () => {
  it('links are clickable and safe, with a preview card the Worker fetched', async ({ expect }) => {
    const { a, b } = await pairInChat(['Lia', 'Max'])
    const url = `${siteUrl()}/article`
    await say(a.page, `read ${url}. <b>not bold</b> javascript:alert(1)`)
    await item(b.page, 'Lia').click()
    const text = b.page.getByTestId('message').filter({ hasText: 'not bold' }).getByTestId('message-text')
    await text.waitFor()
    const links = text.locator('a')
    expect(await links.count()).toBe(1)
    expect(await links.getAttribute('href')).toBe(url)
    expect(await links.getAttribute('target')).toBe('_blank')
    expect(await links.getAttribute('rel')).toBe('noopener noreferrer')
    expect(await text.locator('b').count()).toBe(0)
    expect(await text.textContent()).toContain('<b>not bold</b>')
    const card = b.page.getByTestId('message').filter({ hasText: 'not bold' }).getByTestId('link-card')
    await card.waitFor()
    expect(await card.getByTestId('link-card-title').textContent()).toBe('A river of echoes')
    expect(await card.getByTestId('link-card-description').textContent()).toContain('valley')
    await expect.poll(() => card.locator('img').evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth)).toBe(16)
  })

  it('lists devices, signs one out, and a password change signs out the others', async ({ expect }) => {
    const s = uniqueTag()
    const a = await person('Dev', s)
    const other = await (await product.browser.newContext()).newPage()
    await signInUi(other, product.server.url, a.handle)

    await a.page.getByTestId('tab-me').click()
    await expect.poll(() => a.page.getByTestId('session').count()).toBe(2)
    expect(await a.page.getByTestId('this-device').count()).toBe(1)
    expect(await a.page.getByTestId('sessions').textContent()).toContain('Chrome on Linux')
    await a.page.getByTestId('session').filter({ hasNot: a.page.getByTestId('this-device') }).getByTestId('session-revoke').click()
    await expect.poll(() => a.page.getByTestId('session').count()).toBe(1)
    // The other device is out as soon as it next talks to the server.
    await other.reload()
    await other.getByTestId('auth-submit').waitFor()

    await signInUi(other, product.server.url, a.handle)
    await a.page.getByTestId('current-password').fill('e2e-password-1')
    await a.page.getByTestId('new-password').fill('a-brand-new-password')
    await a.page.getByTestId('change-password').click()
    await expect.poll(() => a.page.getByTestId('devices-info').textContent()).toContain('1 other device')
    await other.reload()
    await other.getByTestId('auth-submit').waitFor()
    await signInUi(other, product.server.url, a.handle, 'a-brand-new-password')
  })

  it('mutes, pins and archives conversations, kept on the server', async ({ expect }) => {
    const { a, b, c } = await trio(['Pam', 'Bea', 'Cal'])
    await chatWith(b.page, a.handle)
    await say(b.page, 'from Bea')
    await chatWith(c.page, a.handle)
    await say(c.page, 'from Cal')
    await item(a.page, 'Cal').waitFor()
    const titles = () => a.page.locator('[data-testid="conversation-item"] .title').allTextContents()
    // Newest first: Cal, then Bea. Pin Bea: Bea first, even after Cal writes again.
    await expect.poll(titles).toEqual(['Cal', 'Bea'])
    await item(a.page, 'Bea').click({ button: 'right' })
    await a.page.getByTestId('conv-pin').click()
    await expect.poll(titles).toEqual(['Bea', 'Cal'])
    await say(c.page, 'Cal again')
    await a.page.waitForTimeout(500)
    expect(await titles()).toEqual(['Bea', 'Cal'])
    await item(a.page, 'Bea').getByTestId('pinned-icon').waitFor()

    // Mute Cal always: a bell-off mark and a quiet badge.
    const calRow = a.page.locator('.conversation-row').filter({ has: item(a.page, 'Cal') })
    await calRow.getByTestId('conversation-options').click()
    await a.page.getByTestId('conv-mute-always').click()
    await calRow.getByTestId('muted-icon').waitFor()
    await say(c.page, 'quiet please')
    await expect.poll(() => calRow.getByTestId('unread-badge').getAttribute('class')).toContain('quiet')

    // Archive Cal: out of the list, into Archived.
    await calRow.getByTestId('conversation-options').click()
    await a.page.getByTestId('conv-archive').click()
    await expect.poll(titles).toEqual(['Bea'])
    expect(await a.page.getByTestId('show-archived').textContent()).toBe('Archived (1)')

    // All of it is on the server: a reload shows the same.
    await a.page.reload()
    await expect.poll(titles).toEqual(['Bea'])
    await item(a.page, 'Bea').getByTestId('pinned-icon').waitFor()
    await a.page.getByTestId('show-archived').click()
    await expect.poll(titles).toEqual(['Cal'])
    await calRow.getByTestId('muted-icon').waitFor()
    await calRow.getByTestId('conversation-options').click()
    await a.page.getByTestId('conv-unarchive').click()
    await a.page.getByTestId('hide-archived').click()
    await expect.poll(async () => (await titles()).sort()).toEqual(['Bea', 'Cal'])
  })

  it('forwards text and a photo to other chats without uploading the photo again', async ({ expect }) => {
    const { a, b, c } = await trio(['Fay', 'Gus', 'Hal'])
    await chatWith(a.page, c.handle)
    await chatWith(b.page, a.handle)
    await say(b.page, 'worth passing on')
    const photo = testPng(640, 480)
    await b.page.getByTestId('attach-input').setInputFiles(photo)
    await b.page.locator('[data-testid="message"][data-seq]').filter({ has: b.page.getByTestId('image-thumb') }).waitFor()

    await item(a.page, 'Gus').click()
    const uploads: string[] = []
    a.page.on('request', (r) => {
      if (r.url().includes('/api/uploads')) uploads.push(r.method())
    })
    const text = a.page.getByTestId('message').filter({ hasText: 'worth passing on' })
    await messageAction(text, 'forward')
    await a.page.getByTestId('forward-dialog').getByText('Hal').click()
    await a.page.getByTestId('forward-send').click()
    const image = a.page.locator('[data-testid="message"][data-seq]').filter({ has: a.page.getByTestId('image-thumb') })
    await messageAction(image, 'forward')
    await a.page.getByTestId('forward-dialog').getByText('Hal').click()
    await a.page.getByTestId('forward-send').click()

    await item(c.page, 'Fay').click()
    const fwdText = c.page.getByTestId('message').filter({ hasText: 'worth passing on' })
    await fwdText.getByTestId('forwarded').waitFor()
    const fwdImage = c.page.getByTestId('message').filter({ has: c.page.getByTestId('image-thumb') })
    await fwdImage.getByTestId('forwarded').waitFor()
    await expect.poll(() => fwdImage.locator('img').evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth), { timeout: 15_000 }).toBeGreaterThan(0)
    expect(uploads).toEqual([])
    expect(readFileSync(photo).length).toBeGreaterThan(1000)
  })

  it('keeps a draft per conversation across switches and reloads; paste and drop attach files', async ({ expect }) => {
    const { a, b, c } = await trio(['Ida', 'Jon', 'Kit'])
    await chatWith(a.page, b.handle)
    await chatWith(a.page, c.handle)
    const input = a.page.getByTestId('composer-input')
    await item(a.page, 'Jon').click()
    await input.fill('half a thought for Jon')
    await item(a.page, 'Kit').click()
    await expect.poll(() => input.inputValue()).toBe('')
    await input.fill('note to Kit')
    await item(a.page, 'Jon').click()
    await expect.poll(() => input.inputValue()).toBe('half a thought for Jon')
    await a.page.waitForTimeout(500)
    await a.page.reload()
    await item(a.page, 'Kit').click()
    await expect.poll(() => input.inputValue()).toBe('note to Kit')
    // Sending empties the draft for good.
    await input.press('Enter')
    await a.page.getByTestId('message').filter({ hasText: 'note to Kit' }).and(a.page.locator('[data-seq]')).waitFor()
    await a.page.waitForTimeout(500)
    await a.page.reload()
    await item(a.page, 'Kit').click()
    await a.page.getByTestId('message').filter({ hasText: 'note to Kit' }).waitFor()
    expect(await input.inputValue()).toBe('')

    // A file dropped on the chat, and one pasted into the composer.
    const drop = await a.page.evaluateHandle(() => {
      const dt = new DataTransfer()
      dt.items.add(new File(['dropped bytes\n'], 'dropped.txt', { type: 'text/plain' }))
      return dt
    })
    await a.page.locator('section.chat').dispatchEvent('dragover', { dataTransfer: drop })
    await a.page.locator('section.chat').dispatchEvent('drop', { dataTransfer: drop })
    await a.page.locator('[data-testid="message"][data-seq]').filter({ hasText: 'dropped.txt' }).waitFor({ timeout: 20_000 })
    await input.focus()
    await a.page.evaluate(() => {
      const dt = new DataTransfer()
      dt.items.add(new File(['pasted bytes\n'], 'pasted.txt', { type: 'text/plain' }))
      document.getElementById('composer-input')!.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }))
    })
    await a.page.locator('[data-testid="message"][data-seq]').filter({ hasText: 'pasted.txt' }).waitFor({ timeout: 20_000 })
  })

  it('on a phone: a long press on a chat opens its menu (pin, mute) without opening it; forwarding fits the screen', async ({ expect }) => {
    const s = uniqueTag()
    const phoneCtx = await product.browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })
    const phone = await phoneCtx.newPage()
    await registerInUi(phone, product.server.url, `ph_${s}`, 'Pho')
    const b = await person('Qin', s)
    await befriendInUi(phone, b.page, b.handle)
    await chatWith(b.page, 'ph_' + s)
    await say(b.page, 'forward me, phone')
    const row = item(phone, 'Qin')
    await row.waitFor()
    const box = (await row.boundingBox())!
    const cdp = await phoneCtx.newCDPSession(phone)
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [{ x: box.x + box.width / 2, y: box.y + box.height / 2 }] })
    await phone.waitForTimeout(700)
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] })
    await phone.getByTestId('conv-pin').click()
    await row.getByTestId('pinned-icon').waitFor()
    // The press did not open the chat.
    expect(await phone.getByTestId('composer-input').count()).toBe(0)

    await row.click()
    const msg = phone.getByTestId('message').filter({ hasText: 'forward me, phone' })
    await msg.waitFor()
    const mb = (await msg.getByTestId('bubble').boundingBox())!
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [{ x: mb.x + mb.width / 2, y: mb.y + mb.height / 2 }] })
    await phone.waitForTimeout(700)
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] })
    await msg.getByTestId('message-forward').click()
    const dialog = phone.getByTestId('forward-dialog')
    await dialog.waitFor()
    const d = (await dialog.boundingBox())!
    expect(d.x).toBeGreaterThanOrEqual(0)
    expect(d.x + d.width).toBeLessThanOrEqual(390)
    await phone.keyboard.press('Escape')
  })

  it('switches theme (system, light, dark) and keeps it on this device', async ({ expect }) => {
    const s = uniqueTag()
    const a = await person('Theo', s)
    const bg = () => a.page.evaluate(() => getComputedStyle(document.body).backgroundColor)
    await a.page.emulateMedia({ colorScheme: 'light' })
    expect(await bg()).toBe('rgb(255, 255, 255)')
    await a.page.getByTestId('tab-me').click()
    await a.page.getByTestId('theme').selectOption('dark')
    expect(await a.page.evaluate(() => document.documentElement.dataset.theme)).toBe('dark')
    expect(await bg()).toBe('rgb(15, 21, 20)')
    await a.page.reload()
    await a.page.getByTestId('current-user').waitFor()
    expect(await bg()).toBe('rgb(15, 21, 20)')
    // Back to the system's choice, which follows the system.
    await a.page.getByTestId('tab-me').click()
    await a.page.getByTestId('theme').selectOption('system')
    expect(await a.page.evaluate(() => document.documentElement.dataset.theme)).toBeUndefined()
    await a.page.emulateMedia({ colorScheme: 'dark' })
    expect(await bg()).toBe('rgb(15, 21, 20)')
    await a.page.getByTestId('theme').selectOption('light')
    expect(await bg()).toBe('rgb(255, 255, 255)')
  })

  it('sets how long a chat keeps its messages; both people see the change in the chat', async ({ expect }) => {
    const { a, b } = await pairInChat(['Ren', 'Sol'])
    await a.page.getByTestId('group-info-toggle').click()
    const select = a.page.getByTestId('retention-select')
    expect(await select.inputValue()).toBe('default')
    await select.selectOption('7')
    await a.page.getByTestId('message-log').getByText('You set messages to be kept for 7 days').waitFor()
    await chatWith(b.page, a.handle)
    await b.page.getByTestId('message-log').getByText('Ren set messages to be kept for 7 days').waitFor()
    await b.page.getByTestId('group-info-toggle').click()
    await expect.poll(() => b.page.getByTestId('retention-select').inputValue()).toBe('7')
    // Back to the default, from the other side.
    await b.page.getByTestId('retention-select').selectOption('default')
    await a.page.getByTestId('message-log').getByText('Sol set how long messages are kept back to the default').waitFor()
    await expect.poll(() => select.inputValue()).toBe('default')
  })
})
