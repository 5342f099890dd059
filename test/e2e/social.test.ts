import type { Page } from 'playwright-core'
import { describe, it } from 'vitest'
import { befriendInUi, conversationItem, newPerson, say, uniqueTag, useProduct } from './browser'

const product = useProduct()

const person = (handle: string, name: string) => newPerson(product, handle, name)

const conv = conversationItem

/** Ann, Bo and Cy, handles ending in `${suffix}_${s}`; Bo and Cy are Ann's friends. */
async function annAndFriends(suffix: string) {
  const s = uniqueTag()
  const ann = await person(`ann${suffix}_${s}`, 'Ann')
  const bo = await person(`bo${suffix}_${s}`, 'Bo')
  const cy = await person(`cy${suffix}_${s}`, 'Cy')
  await befriendInUi(ann, bo, `bo${suffix}_${s}`)
  await befriendInUi(ann, cy, `cy${suffix}_${s}`)
  return { ann, bo, cy, s }
}

describe('people, groups, unread, presence and search in the PWA', () => {
  it('befriends, sees presence and typing, runs a group, counts unread, searches, removes and blocks', async ({ expect }) => {
    const { ann, bo, cy, s } = await annAndFriends('')

    // Presence: Bo is online, as Ann's friend list shows.
    await ann.getByTestId('tab-people').click()
    await expect.poll(() => ann.getByTestId('friend').filter({ hasText: 'Bo' }).getByTestId('presence').textContent()).toBe('online')
    await ann.getByTestId('tab-chats').click()

    // Typing in a direct chat.
    await ann.getByTestId('new-chat-handle').fill(`bo_${s}`)
    await ann.getByTestId('new-chat-submit').click()
    await expect.poll(() => ann.getByTestId('chat-subtitle').textContent()).toBe('online')
    await conv(bo, 'Ann').click()
    await bo.getByTestId('composer-input').pressSequentially('hel')
    await ann.getByTestId('typing').filter({ hasText: 'Bo typing' }).waitFor()

    // A group: created by Ann, appears live for Bo and Cy with a system line.
    await ann.getByTestId('new-group').click()
    await ann.getByTestId('group-title').fill('Trip to Lisbon')
    await ann.getByTestId('group-member').nth(0).check()
    await ann.getByTestId('group-member').nth(1).check()
    await ann.getByTestId('group-create').click()
    await ann.getByTestId('system-line').filter({ hasText: 'You added' }).waitFor()
    await conv(cy, 'Trip to Lisbon').waitFor()

    // Unread: Cy writes while Ann reads the direct chat; the group shows a badge until opened.
    await conv(ann, 'Bo').click()
    await conv(cy, 'Trip to Lisbon').click()
    await say(cy, 'Do not forget your passport')
    const groupItem = conv(ann, 'Trip to Lisbon')
    await expect.poll(() => groupItem.getByTestId('unread-badge').textContent()).toBe('1')
    await groupItem.click()
    await ann.getByTestId('message').filter({ hasText: 'passport' }).waitFor()
    await expect.poll(() => groupItem.getByTestId('unread-badge').count()).toBe(0)

    // Search finds the message and opens its conversation.
    await conv(ann, 'Bo').click()
    await ann.getByTestId('message-search').fill('passport')
    await ann.getByTestId('message-search').press('Enter')
    await ann.getByTestId('search-hit').filter({ hasText: 'Do not forget your passport' }).click()
    await expect.poll(() => ann.locator('.chat-head h2').textContent()).toBe('Trip to Lisbon')

    // History by date: today's messages of this conversation.
    await ann.getByTestId('history-date-toggle').click()
    await ann.getByTestId('history-day').fill(await ann.evaluate(() => new Date().toLocaleDateString('en-CA')))
    await ann.getByTestId('history-show').click()
    await ann.getByTestId('history-results').filter({ hasText: 'Do not forget your passport' }).waitFor().catch(async (e: Error) => {
      // What the form showed instead (this step failed in some full runs and never alone).
      throw new Error(`${e.message}\nday=${await ann.getByTestId('history-day').inputValue()} alerts=${JSON.stringify(await ann.getByRole('alert').allTextContents())} results=${JSON.stringify(await ann.getByTestId('history-results').allTextContents())}`)
    })
    await ann.getByTestId('history-date-toggle').click()

    // Ann removes Cy; the group leaves Cy's list.
    await ann.getByTestId('group-info-toggle').click()
    await ann.getByTestId('group-member-row').filter({ hasText: 'Cy' }).getByTestId('remove-member').click()
    await ann.getByTestId('system-line').filter({ hasText: 'removed Cy' }).waitFor()
    await cy.getByTestId('system-line').filter({ hasText: 'removed You' }).waitFor()
    // Once the member list no longer holds Cy, the history still names her, and after a reload too.
    await expect.poll(() => ann.getByTestId('chat-subtitle').textContent()).toBe('2 members')
    const namesCy = async () => {
      await ann.getByTestId('system-line').filter({ hasText: 'You removed Cy' }).waitFor()
      expect(await ann.getByTestId('message').filter({ hasText: 'passport' }).getByText('Cy', { exact: true }).count()).toBe(1)
    }
    await namesCy()
    await ann.reload()
    await namesCy()
    await expect.poll(() => conv(cy, 'Trip to Lisbon').count()).toBe(0)

    // Bo blocks Ann: she is gone from Bo's friends, and Ann's next message is refused.
    await bo.getByTestId('tab-people').click()
    bo.once('dialog', (d) => void d.accept())
    await bo.getByTestId('friend').filter({ hasText: 'Ann' }).getByTestId('block').click()
    await expect.poll(() => bo.getByTestId('friend').count()).toBe(0)
    await conv(ann, 'Bo').click()
    await ann.getByTestId('composer-input').fill('hello?')
    await ann.getByTestId('composer-input').press('Enter')
    await expect.poll(() => ann.getByTestId('message').filter({ hasText: 'hello?' }).getAttribute('data-state')).toBe('failed')
  })
})

