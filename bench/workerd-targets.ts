// The systems of `npm run bench` that run on workerd: echovalley and the platform floor
// (bench/floor/worker.ts), each under `wrangler dev` (as `npm run dev` runs) or on bare workerd
// through Miniflare's API (bench/miniflare-host.ts), so every echovalley row has a floor measured
// on the same runtime in the same run.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { collectGarbage } from './inspector'
import { DEV_ENV, freePort, killTree, migrateLocal, startServer } from '../test/e2e/server'
import { generateVapidKeys } from '../test/support/push-service'
import WebSocket from 'ws'
import { BenchClient, FloorClient, WriterClient } from './client'
import type { Target, User } from './target'

const ROOT = path.resolve(import.meta.dirname, '..')
export type Runtime = 'wrangler' | 'bare'

async function json<T>(url: string, init: RequestInit & { token?: string; body?: string } = {}): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(url, { ...init, headers: { 'content-type': 'application/json', ...(init.token ? { authorization: `Bearer ${init.token}` } : {}) } })
    if (res.ok) return (await res.json()) as T
    if (res.status < 500 || attempt > 4) throw new Error(`${init.method ?? 'GET'} ${url}: ${res.status} ${await res.text()}`)
    await new Promise((r) => setTimeout(r, 200 * (attempt + 1)))
  }
}

async function pool<T, R>(items: T[], width: number, fn: (t: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!, i)
    }
  }))
  return out
}

function pin(pid: number, cpu: number) {
  try {
    execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' })
    for (const kid of execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).split('\n').filter(Boolean)) pin(Number(kid), cpu)
  } catch {
    // no taskset, or no children
  }
}

export interface Server {
  url: string
  pid(): number
  restart(): Promise<void>
  stop(): Promise<void>
  /** Where the state lives (the folder `wrangler d1 execute --persist-to` takes). */
  stateDir?: string
  /** A full collection in the Worker's isolate through workerd's inspector (bare systems), before memory readings. */
  collectGarbage?(): Promise<number>
}

/** wrangler dev, as `npm run dev` runs it (product) or with the floor's config. */
async function wranglerServer(kind: 'product' | 'floor', vars: Record<string, string>): Promise<Server> {
  const server = await startServer({ vars, lifetimeMs: 60 * 60 * 1000, ...(kind === 'floor' ? { config: 'bench/floor/wrangler.toml' } : {}) })
  return { url: server.url, pid: () => server.pid(), restart: () => server.restart(), stop: () => server.stop() }
}

/**
 * The same Worker bundled by wrangler, on workerd through Miniflare, with state on disk like
 * wrangler's. `prepare` runs on the migrated state folder before the runtime starts (the soak's seed).
 */
