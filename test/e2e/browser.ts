import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core'
import { afterAll, afterEach, beforeAll } from 'vitest'
import { startServer, type LocalServer } from './server'

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

/** Debian Chromium, headless, with the flags this closed network needs. */
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']

export function launchBrowser(extraArgs: string[] = []): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: [...ARGS, ...extraArgs] })
}

/** A non-incognito profile in a fresh temporary folder (install criteria need one). */
export function persistentContext(): Promise<BrowserContext> {
  return chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), 'echovalley-profile-')), { executablePath: CHROMIUM_PATH, headless: true, args: ARGS })
}

export async function registerInUi(page: Page, baseUrl: string, handle: string, displayName: string, password = 'e2e-password-1') {
  await page.goto(baseUrl)
  const toggle = page.getByTestId('auth-toggle')
  if (!(await page.getByTestId('auth-display-name').isVisible())) await toggle.click()
  await page.getByTestId('auth-handle').fill(handle)
  await page.getByTestId('auth-display-name').fill(displayName)
  await page.getByTestId('auth-password').fill(password)
  await page.getByTestId('auth-submit').click()
  await page.getByTestId('current-user').filter({ hasText: handle }).waitFor()
}

/** a finds b in People and asks; b accepts. Both end on the Chats tab. */
export async function befriendInUi(a: Page, b: Page, handleB: string) {
  await a.getByTestId('tab-people').click()
  await a.getByTestId('people-search').fill(handleB)
  await a.getByTestId('people-search').press('Enter')
  await a.getByTestId('search-result').filter({ hasText: `@${handleB}` }).getByTestId('send-request').click()
  // Either the confirmation or the panel's error: a refused request fails here with the server's words.
  const sent = a.getByRole('status').filter({ hasText: 'Request sent' })
  const refused = a.getByRole('region', { name: 'People' }).getByRole('alert')
  await sent.or(refused).first().waitFor()
  if (!(await sent.isVisible())) throw new Error(`friend request refused: ${await refused.first().textContent()}`)
  await b.getByTestId('tab-people').click()
  await b.getByTestId('incoming-request').first().getByTestId('accept-request').click()
  await b.getByTestId('friend').first().waitFor()
  await a.getByTestId('friend').first().waitFor()
  await a.getByTestId('tab-chats').click()
  await b.getByTestId('tab-chats').click()
}

/**
 * What a failed test leaves for whoever reads the CI log: whether the server still answers, what
 * each page shows, and the tail of wrangler's output (each request it finished, with its time).
 */
async function reportFailure(server: LocalServer, browser: Browser | undefined) {
  const started = Date.now()
  const live = await fetch(`${server.url}/api/health/live`, { signal: AbortSignal.timeout(5000) }).then((r) => `${r.status}`, (e: Error) => e.name)
  const lines = [`server /api/health/live: ${live} after ${Date.now() - started} ms`]
  for (const page of browser?.contexts().flatMap((c) => c.pages()) ?? []) {
    const text = await page.locator('body').innerText({ timeout: 2000 }).catch((e: Error) => `(unreadable: ${e.message})`)
    lines.push(`page ${page.url()}:\n${text.slice(0, 1500)}`)
  }
  lines.push(`wrangler's last output:\n${server.log().slice(-12_000)}`)
  console.error(lines.join('\n\n'))
}

/** One product server and one browser for a test file, started before and stopped after it. */
export function useProduct(vars?: () => Promise<Record<string, string>> | Record<string, string>) {
  const ctx = {} as { server: LocalServer; browser: Browser }
  beforeAll(async () => {
    ctx.server = await startServer({ vars: vars ? await vars() : undefined })
    ctx.browser = await launchBrowser()
  })
  // Each test's people go when it ends: pages left open keep their sockets, heartbeats and timers
  // running for the rest of the file, an idle load no test means to measure (a late test's first
  // page load has twice timed out at 30 s in the longest file; cause not found).
  afterEach(async ({ task }) => {
    if (task.result?.state === 'fail' && ctx.server) await reportFailure(ctx.server, ctx.browser)
    for (const c of ctx.browser?.contexts() ?? []) await c.close().catch(() => undefined)
  })
  afterAll(async () => {
    await ctx.browser?.close()
    await ctx.server?.stop()
  })
  return ctx
}

/**
 * A tag that makes handles unique per run. Digits only: a base-36 tag once spelled "bo" inside
 * Cy's handle, and a row filtered by the text "Bo" then matched both people.
 */
export function uniqueTag(): string {
  return String(Date.now()).slice(-9) + String(Math.floor(Math.random() * 100)).padStart(2, '0')
}

/** A new person signed up in a browser context of their own. */
export async function newPerson(product: { server: LocalServer; browser: Browser }, handle: string, name: string): Promise<Page> {
  const page = await (await product.browser.newContext()).newPage()
  await registerInUi(page, product.server.url, handle, name)
  return page
}

/** A conversation in the list by its exact title. */
export function conversationItem(page: Page, title: string) {
  return page.getByTestId('conversation-item').filter({ has: page.locator('.title').getByText(title, { exact: true }) })
}

/** Sends a message from the open chat and waits until the server has acknowledged it. */
export async function say(page: Page, text: string) {
  await page.getByTestId('composer-input').fill(text)
  await page.getByTestId('composer-input').press('Enter')
  await page.getByTestId('message').filter({ hasText: text }).and(page.locator('[data-seq]')).waitFor()
}

/** Opens a message's action menu the way a mouse user does (right-click) and picks an item. */
export async function messageAction(message: Locator, item: 'reply' | 'react' | 'copy' | 'edit' | 'recall' | 'info' | 'forward' | 'report') {
  await message.getByTestId('bubble').click({ button: 'right' })
  await message.getByTestId(`message-${item}`).click()
}

/** Recalls a message through its menu and the confirmation. */
export async function recallMessage(page: Page, message: Locator) {
  await messageAction(message, 'recall')
  await page.getByTestId('recall-confirm').click()
}

/** Signs an existing account in on `page` (another device of the same person). */
export async function signInUi(page: Page, baseUrl: string, handle: string, password = 'e2e-password-1') {
  await page.goto(baseUrl)
  if (await page.getByTestId('auth-display-name').isVisible()) await page.getByTestId('auth-toggle').click()
  await page.getByTestId('auth-handle').fill(handle)
  await page.getByTestId('auth-password').fill(password)
  await page.getByTestId('auth-submit').click()
  await page.getByTestId('current-user').waitFor()
}
