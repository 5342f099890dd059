import AxeBuilder from '@axe-core/playwright'
import type { Page } from 'playwright-core'
import { describe, it } from 'vitest'
import { befriendInUi, persistentContext, registerInUi, uniqueTag, useProduct } from './browser'

const product = useProduct()

/** The parts of a service worker's global scope these tests touch. */
interface SwScope {
  PushEvent: new (type: string, init: object) => Event
  NotificationEvent: new (type: string, init: object) => Event
  registration: { getNotifications(): Promise<{ title: string; body: string; tag: string }[]> }
  dispatchEvent(e: Event): boolean
}

async function serviceWorkerReady(page: Page) {
  await page.evaluate(async () => {
    await navigator.serviceWorker.ready
  })
}

async function seriousViolations(page: Page) {
  const result = await new AxeBuilder({ page: page as never }).analyze()
  return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)
}

describe('the installable app', () => {
  it('meets the browser’s install criteria with a service worker in control', async ({ expect }) => {
    // Installability needs a profile on disk: incognito contexts never qualify.
    const context = await persistentContext()
    const page = context.pages()[0] ?? (await context.newPage())
    await page.goto(product.server.url)
    await serviceWorkerReady(page)
    const cdp = await page.context().newCDPSession(page)
    const { installabilityErrors } = (await cdp.send('Page.getInstallabilityErrors')) as { installabilityErrors: { errorId: string }[] }
    expect(installabilityErrors).toEqual([])
    const manifest = await (await page.request.get(`${product.server.url}/manifest.webmanifest`)).json()
    expect(manifest).toMatchObject({ name: 'echovalley', display: 'standalone', start_url: '/' })
    expect(manifest.icons.map((i: { sizes: string; purpose?: string }) => `${i.sizes}${i.purpose ? ` ${i.purpose}` : ''}`)).toEqual(['192x192', '512x512', '512x512 maskable'])
    await context.close()
  })

  it('keeps messages written offline in order, sends them exactly once on reconnect, and opens offline', async ({ expect }) => {
    const s = uniqueTag()
    const aCtx = await product.browser.newContext()
    const a = await aCtx.newPage()
    const b = await (await product.browser.newContext()).newPage()
    await registerInUi(a, product.server.url, `off_${s}`, 'Offline Olga')
    await registerInUi(b, product.server.url, `on_${s}`, 'Online Oscar')
    await befriendInUi(a, b, `on_${s}`)
    await serviceWorkerReady(a)
    await a.getByTestId('new-chat-handle').fill(`on_${s}`)
    await a.getByTestId('new-chat-submit').click()
    await a.getByTestId('composer-input').fill('written online')
    await a.getByTestId('composer-input').press('Enter')
    await a.getByTestId('message').filter({ hasText: 'written online' }).and(a.locator('[data-seq]')).waitFor()

    await aCtx.setOffline(true)
    await a.getByTestId('offline-banner').waitFor()
    for (const text of ['first while offline', 'second while offline', 'third while offline']) {
      await a.getByTestId('composer-input').fill(text)
      await a.getByTestId('composer-input').press('Enter')
    }
    await expect.poll(() => a.locator('[data-testid="message"][data-state="pending"]').count()).toBe(3)

    // A reload while offline: the shell comes from the service worker, the chat from IndexedDB.
    await a.reload()
    await a.getByTestId('message').filter({ hasText: 'written online' }).waitFor()
    await expect.poll(() => a.locator('[data-testid="message"][data-state="pending"]').count()).toBe(3)

    await aCtx.setOffline(false)
    await expect.poll(() => a.locator('[data-testid="message"]:is([data-state="pending"], [data-state="saving"])').count(), { timeout: 20_000 }).toBe(0)
    await b.getByTestId('conversation-item').first().click()
    await b.getByTestId('message').filter({ hasText: 'third while offline' }).waitFor()
    const seen = (await b.getByTestId('message-text').allTextContents()).map((x) => x.trim())
    expect(seen).toEqual(['written online', 'first while offline', 'second while offline', 'third while offline'])
  })

  it('shows a pushed message as a notification and a click opens its conversation', async ({ expect }) => {
    const ctx = await product.browser.newContext()
    await ctx.grantPermissions(['notifications'], { origin: product.server.url })
    const page = await ctx.newPage()
    await registerInUi(page, product.server.url, `push_${uniqueTag()}`, 'Push Pat')
    await serviceWorkerReady(page)
    const sw = ctx.serviceWorkers()[0] ?? (await ctx.waitForEvent('serviceworker'))
    const payload = { conversationId: 'conv_from_push_01', seq: 7, title: 'Ann', body: 'see you at 8' }
    // The push service itself is out of reach here, so the test delivers the push event the browser would.
    const shown = await sw.evaluate(async (data) => {
      const g = self as unknown as SwScope
      g.dispatchEvent(new g.PushEvent('push', { data: JSON.stringify(data) }))
      await new Promise((r) => setTimeout(r, 300))
      const list = await g.registration.getNotifications()
      return list.map((n) => ({ title: n.title, body: n.body, tag: n.tag }))
    }, payload)
    expect(shown).toEqual([{ title: 'Ann', body: 'see you at 8', tag: 'conv_from_push_01' }])
    await sw.evaluate(async () => {
      const g = self as unknown as SwScope
      const [notification] = await g.registration.getNotifications()
      g.dispatchEvent(new g.NotificationEvent('notificationclick', { notification }))
    })
    await expect.poll(() => new URL(page.url()).hash).toBe('#/c/conv_from_push_01')
  })

  it('speaks English or Simplified Chinese: from the browser first, then as chosen', async ({ expect }) => {
    const zh = await (await product.browser.newContext({ locale: 'zh-CN' })).newPage()
    await zh.goto(product.server.url)
    await expect.poll(() => zh.locator('.card .muted').textContent()).toBe('登录你的账户')
    expect(await zh.evaluate(() => document.documentElement.lang)).toBe('zh-CN')
    // Errors from the server read in Chinese too.
    await zh.getByTestId('auth-handle').fill('nobody_here')
    await zh.getByTestId('auth-password').fill('wrong-password')
    await zh.getByTestId('auth-submit').click()
    await expect.poll(() => zh.getByRole('alert').textContent()).toBe('用户名或密码错误')

    const page = await (await product.browser.newContext({ locale: 'en-US' })).newPage()
    await registerInUi(page, product.server.url, `lang_${uniqueTag()}`, 'Lang Lee')
    await expect.poll(() => page.getByTestId('tab-chats').textContent()).toBe('Chats')
    await page.getByTestId('tab-me').click()
    await page.getByTestId('language').selectOption('zh-CN')
    await expect.poll(() => page.getByTestId('tab-chats').textContent()).toBe('聊天')
    await page.reload()
    await expect.poll(() => page.getByTestId('tab-chats').textContent()).toBe('聊天')
  })

  it('has no serious or critical accessibility violations on the main screens', async ({ expect }) => {
    const s = uniqueTag()
    const page = await (await product.browser.newContext()).newPage()
    const friend = await (await product.browser.newContext()).newPage()
    await page.goto(product.server.url)
    await page.getByTestId('auth-handle').waitFor()
    expect(await seriousViolations(page)).toEqual([])
    await registerInUi(page, product.server.url, `a11y_${s}`, 'Ally')
    await registerInUi(friend, product.server.url, `pal_${s}`, 'Pal')
    await befriendInUi(page, friend, `pal_${s}`)
    await page.getByTestId('new-chat-handle').fill(`pal_${s}`)
    await page.getByTestId('new-chat-submit').click()
    await page.getByTestId('composer-input').fill('hello there')
    await page.getByTestId('composer-input').press('Enter')
    await page.getByTestId('message').filter({ hasText: 'hello there' }).waitFor()
    expect(await seriousViolations(page)).toEqual([])
    // The message menu, the recall question, message info, forwarding and the chat menu.
    const mine = page.getByTestId('message').filter({ hasText: 'hello there' })
    await mine.getByTestId('bubble').click({ button: 'right' })
    await mine.getByRole('menu').waitFor()
    expect(await seriousViolations(page)).toEqual([])
    for (const [item, dialog] of [['message-recall', 'recall-dialog'], ['message-info', 'message-info-dialog'], ['message-forward', 'forward-dialog']] as const) {
      if (!(await mine.getByRole('menu').isVisible())) await mine.getByTestId('bubble').click({ button: 'right' })
      await mine.getByTestId(item).click()
      await page.getByTestId(dialog).waitFor()
      expect(await seriousViolations(page), dialog).toEqual([])
      await page.keyboard.press('Escape')
      await page.getByTestId(dialog).waitFor({ state: 'detached' })
    }
    await page.getByTestId('conversation-item').first().click({ button: 'right' })
    await page.getByTestId('action-menu').waitFor()
    expect(await seriousViolations(page)).toEqual([])
    await page.keyboard.press('Escape')
    await page.getByTestId('tab-people').click()
    expect(await seriousViolations(page)).toEqual([])
    await page.getByTestId('tab-me').click()
    await page.getByTestId('session').first().waitFor()
    expect(await seriousViolations(page)).toEqual([])
    // Dark, and on a phone.
    await page.getByTestId('theme').selectOption('dark')
    expect(await seriousViolations(page)).toEqual([])
    await page.setViewportSize({ width: 390, height: 844 })
    // The chat is still open: on a phone it fills the screen.
    await page.getByTestId('composer-input').waitFor()
    expect(await seriousViolations(page)).toEqual([])
    await page.getByTestId('chat-back').click()
    await page.getByTestId('tab-chats').click()
    await page.getByTestId('conversation-item').first().waitFor()
    expect(await seriousViolations(page)).toEqual([])
  })
})

