import { applyD1Migrations } from 'cloudflare:test'
import { env } from 'cloudflare:workers'
import { allShards, historyDb, MAIN } from '../worker/db/history'

await applyD1Migrations(env.DB, env.TEST_MIGRATIONS ?? [])
// Every history shard wrangler.toml binds, as `npm run db:migrate` does.
for (const shard of allShards(env)) if (shard !== MAIN) await applyD1Migrations(historyDb(env, shard), env.TEST_HISTORY_MIGRATIONS ?? [])