export async function bareServer(kind: 'product' | 'floor', vars: Record<string, string>, prepare?: (stateDir: string) => Promise<void>): Promise<Server> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `echovalley-bare-${kind}-`))
  const bundle = path.join(dir, 'bundle')
  const config = kind === 'floor' ? ['-c', 'bench/floor/wrangler.toml'] : []
  execFileSync('npx', ['wrangler', 'deploy', '--dry-run', ...config, '--outdir', bundle], { cwd: ROOT, stdio: 'ignore', env: { ...process.env, ...DEV_ENV } })
  if (kind === 'product') migrateLocal(dir)
  await prepare?.(dir)
  const port = await freePort()
  // Always open (idle, it costs nothing): memory readings collect garbage through it first.
  // BENCH_INSPECTOR=9333 chooses the port, for a CPU profile over CDP (bench/cpu-profile.ts).
  const inspectorPort = Number(process.env.BENCH_INSPECTOR) || (await freePort())
  // Clients reach the Worker on Miniflare's direct socket: its entry Worker, a hop production does
  // not have, costs ~30 KiB per idle WebSocket (floor-bare 113 → 83 KiB). BENCH_ENTRY=1 goes back
  // through it, for comparison with runs up to 2026-12-04 06:36.
  const directPort = process.env.BENCH_ENTRY === '1' ? undefined : await freePort()
  const state = path.join(dir, 'v3')
  const product = {
    compatibilityFlags: ['nodejs_compat'],
    bindings: { JWT_ISSUER: 'echovalley', JWT_AUDIENCE: 'echovalley-app', ALLOWED_ORIGINS: '', VAPID_SUBJECT: 'mailto:ops@echovalley.invalid', HISTORY_SHARDS: 'HISTORY_0,HISTORY_1', ...vars },
    // The ids wrangler.toml gives them, so the databases scripts/migrate.mjs prepared are the ones opened.
    d1Databases: { DB: '00000000-0000-0000-0000-000000000000', HISTORY_0: '00000000-0000-0000-0000-000000000100', HISTORY_1: '00000000-0000-0000-0000-000000000101' },
    durableObjects: {
      CONVERSATION: { className: 'ConversationRoom', useSQLite: true },
      USER: { className: 'UserHub', useSQLite: true },
      UPLOAD: { className: 'UploadSession', useSQLite: true },
      LOGIN_GUARD: { className: 'LoginGuard', useSQLite: true },
      VOICE: { className: 'VoiceRoom', useSQLite: true },
      CALL: { className: 'CallRoom', useSQLite: true },
      METRICS_SHARD: { className: 'MetricsShard', useSQLite: true },
      PRESENCE: { className: 'PresenceIndex', useSQLite: true },
    },
    ratelimits: { LOGIN_IP_LIMIT: { simple: { limit: 30, period: 60 } }, TICKET_LIMIT: { simple: { limit: 120, period: 60 } } },
    queueProducers: { PUSH_QUEUE: { queueName: 'echovalley-push' } },
    queueConsumers: {
      'echovalley-push': { maxBatchSize: 50, maxBatchTimeout: 1, maxRetries: 3, retryDelay: 1, deadLetterQueue: 'echovalley-push-dlq' },
      'echovalley-push-dlq': { maxBatchSize: 50, maxBatchTimeout: 1 },
    },
    r2Buckets: { MEDIA: 'echovalley-media' },
  }
  const floor = { durableObjects: { ROOM: { className: 'FloorRoom', useSQLite: true } } }
  const entry = path.join(bundle, readdirSync(bundle).find((f) => f.endsWith('.js'))!)
  const options = {
    modules: [{ type: 'ESModule', path: entry }],
    modulesRoot: bundle,
    compatibilityDate: '2026-04-20',
    port,
    directPort,
    inspectorPort,
    d1Persist: path.join(state, 'd1'),
    durableObjectsPersist: path.join(state, 'do'),
    r2Persist: path.join(state, 'r2'),
    ...(kind === 'product' ? product : floor),
  }
  let child: ChildProcess
  let url = ''
  const launch = async () => {
    child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench/miniflare-host.ts'), JSON.stringify(options)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'], detached: true })
    url = await new Promise<string>((resolve, reject) => {
      let out = ''
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString()
        const m = out.match(/listening (\S+)/)
        if (m) resolve(m[1]!)
        if (process.env.BENCH_INSPECTOR) process.stdout.write(d)
      })
      child.once('exit', (code) => reject(new Error(`miniflare host exited with ${code}: ${out}`)))
    })
  }
  const kill = (signal: NodeJS.Signals) => killTree(child.pid!, signal)
  await launch()
  return {
    stateDir: dir,
    // Any request runs the isolate, which is when workerd answers the inspector.
    collectGarbage: () => collectGarbage(inspectorPort, () => fetch(`${url}/__gc_poke`).then((r) => r.arrayBuffer())),
    get url() {
      return url
    },
    pid: () => child.pid!,
    async restart() {
      // kill -9 of host and workerd, as a crash would; the same state directory comes back.
      await kill('SIGKILL')
      await launch()
    },
    async stop() {
      await kill('SIGTERM')
      // BENCH_KEEP_STATE=1 leaves it for a reader after the stop (the soak reads the shards from disk).
      if (!process.env.BENCH_KEEP_STATE) rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** A socket for binary frames, open once the server's first frame (`first`) arrived. */
function openBinary(url: string, first: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    ws.binaryType = 'arraybuffer'
    const timer = setTimeout(() => reject(new Error(`no ${first} from ${url}`)), 15_000)
    ws.on('message', function wait(data, binary) {
      if (!binary && String(data).includes(`"${first}"`)) {
        clearTimeout(timer)
        ws.off('message', wait)
        resolve(ws)
      }
    })
    ws.once('error', reject)
  })
}