describe('the conversation list', () => {
  it('a list answer older than what arrived live keeps the newer badge and preview', async ({ expect }) => {
    const { ann, bo, cy, s } = await annAndFriends('3')
    await bo.getByTestId('new-chat-handle').fill(`ann3_${s}`)
    await bo.getByTestId('new-chat-submit').click()
    await say(bo, 'first news')
    const boItem = conv(ann, 'Bo')
    await expect.poll(() => boItem.getByTestId('unread-badge').textContent()).toBe('1')

    // Ann's next list answer is taken from the server now and handed to her page later.
    let release!: () => void
    const released = new Promise<void>((r) => (release = r))
    let answered!: () => void
    const taken = new Promise<void>((r) => (answered = r))
    let holding = false
    await ann.route('**/api/conversations', async (route) => {
      if (route.request().method() !== 'GET' || holding) return route.continue()
      holding = true
      const response = await route.fetch()
      answered()
      await released
      await route.fulfill({ response })
    })
    // Cy starting a chat makes Ann's list ask again.
    await cy.getByTestId('new-chat-handle').fill(`ann3_${s}`)
    await cy.getByTestId('new-chat-submit').click()
    await taken
    await say(bo, 'late news')
    await expect.poll(() => boItem.getByTestId('unread-badge').textContent()).toBe('2')

    release()
    // Cy's chat reaches Ann's list only with that answer.
    await conv(ann, 'Cy').waitFor()
    expect(await boItem.getByTestId('unread-badge').allTextContents()).toEqual(['2'])
    expect(await boItem.textContent()).toContain('late news')
  })
})

describe('a block in a shared group', () => {
  it('the blocker sees the blocked person’s messages collapsed, uncounted and unannounced; the others see them as ever', async ({ expect }) => {
    const s = uniqueTag()
    const ann = await person(`ann2_${s}`, 'Ann')
    const bo = await person(`bo2_${s}`, 'Bo')
    const dee = await person(`dee2_${s}`, 'Dee')
    await befriendInUi(ann, bo, `bo2_${s}`)
    await befriendInUi(ann, dee, `dee2_${s}`)
    await ann.getByTestId('new-group').click()
    await ann.getByTestId('group-title').fill('Book swap')
    await ann.getByTestId('group-member').nth(0).check()
    await ann.getByTestId('group-member').nth(1).check()
    await ann.getByTestId('group-create').click()
    await conv(bo, 'Book swap').waitFor()
    await conv(dee, 'Book swap').waitFor()

    // Bo blocks Dee, who is not Bo's friend, from the group's member list.
    await conv(bo, 'Book swap').click()
    await bo.getByTestId('group-info-toggle').click()
    bo.once('dialog', (d) => void d.accept())
    await bo.getByTestId('group-member-row').filter({ hasText: 'Dee' }).getByTestId('block-member').click()
    await bo.getByTestId('group-member-row').filter({ hasText: 'Dee' }).getByTestId('unblock-member').waitFor()
    // Back to the list with no chat open, so a new message would count as unread.
    await bo.goto(product.server.url)
    await conv(bo, 'Book swap').waitFor()

    await conv(dee, 'Book swap').click()
    await say(dee, 'the butler did it')
    await conv(ann, 'Book swap').click()
    await ann.getByTestId('message').filter({ hasText: 'the butler did it' }).waitFor()
    // Bo's list counts nothing and previews nothing from Dee.
    await bo.waitForTimeout(1000)
    expect(await conv(bo, 'Book swap').getByTestId('unread-badge').count()).toBe(0)
    expect(await conv(bo, 'Book swap').textContent()).not.toContain('the butler did it')
    // Opened, the message is collapsed until Bo asks to see it.
    await conv(bo, 'Book swap').click()
    const collapsed = bo.getByTestId('message-blocked')
    await collapsed.waitFor()
    expect(await bo.getByTestId('message').filter({ hasText: 'the butler did it' }).count()).toBe(0)
    await bo.getByTestId('message').filter({ has: collapsed }).getByRole('button', { name: 'Show' }).click()
    await bo.getByTestId('message').filter({ hasText: 'the butler did it' }).waitFor()
  })
})
