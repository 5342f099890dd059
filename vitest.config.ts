import fs from 'node:fs'
import path from 'node:path'
import { cloudflareTest, readD1Migrations } from '@cloudflare/vitest-pool-workers'
import { defineConfig } from 'vitest/config'
import { createPushService, generateVapidKeys } from './test/support/push-service'

// wrangler.toml names dist/ as the assets folder; worker tests need it to exist, not to be built.
fs.mkdirSync(path.join(import.meta.dirname, 'dist'), { recursive: true })
const vapid = generateVapidKeys()
const migrations = await readD1Migrations(path.join(import.meta.dirname, 'migrations'))

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
                JWT_SECRET: 'test-secret-that-is-long-enough-0123456789',
                VAPID_PUBLIC_KEY: vapid.publicKey,
                VAPID_PRIVATE_KEY: vapid.privateKey,
                PUSH_RETRY_BASE_S: '0',
              },
              // Outbound fetches (Web Push) reach a push service in Node instead of the internet.
              outboundService: createPushService(vapid.publicKey),
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