function serverFor(runtime: Runtime, kind: 'product' | 'floor', vars: Record<string, string>) {
  return runtime === 'wrangler' ? wranglerServer(kind, vars) : bareServer(kind, vars)
}

/** echovalley as shipped, with rate limits and the 50-person ceiling lifted for load. */
/**
 * `metrics: false` runs the product with METRICS_ENABLED=false: the benchmark's price of metrics.
 * `writers: false` sends every write through the chat socket and the user's hub, as before writer
 * sockets: their price the other way round.
 */
export async function productTarget(runtime: Runtime, { metrics = true, writers = true } = {}): Promise<Target> {
  const vapid = generateVapidKeys()
  const server = await serverFor(runtime, 'product', {
    ...(metrics ? {} : { METRICS_ENABLED: 'false' }),
    WRITE_RATE: '1000000/1000000',
    FRAME_RATE: '1000000/1000000',
    REGISTER_RATE: '1000000/1000000',
    GROUP_LIMIT: '1000',
    JWT_SECRET: 'bench-secret-that-is-long-enough-0123456789',
    VAPID_PUBLIC_KEY: vapid.publicKey,
    VAPID_PRIVATE_KEY: vapid.privateKey,
  })
  pin(server.pid(), 1)
  const run = Date.now().toString(36)
  let made = 0
  const friends = new Set<string>()
  const befriend = async (a: User, b: User) => {
    const key = [a.id, b.id].sort().join('|')
    if (friends.has(key)) return
    friends.add(key)
    const req = await json<{ id?: string }>(`${server.url}/api/friends/requests`, { method: 'POST', token: a.token, body: JSON.stringify({ handle: b.handle }) })
    if (req.id) await json(`${server.url}/api/friends/requests/${req.id}/accept`, { method: 'POST', token: b.token })
  }
  return {
    name: `${runtime === 'wrangler' ? 'echovalley' : 'echovalley-bare'}${metrics ? '' : '-no-metrics'}${writers ? '' : '-hub-writes'}`,
    async users(n) {
      // Registration hashes a password (PBKDF2, 100,000 rounds): the slow part of setting up.
      return pool(Array.from({ length: n }, (_, i) => i), 4, async () => {
        const handle = `b${run}_${made++}`
        const r = await json<{ accessToken: string; user: { id: string } }>(`${server.url}/api/auth/register`, { method: 'POST', body: JSON.stringify({ handle, password: 'bench-password-1', displayName: handle }) })
        return { id: r.user.id, handle, token: r.accessToken }
      })
    },
    async direct(a, b) {
      await befriend(a, b)
      return (await json<{ conversation: { id: string } }>(`${server.url}/api/conversations`, { method: 'POST', token: a.token, body: JSON.stringify({ peerHandle: b.handle }) })).conversation.id
    },
    async group(owner, others) {
      await pool(others, 6, (o) => befriend(owner, o))
      const first = others.slice(0, 49)
      const id = (await json<{ conversation: { id: string } }>(`${server.url}/api/conversations/groups`, { method: 'POST', token: owner.token, body: JSON.stringify({ title: 'bench', memberIds: first.map((o) => o.id) }) })).conversation.id
      for (let i = 49; i < others.length; i += 49) {
        await json(`${server.url}/api/conversations/${id}/members`, { method: 'POST', token: owner.token, body: JSON.stringify({ userIds: others.slice(i, i + 49).map((o) => o.id) }) })
      }
      return id
    },
    async connect(u) {
      const socket = async (path: string, confirm: boolean) => {
        const { ticket } = await json<{ ticket: string }>(`${server.url}/api/ws/ticket`, { method: 'POST', token: u.token })
        return BenchClient.open(`${server.url.replace(/^http/, 'ws')}${path}?ticket=${encodeURIComponent(ticket)}`, confirm)
      }
      const chat = await socket('/api/ws', true)
      return writers ? new WriterClient(chat, (conversationId) => socket(`/api/ws/conversations/${conversationId}`, true)) : chat
    },
    voice: {
      async join(u, conversationId) {
        const { ticket } = await json<{ ticket: string }>(`${server.url}/api/ws/ticket`, { method: 'POST', token: u.token })
        return openBinary(`${server.url.replace(/^http/, 'ws')}/api/voice/${conversationId}/ws?ticket=${encodeURIComponent(ticket)}`, 'welcome')
      },
      async promote(host, userId) {
        host.send(JSON.stringify({ type: 'promote', userId }))
        await new Promise((r) => setTimeout(r, 50))
      },
    },
    rest: {
      async authed(u) {
        await json(`${server.url}/api/me`, { token: u.token })
      },
      async open() {
        await json(`${server.url}/api/health/live`)
      },
    },
    pid: () => server.pid(),
    ...(server.collectGarbage ? { collectGarbage: server.collectGarbage } : {}),
    async restart() {
      await server.restart()
      pin(server.pid(), 1)
    },
    stop: () => server.stop(),
  }
}