describe('one account in two tabs', () => {
  it('both tabs refreshing at once keep the session (a refresh token is used only once)', async ({ expect }) => {
    const ctx = await product.browser.newContext()
    const one = await ctx.newPage()
    await registerInUi(one, product.server.url, `tabs_${uniqueTag()}`, 'Two Tabs')
    const two = await ctx.newPage()
    await two.goto(product.server.url)
    await two.getByTestId('current-user').waitFor()
    // Each tab's next list request is refused as if its access token had expired, so both refresh together.
    for (const page of [one, two]) {
      let refused = false
      await page.route('**/api/conversations', async (route) => {
        if (!refused && route.request().method() === 'GET') {
          refused = true
          return route.fulfill({ status: 401, contentType: 'application/json', body: JSON.stringify({ error: { code: 'UNAUTHORIZED', message: 'expired' } }) })
        }
        return route.continue()
      })
    }
    await Promise.all([one.reload(), two.reload()])
    await one.waitForTimeout(1500)
    for (const page of [one, two]) {
      // On failure, say what the tab shows instead (signed out, or stuck loading).
      await page.getByTestId('current-user').waitFor({ timeout: 15_000 }).catch(async (e: Error) => {
        throw new Error(`${e.message}\ntab shows: ${await page.evaluate(() => document.body.innerText.slice(0, 300))}`)
      })
      const status = await page.evaluate(async () => {
        const { accessToken } = JSON.parse(localStorage.getItem('echovalley.session')!) as { accessToken: string }
        return (await fetch('/api/me', { headers: { authorization: `Bearer ${accessToken}` } })).status
      })
      expect(status).toBe(200)
    }
    const refresh = await one.evaluate(async () => {
      const { refreshToken } = JSON.parse(localStorage.getItem('echovalley.session')!) as { refreshToken: string }
      return (await fetch('/api/auth/refresh', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refreshToken }) })).status
    })
    expect(refresh).toBe(200)
  })
})

