import type { Page } from 'playwright-core'
import { describe, it } from 'vitest'
import { befriendInUi, recallMessage, registerInUi, uniqueTag, useProduct } from './browser'

const product = useProduct()

/** Everything this origin's IndexedDB databases hold, as one string. */
async function indexedDbDump(page: Page): Promise<string> {
  return page.evaluate(async () => {
    const out: unknown[] = []
    for (const info of await indexedDB.databases()) {
      const db = await new Promise<IDBDatabase>((res, rej) => {
        const r = indexedDB.open(info.name!)
        r.onsuccess = () => res(r.result)
        r.onerror = () => rej(r.error)
      })
      for (const store of Array.from(db.objectStoreNames)) {
        const values = await new Promise<unknown[]>((res) => {
          const r = db.transaction(store).objectStore(store).getAll()
          r.onsuccess = () => res(r.result)
        })
        out.push(values)
      }
      db.close()
    }
    return JSON.stringify(out)
  })
}

describe('ticks, recall and the local cache', () => {
  it('shows pending → sent → delivered → read, and a recall erases the text on both sides', async ({ expect }) => {
    const suffix = uniqueTag()
    const a = await (await product.browser.newContext()).newPage()
    const b = await (await product.browser.newContext()).newPage()
    await registerInUi(a, product.server.url, `ann_${suffix}`, 'Ann')
    await registerInUi(b, product.server.url, `ben_${suffix}`, 'Ben')
    await befriendInUi(a, b, `ben_${suffix}`)
    await a.getByTestId('new-chat-handle').fill(`ben_${suffix}`)
    await a.getByTestId('new-chat-submit').click()

    // Ben is signed in but has not opened the chat: delivered, not read.
    await a.getByTestId('composer-input').fill('a secret worth recalling')
    await a.getByTestId('composer-input').press('Enter')
    const mine = a.getByTestId('message').filter({ hasText: 'a secret worth recalling' })
    await expect.poll(() => mine.getAttribute('data-state')).toBe('delivered')

    await b.getByTestId('conversation-item').filter({ hasText: 'Ann' }).click()
    await b.getByTestId('message').filter({ hasText: 'a secret worth recalling' }).waitFor()
    await expect.poll(() => mine.getAttribute('data-state')).toBe('read')
    await expect.poll(() => indexedDbDump(b)).toContain('a secret worth recalling')

    await recallMessage(a, mine)
    await b.getByTestId('message-recalled').waitFor()
    await a.getByTestId('message-recalled').waitFor()
    expect(await b.getByTestId('message-text').allTextContents()).not.toContain('a secret worth recalling')
    await expect.poll(() => indexedDbDump(b)).not.toContain('a secret worth recalling')
    await expect.poll(() => indexedDbDump(a)).not.toContain('a secret worth recalling')
  })

  it('does not send on Enter while an IME composition is open', async ({ expect }) => {
    const suffix = uniqueTag()
    const a = await (await product.browser.newContext()).newPage()
    await registerInUi(a, product.server.url, `ime_${suffix}`, 'Ime')
    const pal = await (await product.browser.newContext()).newPage()
    await registerInUi(pal, product.server.url, `pal_${suffix}`, 'Pal')
    await befriendInUi(a, pal, `pal_${suffix}`)
    await a.getByTestId('new-chat-handle').fill(`pal_${suffix}`)
    await a.getByTestId('new-chat-submit').click()
    const input = a.getByTestId('composer-input')
    await input.fill('ni hao')
    // The Enter that confirms a composition arrives with isComposing set.
    await input.dispatchEvent('keydown', { key: 'Enter', isComposing: true, bubbles: true })
    await a.waitForTimeout(300)
    expect(await a.getByTestId('message').count()).toBe(0)
    expect(await input.inputValue()).toBe('ni hao')
    await input.press('Enter')
    await a.getByTestId('message').filter({ hasText: 'ni hao' }).waitFor()
  })
})
