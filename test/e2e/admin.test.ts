import AxeBuilder from '@axe-core/playwright'
import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import type { Locator, Page } from 'playwright-core'
import { describe, it } from 'vitest'
import { befriendInUi, conversationItem, messageAction, newPerson, recallMessage, say, uniqueTag, useProduct } from './browser'

const ROOT = path.resolve(import.meta.dirname, '../..')
// Objects hand their metrics over every half second instead of every minute.
const product = useProduct(() => ({ METRICS_MIN_GAP_MS: '500' }))

const person = (handle: string, name: string) => newPerson(product, handle, name)

const conv = conversationItem

async function axeViolations(page: Page) {
  const result = await new AxeBuilder({ page: page as never }).analyze()
  return result.violations.map((v) => ({ id: v.id, nodes: v.nodes.map((n) => n.target.join(' ')) }))
}

/** The headline number a chart's text summary states. */
const chartValue = (page: Page, id: string) => async () => Number(await page.getByTestId(`chart-${id}`).getByTestId('chart-summary').getAttribute('data-value'))

async function report(page: Page, message: Locator, reason: string, note: string) {
  await messageAction(message, 'report')
  await page.getByTestId(`report-reason-${reason}`).check()
  await page.getByTestId('report-note').fill(note)
  await page.getByTestId('report-submit').click()
  await page.getByTestId('report-thanks').filter({ hasText: 'our moderators will review it' }).waitFor()
  await page.getByTestId('report-close').click()
}