describe('a refresh whose answer is lost', () => {
  it('keeps the session: the retry sends the same token and key, and the server tells it from a replay', async ({ expect }) => {
    const ctx = await product.browser.newContext()
    const page = await ctx.newPage()
    await registerInUi(page, product.server.url, `lost_${uniqueTag()}`, 'Lost Answer')
    const sent: { refreshToken: string; retryKey?: string }[] = []
    // List requests are refused as if the access token had expired until the tab has sent the
    // refresh this step wants (a request of the page being reloaded may take a refusal too).
    let wanted = 1
    await page.route('**/api/conversations', async (route) => {
      if (route.request().method() === 'GET' && sent.length < wanted) {
        return route.fulfill({ status: 401, contentType: 'application/json', body: JSON.stringify({ error: { code: 'UNAUTHORIZED', message: 'expired' } }) })
      }
      return route.continue()
    })
    // The first refresh reaches the server, which rotates the token, and its answer never arrives.
    // The tab's own later tries fail on the way until the step wants the retry: one let through
    // and then cut by the reload below would lose its answer too (seen under load).
    await page.route('**/api/auth/refresh', async (route) => {
      if (sent.length === 1 && wanted < 2) return route.abort('connectionreset')
      sent.push(JSON.parse(route.request().postData() ?? '{}') as (typeof sent)[number])
      if (sent.length > 1) return route.continue()
      expect((await route.fetch()).status()).toBe(200)
      return route.abort('connectionreset')
    })
    const app = page.url()
    await page.reload()
    await expect.poll(() => sent.length, { timeout: 15_000 }).toBe(1)
    // Away from the app before the retry is let through, so no try of the old page is in flight.
    await page.goto('about:blank')
    wanted = 2
    await page.goto(app)
    await expect.poll(() => sent.length, { timeout: 15_000 }).toBe(2)
    expect(sent[1]!.refreshToken).toBe(sent[0]!.refreshToken)
    expect(sent[1]!.retryKey).toMatch(/.{16,}/)
    expect(sent[1]!.retryKey).toBe(sent[0]!.retryKey)
    // Still signed in, on the tokens the retry brought (before, the retry signed the session out).
    await page.getByTestId('current-user').waitFor()
    await expect.poll(() => page.evaluate(() => JSON.parse(localStorage.getItem('echovalley.session') ?? '{}').refreshToken as string | undefined), { timeout: 15_000 }).not.toBe(sent[0]!.refreshToken)
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('echovalley.session')!) as { accessToken: string; retryKey?: string })
    expect(stored.retryKey).toBeUndefined()
    expect(await page.evaluate(async (t) => (await fetch('/api/me', { headers: { authorization: `Bearer ${t}` } })).status, stored.accessToken)).toBe(200)
    await ctx.close()
  })
})
