// Issue 12 in the browser: the app's pages carry security headers and still work under them
// (service worker, media); a 429 reads as a wait in the person's language.
import type { Page } from 'playwright-core'
import { afterAll, describe, it } from 'vitest'
import { testPng } from '../support/image-fixtures'
import { befriendInUi, launchBrowser, registerInUi, uniqueTag, useProduct } from './browser'
import { startServer } from './server'

const product = useProduct()

/** Collects CSP violations and CSP console errors from the first script on. */
async function watchCsp(page: Page): Promise<() => Promise<string[]>> {
  const console: string[] = []
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) console.push(m.text())
  })
  await page.addInitScript(() => {
    const w = window as unknown as { __csp: string[] }
    w.__csp = []
    document.addEventListener('securitypolicyviolation', (e) => w.__csp.push(`${e.violatedDirective} ${e.blockedURI}`))
  })
  return async () => [...console, ...(await page.evaluate(() => (window as unknown as { __csp: string[] }).__csp))]
}

describe('security headers', () => {
  it('every page forbids inline script and framing, and the whole app works under that policy', async ({ expect }) => {
    const url = product.server.url
    for (const p of ['/', '/index.html', '/chats/some-deep-link', '/manifest.webmanifest', '/sw.js']) {
      const res = await fetch(`${url}${p}`)
      expect(res.status, p).toBe(200)
      const csp = res.headers.get('content-security-policy') ?? ''
      expect(csp, p).toContain("frame-ancestors 'none'")
      expect(csp, p).toMatch(/script-src 'self'(;|$)/)
      expect(res.headers.get('x-content-type-options'), p).toBe('nosniff')
    }
    expect((await fetch(`${url}/`)).headers.get('content-security-policy')).not.toMatch(/script-src[^;]*unsafe-inline/)

    const suffix = uniqueTag()
    const a = await (await product.browser.newContext()).newPage()
    const b = await (await product.browser.newContext()).newPage()
    const violationsA = await watchCsp(a)
    const violationsB = await watchCsp(b)
    await registerInUi(a, url, `csp_a_${suffix}`, 'Ada')
    await registerInUi(b, url, `csp_b_${suffix}`, 'Bea')
    await a.evaluate(() => navigator.serviceWorker.ready.then(() => true))
    await befriendInUi(a, b, `csp_b_${suffix}`)
    await a.getByTestId('new-chat-handle').fill(`csp_b_${suffix}`)
    await a.getByTestId('new-chat-submit').click()
    await a.getByTestId('composer-input').fill('under the policy')
    await a.getByTestId('composer-input').press('Enter')
    const png = testPng(640, 480)
    await a.getByTestId('attach-input').setInputFiles(png)
    await b.getByTestId('conversation-item').first().click()
    await b.getByTestId('message').filter({ hasText: 'under the policy' }).waitFor()
    const img = b.getByTestId('image-thumb').locator('img')
    await img.waitFor({ timeout: 20_000 })
    await expect.poll(() => img.evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth)).toBeGreaterThan(0)
    // The service worker still takes control after a reload.
    await b.reload()
    await expect.poll(() => b.evaluate(() => !!navigator.serviceWorker.controller)).toBe(true)
    expect(await violationsA()).toEqual([])
    expect(await violationsB()).toEqual([])

    // Framed by another page, the app does not render.
    const framer = await (await product.browser.newContext()).newPage()
    await framer.setContent(`<iframe id="f" src="${url}/" width="400" height="400"></iframe>`)
    await framer.waitForTimeout(1500)
    const framed = framer.frames().find((f) => f !== framer.mainFrame())
    expect(framed ? await framed.locator('[data-testid="auth-handle"]').count().catch(() => 0) : 0).toBe(0)
  })
})

describe('rate limits in the app', () => {
  const strict = startServer({ vars: { REGISTER_RATE: '1/1' } })
  afterAll(async () => (await strict).stop())

  it('a refused sign-up says how long to wait, in English and in Chinese', { timeout: 120_000 }, async ({ expect }) => {
    const server = await strict
    const browser = await launchBrowser()
    try {
      const suffix = uniqueTag()
      const first = await (await browser.newContext({ locale: 'en-US' })).newPage()
      await registerInUi(first, server.url, `first_${suffix}`, 'First')
      const attempt = async (locale: string, handle: string) => {
        const page = await (await browser.newContext({ locale })).newPage()
        await page.goto(server.url)
        if (!(await page.getByTestId('auth-display-name').isVisible())) await page.getByTestId('auth-toggle').click()
        await page.getByTestId('auth-handle').fill(handle)
        await page.getByTestId('auth-display-name').fill('Late')
        await page.getByTestId('auth-password').fill('e2e-password-1')
        await page.getByTestId('auth-submit').click()
        return (await page.getByRole('alert').first().textContent({ timeout: 10_000 })) ?? ''
      }
      expect(await attempt('en-US', `second_${suffix}`)).toMatch(/^Too many attempts\. Try again in \d{3,4} s\.$/)
      expect(await attempt('zh-CN', `third_${suffix}`)).toMatch(/^尝试次数过多，请在 \d{3,4} 秒后重试。$/)
    } finally {
      await browser.close()
    }
  })
})
