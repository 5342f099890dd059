import { mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import * as chromeLauncher from 'chrome-launcher'
import lighthouse from 'lighthouse'
import { describe, it } from 'vitest'
import { CHROMIUM_PATH } from './browser'
import { startServer } from './server'

const OUT = path.resolve(import.meta.dirname, '../../test-results/lighthouse.json')

describe('lighthouse', () => {
  it('scores the built app and writes the scores to test-results/lighthouse.json', { timeout: 180_000 }, async ({ expect }) => {
    const server = await startServer()
    const chrome = await chromeLauncher.launch({
      chromePath: CHROMIUM_PATH,
      chromeFlags: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    })
    try {
      const result = await lighthouse(server.url, { port: chrome.port, output: 'json', logLevel: 'error', onlyCategories: ['performance', 'accessibility', 'best-practices', 'seo'] })
      const lhr = result!.lhr
      const scores = Object.fromEntries(Object.values(lhr.categories).map((c) => [c.id, c.score]))
      mkdirSync(path.dirname(OUT), { recursive: true })
      writeFileSync(OUT, JSON.stringify({ url: lhr.finalDisplayedUrl, lighthouse: lhr.lighthouseVersion, fetchTime: lhr.fetchTime, scores }, null, 2))
      console.log('lighthouse scores', scores)
      expect(scores.accessibility).toBeGreaterThanOrEqual(0.9)
      expect(scores['best-practices']).toBeGreaterThanOrEqual(0.8)
    } finally {
      chrome.kill()
      await server.stop()
    }
  })
})