/**
 * BENCH_FLOOR_LOBBY=shared: a floor user with no conversation joins one lobby object shared by all,
 * instead of one of their own, to tell what an idle connection costs from what an object costs.
 */
const FLOOR_SHARED_LOBBY = process.env.BENCH_FLOOR_LOBBY === 'shared'

/** The platform floor: a socket per conversation straight into a minimal SQLite object. */
export async function floorTarget(runtime: Runtime): Promise<Target> {
  const server = await serverFor(runtime, 'floor', {})
  pin(server.pid(), 1)
  /** Each user's conversations, newest last: a connection opens a socket to the newest. */
  const convsOf = new Map<string, string[]>()
  const join = (conv: string, users: User[]) => {
    for (const u of users) convsOf.set(u.id, [...(convsOf.get(u.id) ?? []), conv])
  }
  let n = 0
  return {
    name: runtime === 'wrangler' ? 'floor' : 'floor-bare',
    async users(count) {
      return Array.from({ length: count }, () => ({ id: `u${n++}`, handle: '', token: '' }))
    },
    async direct(a, b) {
      const id = `c${n++}`
      join(id, [a, b])
      return id
    },
    async group(owner, others) {
      const id = `g${n++}`
      join(id, [owner, ...others])
      return id
    },
    async connect(u) {
      const convs = convsOf.get(u.id) ?? []
      return FloorClient.open(server.url.replace(/^http/, 'ws'), u.id, convs[convs.length - 1] ?? (FLOOR_SHARED_LOBBY ? 'lobby' : `lobby-${u.id}`))
    },
    // The floor relays any binary frame to the room's other sockets; nobody needs promoting.
    voice: {
      join: (u, conversationId) => openBinary(`${server.url.replace(/^http/, 'ws')}/ws?conv=${encodeURIComponent(conversationId)}&user=${encodeURIComponent(u.id)}`, 'hello'),
      promote: async () => undefined,
    },
    pid: () => server.pid(),
    ...(server.collectGarbage ? { collectGarbage: server.collectGarbage } : {}),
    async restart() {
      await server.restart()
      pin(server.pid(), 1)
    },
    stop: () => server.stop(),
  }
}