describe('administration in the PWA', () => {
  it('an admin made by the CLI watches live metrics, removes a reported message, suspends its sender and sees it all audited', async ({ expect }) => {
    const s = uniqueTag()
    const boss = await person(`boss_${s}`, 'Boss')
    const ann = await person(`ann_${s}`, 'Ann')
    const bo = await person(`bo_${s}`, 'Bo')

    // Not an admin yet: no way in from the Me tab, and the view itself says so and shows nothing.
    await boss.getByTestId('tab-me').click()
    await boss.getByTestId('profile-name').waitFor()
    expect(await boss.getByTestId('open-admin').count()).toBe(0)
    await boss.goto(`${product.server.url}/#/admin`)
    await boss.getByTestId('admin-only').filter({ hasText: 'Only administrators' }).waitFor()
    expect(await boss.getByTestId('metrics').count()).toBe(0)

    const granted = await promisify(execFile)('npm', ['run', 'admin', '--', 'grant', `@boss_${s}`, '--persist-to', product.server.stateDir], { cwd: ROOT, env: { ...process.env, CI: 'true' } })
    expect(granted.stdout).toContain(`@boss_${s} is now an administrator`)

    // Ann and Bo chat; Ann reports two of Bo's messages, and Bo recalls the first.
    await befriendInUi(ann, bo, `bo_${s}`)
    await ann.getByTestId('new-chat-handle').fill(`bo_${s}`)
    await ann.getByTestId('new-chat-submit').click()
    await conv(bo, 'Ann').click()
    await say(ann, 'Hi Bo')
    await say(bo, 'Cheap watches at watches.example')
    await say(bo, 'Answer me or else')
    // By seq: once recalled or removed, the text is gone.
    const bySeq = async (page: Page, text: string) => page.locator(`[data-testid="message"][data-seq="${await page.getByTestId('message').filter({ hasText: text }).getAttribute('data-seq')}"]`)
    const watches = await bySeq(ann, 'Cheap watches')
    const threat = await bySeq(ann, 'Answer me or else')
    const threatForBo = await bySeq(bo, 'Answer me or else')
    await messageAction(threat, 'report')
    expect(await axeViolations(ann)).toEqual([])
    await ann.getByTestId('report-reason-violence').check()
    await ann.getByTestId('report-submit').click()
    await ann.getByTestId('report-thanks').waitFor()
    await ann.getByTestId('report-close').click()
    await report(ann, watches, 'spam', 'sent to everyone')
    await recallMessage(bo, bo.getByTestId('message').filter({ hasText: 'Cheap watches' }))
    await watches.getByTestId('message-recalled').waitFor()

    // The monitoring view, from the Me tab once the page has read /api/me again.
    await boss.goto(product.server.url)
    await boss.getByTestId('tab-me').click()
    await boss.getByTestId('open-admin').click()
    await boss.getByTestId('metrics').waitFor()
    for (const id of ['messages', 'ack', 'sockets', 'pushes', 'errors', 'lag']) await boss.getByTestId(`chart-${id}`).locator('canvas').first().waitFor()
    await expect.poll(chartValue(boss, 'messages'), { timeout: 20_000 }).toBeGreaterThan(0)
    await expect.poll(chartValue(boss, 'sockets'), { timeout: 20_000 }).toBeGreaterThan(0)
    expect(await boss.getByTestId('chart-messages').getByTestId('chart-summary').textContent()).toMatch(/^Messages in the last hour: \d+$/)
    expect(Number(await boss.getByTestId('now-sockets').getAttribute('data-value'))).toBeGreaterThan(0)
    expect(await axeViolations(boss)).toEqual([])
    // On a phone, in the dark: the charts fit the screen and the view still passes axe.
    await boss.setViewportSize({ width: 390, height: 844 })
    await boss.emulateMedia({ colorScheme: 'dark' })
    await expect.poll(async () => (await boss.getByTestId('chart-messages').locator('.uplot').boundingBox())?.width).toBeLessThanOrEqual(390 - 32)
    expect(await axeViolations(boss)).toEqual([])
    await boss.setViewportSize({ width: 1280, height: 720 })
    await boss.emulateMedia({ colorScheme: 'light' })

    // Live: more messages raise the count without a reload.
    const before = await chartValue(boss, 'messages')()
    const loaded = await boss.evaluate(() => performance.timeOrigin)
    for (const text of ['one', 'two', 'three']) await say(ann, `More ${text}`)
    await expect.poll(chartValue(boss, 'messages'), { timeout: 20_000 }).toBeGreaterThanOrEqual(before + 3)
    expect(await boss.evaluate(() => performance.timeOrigin)).toBe(loaded)
    await boss.getByTestId('range-day').click()
    await expect.poll(() => boss.getByTestId('chart-messages').getByTestId('chart-summary').textContent()).toMatch(/^Messages in the last day: [1-9]/)

    // The queue: the recalled message is still there as the moderators' copy.
    await boss.getByTestId('admin-tab-reports').click()
    const spam = boss.getByTestId('report').filter({ hasText: 'Spam' })
    await expect.poll(() => spam.getByTestId('report-message').textContent()).toBe('Cheap watches at watches.example')
    expect(await spam.textContent()).toContain('sent to everyone')
    expect(await spam.textContent()).toContain('Reported by Ann')
    await spam.getByTestId('report-dismiss').click()
    await expect.poll(() => spam.count()).toBe(0)

    // Removing the threat: every member's devices show it removed by a moderator.
    const violence = boss.getByTestId('report').filter({ hasText: 'Violence' })
    expect(await violence.getByTestId('report-message').textContent()).toBe('Answer me or else')
    await violence.getByTestId('report-remove').click()
    await expect.poll(() => violence.count()).toBe(0)
    await threat.getByTestId('message-recalled').filter({ hasText: 'Removed by a moderator' }).waitFor()
    await threatForBo.getByTestId('message-recalled').filter({ hasText: 'Removed by a moderator' }).waitFor()

    // Ann reports Bo himself; suspending him from that report signs him out at once.
    await ann.getByTestId('tab-people').click()
    await ann.getByTestId('friend').filter({ hasText: 'Bo' }).getByTestId('report-user').click()
    await ann.getByTestId('report-reason-harassment').check()
    await ann.getByTestId('report-submit').click()
    await ann.getByTestId('report-thanks').waitFor()
    await ann.getByTestId('report-close').click()
    await boss.getByTestId('reports-closed').click()
    await boss.getByTestId('reports-open').click()
    const harassment = boss.getByTestId('report').filter({ hasText: 'Harassment' })
    await harassment.getByTestId('report-suspend').click()
    await boss.getByTestId('suspend-reason').fill('threatening people')
    await boss.getByTestId('suspend-confirm').click()
    await boss.getByTestId('reports-info').filter({ hasText: 'is suspended; 1 session(s) signed out' }).waitFor()
    await bo.getByTestId('auth-notice').filter({ hasText: 'This account is suspended' }).waitFor({ timeout: 5_000 })
    expect(await bo.getByTestId('current-user').count()).toBe(0)

    // Signing in again is refused, with the moderator's reason.
    await bo.getByTestId('auth-handle').fill(`bo_${s}`)
    await bo.getByTestId('auth-password').fill('e2e-password-1')
    await bo.getByTestId('auth-submit').click()
    await bo.getByTestId('auth-error').filter({ hasText: 'This account is suspended: threatening people' }).waitFor()

    // The closed tab shows what was done; the audit log lists every action, and Unsuspend lets Bo back in.
    await boss.getByTestId('reports-closed').click()
    await expect.poll(() => boss.getByTestId('report').count()).toBe(3)
    await boss.getByTestId('admin-tab-audit').click()
    const actions = () => boss.getByTestId('audit-entry').evaluateAll((els) => els.map((e) => e.getAttribute('data-action')))
    await expect.poll(actions).toEqual(['suspend', 'remove-message', 'dismiss-report', 'grant-admin'])
    expect(await boss.getByTestId('audit-entry').filter({ hasText: 'command line' }).textContent()).toContain(`@boss_${s}`)
    expect(await boss.getByTestId('audit-entry').first().textContent()).toContain('threatening people')
    await boss.getByTestId('audit-unsuspend').click()
    await expect.poll(actions).toEqual(['unsuspend', 'suspend', 'remove-message', 'dismiss-report', 'grant-admin'])
    await bo.getByTestId('auth-submit').click()
    await bo.getByTestId('current-user').filter({ hasText: `bo_${s}` }).waitFor()

    // Someone who is not an admin opening the address sees no data.
    await ann.goto(`${product.server.url}/#/admin`)
    await ann.getByTestId('admin-only').waitFor()
    expect(await ann.getByTestId('chart-messages').count()).toBe(0)
    expect(await ann.getByTestId('report').count()).toBe(0)
  })
})
