import fs from 'node:fs'
import path from 'node:path'
import { cloudflareTest, readD1Migrations } from '@cloudflare/vitest-pool-workers'
import { defineConfig } from 'vitest/config'
import { createPushService, generateVapidKeys } from './test/support/push-service'
import { linkSite } from './test/support/link-site'
import { cloudflareTurn } from './test/support/cloudflare-turn'
import { makeVoiceFixtures } from './test/support/voice-fixtures'
import { startTranscriber } from './scripts/transcriber'

// wrangler.toml names dist/ as the assets folder; worker tests need it to exist, not to be built.
fs.mkdirSync(path.join(import.meta.dirname, 'dist'), { recursive: true })
const vapid = generateVapidKeys()
const migrations = await readD1Migrations(path.join(import.meta.dirname, 'migrations'))
const historyMigrations = await readD1Migrations(path.join(import.meta.dirname, 'migrations-history'))
const pushService = createPushService(vapid.publicKey)
// The real recogniser on loopback; it stops by itself when idle.
const transcriber = await startTranscriber()
const voice = makeVoiceFixtures()

export default defineConfig({
  test: {
    projects: [
      {
        plugins: [
          cloudflareTest({
            wrangler: { configPath: './wrangler.toml' },
            miniflare: {
              bindings: {
                TEST_MIGRATIONS: migrations,
                TEST_HISTORY_MIGRATIONS: historyMigrations,
                JWT_SECRET: 'test-secret-that-is-long-enough-0123456789',
                VAPID_PUBLIC_KEY: vapid.publicKey,
                VAPID_PRIVATE_KEY: vapid.privateKey,
                PUSH_RETRY_BASE_S: '0',
                TRANSCRIBER_URL: transcriber.url,
                TEST_VOICE: JSON.stringify(voice),
                // Objects hand metrics over every 200 ms instead of every minute, so tests see them soon.
                METRICS_MIN_GAP_MS: '200',
                METRICS_SCRAPE_TOKEN: 'test-scrape-token-0123456789',
                LOG_LEVEL: 'warn',
              },
              // Outbound fetches reach the transcriber on loopback or a push service in Node, never the internet.
              outboundService: async (request: Request) => {
                if (request.url.startsWith(transcriber.url)) return fetch(request.url, { method: request.method, headers: request.headers, body: await request.arrayBuffer() })
                const url = new URL(request.url)
                if (url.hostname === 'links.example.com') return linkSite(url.pathname) ?? new Response('not found', { status: 404 })
                if (url.hostname === 'rtc.live.cloudflare.com') return cloudflareTurn(request)
                return pushService(request)
              },
            },
          }),
        ],
        test: {
          name: 'workers',
          include: ['test/**/*.test.ts'],
          exclude: ['test/e2e/**'],
          setupFiles: ['./test/apply-migrations.ts'],
        },
      },
      {
        test: {
          name: 'e2e',
          environment: 'node',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 180_000,
          fileParallelism: false,
        },
      },
    ],
  },
})
