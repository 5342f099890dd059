// `npm run soak`: the enterprise seed's day, compressed, against the product as `npm run dev` runs
// it (wrangler dev, the same config and migrations, two history shards; sign-ups per address lifted
// so one machine can make 10,000 people). Users come and go with the curve, send in 1:1 chats and
// groups of 3–50, recall some messages; at the end it checks that nothing acknowledged was lost or
// duplicated, every conversation's D1 history (on its shard) equals its room's log, search finds
// sampled messages and not recalled ones, and reports send→ack per phase and the shard sizes.
//
//   npm run soak                                  # 10,000 users, 5,000 conversations, a 30-minute day peaking at 200 msg/s for 10 minutes
//   npm run soak -- --users=2000 --conversations=1000 --minutes=6 --peak-minutes=2 --peak=100   # a short one
//   npm run soak -- --record                       # also appends the report to bench/results.md
//   npm run soak -- --bare                         # on bare workerd through Miniflare instead of wrangler dev
//   npm run soak -- --seed=api                     # people, friendships and chats made through the API (~25 min at full size) instead of written into D1
import { execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { appendFileSync, mkdtempSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import WebSocket from 'ws'
import { DEV_ENV, startServer } from '../test/e2e/server'
import { generateVapidKeys } from '../test/support/push-service'
import { backoffDelay } from '../web/lib/backoff'
import { newId } from '../worker/ids'
import { SEED_PASSWORD, seedPeople, writeSeed, type SeedConversation, type SeedPerson } from './soak-seed'
import { bareServer } from './workerd-targets'
import type { AuthResult, ConversationEvent, HistoryPage, SearchHit, ServerMessage } from '../worker/shared/protocol'

const ROOT = path.resolve(import.meta.dirname, '..')
const arg = (name: string, fallback: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const USERS = arg('users', 10_000)
const CONVERSATIONS = arg('conversations', 5_000)
const DAY_MIN = arg('minutes', 30)
const PEAK = arg('peak', 200)
const PEAK_MIN = arg('peak-minutes', 10)
/** Sockets open at the peak; the night has a fifth of them. One machine's workerd holds them all. */
const ONLINE_MAX = arg('online', 1_500)
const RECALL_SHARE = 0.005
const DIRECT_SHARE = 0.7
const SETUP_CONCURRENCY = 8
const REPLY_TIMEOUT_MS = 30_000

// ---- the curve: night, morning, the peak plateau, evening ----

type Phase = 'night' | 'morning' | 'peak' | 'evening'
const nightEnd = DAY_MIN * 0.2
const peakStart = Math.max(nightEnd, (DAY_MIN - PEAK_MIN) / 2)
const peakEnd = peakStart + PEAK_MIN
function phaseAt(min: number): Phase {
  return min < nightEnd ? 'night' : min < peakStart ? 'morning' : min < peakEnd ? 'peak' : 'evening'
}
/** Messages a second the day asks for at minute `min`. */
function rateAt(min: number): number {
  if (min < nightEnd) return PEAK * 0.1
  if (min < peakStart) return PEAK * (0.1 + (0.9 * (min - nightEnd)) / Math.max(1e-9, peakStart - nightEnd))
  if (min < peakEnd) return PEAK
  return PEAK * (1 - (0.75 * (min - peakEnd)) / Math.max(1e-9, DAY_MIN - peakEnd))
}

// ---- small helpers ----

/** Retried after a network error or timeout, with the same body (a refresh keeps its retry key). */
async function http<T>(base: string, p: string, init: { method?: string; token?: string; body?: unknown } = {}): Promise<{ status: number; body: T }> {
  for (let attempt = 0; ; attempt++) {
    // Not AbortSignal.timeout: Node cancels its timer when the signal is garbage collected, and
    // fetch holds its signal only weakly (nodejs/undici#3644), so under the soak's GC a request the
    // server never answered waited forever (the 12:32 run's checker: every worker stuck, no timer
    // left). This timer holds its controller.
    const abort = new AbortController()
    const timer = setTimeout(() => abort.abort(new Error(`no answer to ${p} in ${REPLY_TIMEOUT_MS} ms`)), REPLY_TIMEOUT_MS)
    try {
      const res = await fetch(`${base}${p}`, {
        method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
        headers: { ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}), ...(init.token ? { authorization: `Bearer ${init.token}` } : {}) },
        body: init.body === undefined ? undefined : JSON.stringify(init.body),
        signal: abort.signal,
      })
      const text = await res.text()
      return { status: res.status, body: (text ? JSON.parse(text) : null) as T }
    } catch (e) {
      if (attempt >= 3) throw e
      await sleep(200 * 2 ** attempt)
    } finally {
      clearTimeout(timer)
    }
  }
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const pick = <T>(xs: T[]): T => xs[Math.floor(Math.random() * xs.length)]!
async function pool<T, R>(items: T[], n: number, f: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    for (let i = next++; i < items.length; i = next++) out[i] = await f(items[i]!, i)
  }))
  return out
}
function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!
}
const fmt = (ms: number) => (Number.isNaN(ms) ? '–' : ms < 10 ? ms.toFixed(2) : ms.toFixed(0))

// ---- a user's socket ----

interface Sent {
  conversationId: string
  clientMsgId: string
  senderId: string
  token: string
  at: number
  phase: Phase
  seq?: number
  /** Its recall was acknowledged. */
  recalled?: boolean
  /** As the room's log shows it at the end: a recall whose answer was lost may still have been carried out. */
  recalledInLog?: boolean
}

class Device {
  private replies = new Map<string, (m: ServerMessage) => void>()
  /** Sync answers waiting, per conversation: the hub answers syncs of different rooms as each room answers it, in any order. */
  private pages = new Map<string, ((m: Extract<ServerMessage, { type: 'events' }>) => void)[]>()
  private confirms = new Map<string, NodeJS.Timeout>()
  /** Newest seq seen per conversation (what a reconnect syncs after). */
  constructor(
    readonly ws: WebSocket,
    readonly known: Map<string, number>,
  ) {
    ws.on('message', (data) => {
      const text = data.toString()
      if (text === 'pong') return
      const m = JSON.parse(text) as ServerMessage
      if (m.type === 'ack') this.settle(m.clientMsgId, m)
      else if (m.type === 'error' && m.ref) this.settle(m.ref, m)
      else if (m.type === 'events') this.pages.get(m.conversationId)?.shift()?.(m)
      else if (m.type === 'event') {
        const { conversationId, seq } = m.event
        if (seq > (this.known.get(conversationId) ?? 0)) this.known.set(conversationId, seq)
        this.confirm(conversationId)
      }
    })
  }

  static open(base: string, token: string, known: Map<string, number>): Promise<Device> {
    return (async () => {
      const { body } = await http<{ ticket: string }>(base, '/api/ws/ticket', { method: 'POST', token })
      const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/api/ws?ticket=${encodeURIComponent(body.ticket)}`, { perMessageDeflate: false, headers: { origin: base } })
      const device = new Device(ws, known)
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => (ws.terminate(), reject(new Error('no hello'))), REPLY_TIMEOUT_MS)
        ws.once('error', (e) => (clearTimeout(timer), reject(e)))
        ws.on('message', function hello(d) {
          if (d.toString().includes('"hello"')) (ws.off('message', hello), clearTimeout(timer), resolve())
        })
      })
      return device
    })()
  }

  private settle(ref: string, m: ServerMessage) {
    const done = this.replies.get(ref)
    this.replies.delete(ref)
    done?.(m)
  }

  /** As the PWA: delivered (and, for an open chat, read) a moment after events arrive. */
  private confirm(conversationId: string) {
    if (this.confirms.has(conversationId)) return
    this.confirms.set(conversationId, setTimeout(() => {
      this.confirms.delete(conversationId)
      const seq = this.known.get(conversationId) ?? 0
      if (this.ws.readyState !== WebSocket.OPEN) return
      this.ws.send(JSON.stringify({ type: 'delivered', conversationId, seq }))
      if (Math.random() < 0.5) this.ws.send(JSON.stringify({ type: 'read', conversationId, seq }))
    }, 150))
  }

  write(frame: { type: 'send' | 'recall'; clientMsgId: string } & Record<string, unknown>): Promise<ServerMessage> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.settle(frame.clientMsgId, { type: 'error', code: 'TIMEOUT', message: 'no answer', ref: frame.clientMsgId } as unknown as ServerMessage), REPLY_TIMEOUT_MS)
      this.replies.set(frame.clientMsgId, (m) => (clearTimeout(timer), resolve(m)))
      this.ws.send(JSON.stringify(frame))
    })
  }

  get busy() {
    return this.replies.size > 0
  }

  /** Every event after `after`, page by page. */
  async sync(conversationId: string, after: number): Promise<ConversationEvent[]> {
    const events: ConversationEvent[] = []
    for (let cursor = after; ; ) {
      const page = await new Promise<Extract<ServerMessage, { type: 'events' }>>((resolve, reject) => {
        const waiting = this.pages.get(conversationId) ?? []
        const take = (p: Extract<ServerMessage, { type: 'events' }>) => (clearTimeout(timer), resolve(p))
        // An answer that never came leaves no taker behind to swallow the next one.
        const timer = setTimeout(() => {
          const i = waiting.indexOf(take)
          if (i >= 0) waiting.splice(i, 1)
          reject(new Error(`sync of ${conversationId} after ${cursor} not answered`))
        }, REPLY_TIMEOUT_MS)
        waiting.push(take)
        this.pages.set(conversationId, waiting)
        this.ws.send(JSON.stringify({ type: 'sync', conversationId, afterSeq: cursor }))
      })
      events.push(...page.events)
      if (page.events.length) cursor = page.events[page.events.length - 1]!.seq
      if (!page.hasMore) break
    }
    const last = events[events.length - 1]?.seq ?? after
    if (last > (this.known.get(conversationId) ?? 0)) this.known.set(conversationId, last)
    return events
  }

  close() {
    for (const t of this.confirms.values()) clearTimeout(t)
    this.ws.close()
  }
}

// ---- the run ----

interface Person {
  auth: AuthResult
  /** When auth was issued: access tokens last 15 minutes, and the setup alone takes longer. */
  issuedAt: number
  refreshing?: Promise<void>
  /** The refresh key in use, kept until a refresh succeeds (as the PWA keeps it): a later try after a lost answer is a retry, not a replay. */
  retryKey?: string
  convs: string[]
  known: Map<string, number>
  device: Device | null
  connecting: boolean
  /** Connects that failed in a row (0: not retrying), since when, and when the next try is due: the app's backoff. */
  failures: number
  outageSince: number
  retryAt: number
}

/**
 * A person's access token, refreshed once it is 10 minutes old (one refresh at a time: refresh
 * tokens rotate, and a reused one signs the session out).
 */
async function tokenOf(base: string, p: Person): Promise<string> {
  if (Date.now() - p.issuedAt > 10 * 60_000) {
    p.refreshing ??= (async () => {
      // One key for every try until one succeeds, as the PWA does: a retry after a lost answer gets
      // new tokens, and a try that crossed an earlier one still in the server (409
      // REFRESH_IN_FLIGHT) waits and retries. A new key for a spent token would sign the session out.
      const retryKey = (p.retryKey ??= randomUUID())
      for (let attempt = 0; ; attempt++) {
        const r = await http<AuthResult>(base, '/api/auth/refresh', { body: { refreshToken: p.auth.refreshToken, retryKey } })
        if (r.status === 200) {
          p.auth = { ...p.auth, ...r.body }
          p.issuedAt = Date.now()
          p.retryKey = undefined
          return
        }
        if (r.status === 401) return signInAgain(base, p)
        if (r.status !== 409 || attempt >= 5) throw new Error(`refresh for ${p.auth.user.handle}: ${r.status} ${JSON.stringify(r.body)}`)
        await sleep(1000 * 2 ** attempt)
      }
    })().finally(() => (p.refreshing = undefined))
    await p.refreshing
  }
  return p.auth.accessToken
}

/** People whose session the server ended (a refresh answered 401) and who signed in again. */
let signedOut = 0

/**
 * A person signed out does what a user would: signs in again with their password. The server ends
 * a session when a refresh comes back after its retry window (a refresh whose answers were lost in
 * a saturated runtime, retried minutes later), as it would for a phone away that long.
 */
async function signInAgain(base: string, p: Person): Promise<void> {
  signedOut++
  for (let attempt = 0; ; attempt++) {
    const r = await http<AuthResult>(base, '/api/auth/login', { body: { handle: p.auth.user.handle, password: SEED_PASSWORD } })
    if (r.status === 200) {
      p.auth = r.body
      p.issuedAt = Date.now()
      p.retryKey = undefined
      return
    }
    // 30 sign-ins a minute from one address: the checker waits its turn.
    if (r.status !== 429 || attempt >= 10) throw new Error(`sign-in again for ${p.auth.user.handle}: ${r.status} ${JSON.stringify(r.body)}`)
    await sleep(15_000)
  }
}

// ---- the population ----

/** Conversations as lists of people (by index), the owner first: 70 % 1:1, the rest groups of 3–50, small ones likelier (P ∝ 1/size^1.3). */
function conversationShapes(): { kind: 'direct' | 'group'; members: number[] }[] {
  const sizes = Array.from({ length: 48 }, (_, i) => i + 3)
  const weights = sizes.map((n) => 1 / n ** 1.3)
  const total = weights.reduce((a, b) => a + b, 0)
  const groupSize = () => {
    let x = Math.random() * total
    for (let i = 0; i < sizes.length; i++) if ((x -= weights[i]!) <= 0) return sizes[i]!
    return 3
  }
  const anyone = () => Math.floor(Math.random() * USERS)
  return Array.from({ length: CONVERSATIONS }, () => {
    const owner = anyone()
    const n = Math.random() < DIRECT_SHARE ? 2 : groupSize()
    const others = new Set<number>()
    while (others.size < n - 1) {
      const p = anyone()
      if (p !== owner) others.add(p)
    }
    return { kind: n === 2 ? 'direct' : 'group', members: [owner, ...others] }
  })
}

/** The population as rows for bench/soak-seed.ts; a 1:1 pair drawn twice is one chat, as through the API. */
function planPopulation(run: string): { people: SeedPerson[]; conversations: SeedConversation[] } {
  const pairs = new Set<string>()
  const conversations: SeedConversation[] = []
  for (const shape of conversationShapes()) {
    const pair = shape.kind === 'direct' ? [...shape.members].sort((a, b) => a - b).join('|') : null
    if (pair && pairs.has(pair)) continue
    if (pair) pairs.add(pair)
    conversations.push({ id: newId(), ...shape })
  }
  return { people: seedPeople(run, USERS), conversations }
}

/** The population made as people make it: sign-ups, friend requests and their answers, then chats and groups. */
async function populateThroughApi(base: string, run: string): Promise<{ people: Person[]; conversations: { id: string; members: Person[] }[] }> {
  const t0 = Date.now()
  const people: Person[] = await pool(Array.from({ length: USERS }, (_, i) => i), SETUP_CONCURRENCY, async (i) => {
    const handle = `s${run}_${i}`
    const r = await http<AuthResult>(base, '/api/auth/register', { body: { handle, password: SEED_PASSWORD, displayName: `Soak ${i}` } })
    if (r.status !== 201) throw new Error(`register ${handle}: ${r.status} ${JSON.stringify(r.body)}`)
    if ((i + 1) % 1000 === 0) console.log(`  ${i + 1} people (${((Date.now() - t0) / 1000).toFixed(0)} s)`)
    return { auth: r.body, issuedAt: Date.now(), convs: [], known: new Map(), device: null, connecting: false, failures: 0, outageSince: 0, retryAt: 0 }
  })
  const befriended = new Set<string>()
  const befriend = async (a: Person, b: Person) => {
    const key = [a.auth.user.id, b.auth.user.id].sort().join('|')
    if (befriended.has(key)) return
    befriended.add(key)
    const req = await http<{ id?: string }>(base, '/api/friends/requests', { token: await tokenOf(base, a), body: { handle: b.auth.user.handle } })
    if (req.status === 201 && req.body.id) await http(base, `/api/friends/requests/${req.body.id}/accept`, { method: 'POST', token: await tokenOf(base, b) })
  }
  const t1 = Date.now()
  const conversations = await pool(conversationShapes(), SETUP_CONCURRENCY, async (shape, i) => {
    const [owner, ...others] = shape.members.map((m) => people[m]!)
    for (const o of others) await befriend(owner!, o)
    const r = shape.kind === 'direct'
      ? await http<{ conversation: { id: string } }>(base, '/api/conversations', { token: await tokenOf(base, owner!), body: { peerHandle: others[0]!.auth.user.handle } })
      : await http<{ conversation: { id: string } }>(base, '/api/conversations/groups', { token: await tokenOf(base, owner!), body: { title: `group ${i}`, memberIds: others.map((o) => o.auth.user.id) } })
    if (r.status !== 201 && r.status !== 200) throw new Error(`${shape.kind}: ${r.status} ${JSON.stringify(r.body)}`)
    if ((i + 1) % 1000 === 0) console.log(`  ${i + 1} conversations (${((Date.now() - t1) / 1000).toFixed(0)} s)`)
    return { id: r.body.conversation.id, members: [owner!, ...others] }
  })
  return { people, conversations }
}

async function main() {
  const record = process.argv.includes('--record')
  const started = new Date()
  console.log(`soak: ${USERS} users, ${CONVERSATIONS} conversations, a ${DAY_MIN}-minute day, ${PEAK} msg/s for ${PEAK_MIN} minutes, up to ${ONLINE_MAX} online`)
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'echovalley-soak-'))
  // --bare: the same bundle on bare workerd through Miniflare (BENCH_INSPECTOR=9333 opens its
  // inspector for bench/cpu-profile.ts); by default wrangler dev, as `npm run dev` runs it.
  const bare = process.argv.includes('--bare')
  if (bare) process.env.BENCH_KEEP_STATE = '1'
  // One local workerd holds every object of the deployment, and its SQLite shares a 512 MiB
  // heap across all of them: ~2,800 live SQLite objects and it answers SQLITE_NOMEM
  // (bench/sqlite-objects.ts). workerd's autogate increase-sqlite-hard-heap-limit (8 GiB) lifts
  // that; workerd turns autogates on only all together, from this variable.
  process.env.WORKERD_ALL_AUTOGATES = '1'
  const bareVars = () => {
    const vapid = generateVapidKeys()
    return { REGISTER_RATE: '1000000/1000000', JWT_SECRET: 'soak-secret-that-is-long-enough-0123456789', VAPID_PUBLIC_KEY: vapid.publicKey, VAPID_PRIVATE_KEY: vapid.privateKey }
  }
  // The population: written into D1 before the runtime starts (default), or made through the API
  // (--seed=api: sign-ups, friend requests, chats and groups, as people would; ~25 minutes).
  const viaApi = process.argv.includes('--seed=api')
  const run = Date.now().toString(36)
  const t0 = Date.now()
  const seeded = viaApi ? null : planPopulation(run)
  const prepare = seeded ? (dir: string) => writeSeed(dir, seeded.people, seeded.conversations, 'HISTORY_0,HISTORY_1') : undefined
  const server: { url: string; stop(): Promise<void>; stateDir?: string } = bare
    ? await bareServer('product', bareVars(), prepare)
    : await startServer({ stateDir, lifetimeMs: (DAY_MIN + 120) * 60_000, vars: { REGISTER_RATE: '1000000/1000000' }, quiet: true, prepare })
  const base = server.url
  console.log(`server ${base}, state in ${server.stateDir ?? stateDir}`)
  let stopped = false
  try {
    let people: Person[]
    let conversations: { id: string; members: Person[] }[]
    if (seeded) {
      // A seeded session has a refresh token and no access token yet: the first use refreshes.
      people = seeded.people.map((p) => ({
        auth: { user: { id: p.id, handle: p.handle, displayName: p.displayName }, sessionId: p.sessionId, accessToken: '', refreshToken: p.refreshToken } as unknown as AuthResult,
        issuedAt: 0, convs: [], known: new Map(), device: null, connecting: false, failures: 0, outageSince: 0, retryAt: 0,
      }))
      conversations = seeded.conversations.map((c) => ({ id: c.id, members: c.members.map((i) => people[i]!) }))
    } else {
      ;({ people, conversations } = await populateThroughApi(base, run))
    }
    // A direct chat asked for twice is one conversation.
    const byId = new Map(conversations.map((c) => [c.id, c]))
    for (const c of byId.values()) for (const m of c.members) if (!m.convs.includes(c.id)) m.convs.push(c.id)
    const setupS = (Date.now() - t0) / 1000
    console.log(`setup: ${people.length} people, ${byId.size} conversations in ${setupS.toFixed(0)} s`)

    // The day.
    const sent: Sent[] = []
    const latencies: Record<Phase, number[]> = { night: [], morning: [], peak: [], evening: [] }
    const offered: Record<Phase, number> = { night: 0, morning: 0, peak: 0, evening: 0 }
    const refused: Record<string, number> = {}
    const syncMs: number[] = []
    let onlinePeak = 0
    let reconnects = 0
    let connectFailures = 0
    let recalls = 0
    let counter = 0
    const online = () => people.filter((p) => p.device)
    const connect = async (p: Person) => {
      if (p.device || p.connecting) return
      p.connecting = true
      try {
        const d = await Device.open(base, await tokenOf(base, p), p.known)
        const begin = performance.now()
        // Coming back: what happened meanwhile, in every chat, as the PWA syncs.
        await Promise.all(p.convs.map((id) => d.sync(id, p.known.get(id) ?? 0)))
        syncMs.push(performance.now() - begin)
        p.device = d
        p.failures = 0
        reconnects++
      } catch (e) {
        connectFailures++
        if (connectFailures <= 20 || connectFailures % 500 === 0) console.warn(`  connect failed (${connectFailures} so far): ${String(e)}`)
        // This person tries again as the app would, after its backoff; nobody else takes their place.
        if (p.failures++ === 0) p.outageSince = Date.now()
        p.retryAt = Date.now() + backoffDelay(p.failures - 1, Date.now() - p.outageSince)
      } finally {
        p.connecting = false
      }
    }
    const disconnect = (p: Person) => {
      if (!p.device || p.device.busy) return
      p.device.close()
      p.device = null
    }
    const dayStart = Date.now()
    const inFlight = new Set<Promise<unknown>>()
    let carry = 0
    let lastPopulation = 0
    let lastReport = 0
    while (Date.now() - dayStart < DAY_MIN * 60_000) {
      const min = (Date.now() - dayStart) / 60_000
      const phase = phaseAt(min)
      // Who is online follows the curve, with churn: some leave and others come every second.
      if (Date.now() - lastPopulation >= 1000) {
        lastPopulation = Date.now()
        const want = Math.round(ONLINE_MAX * (0.2 + (0.8 * rateAt(min)) / PEAK))
        const on = online()
        for (let i = Math.ceil(on.length * 0.01); i > 0; i--) disconnect(pick(on))
        // Whose connect failed tries again when their backoff is over.
        for (const p of people) if (!p.device && !p.connecting && p.failures > 0 && p.retryAt <= Date.now()) void connect(p)
        // Those connecting or waiting to retry count: a slow server must not get a new wave of people every second.
        const waiting = people.filter((p) => !p.device && !p.connecting && p.failures > 0)
        const missing = want - online().length - people.filter((p) => p.connecting).length - waiting.length
        if (missing > 0) {
          const off = people.filter((p) => !p.device && !p.connecting && p.failures === 0)
          for (let i = 0; i < Math.min(missing, 100, off.length); i++) void connect(pick(off))
        } else if (missing < 0) {
          // Fewer wanted: those waiting to retry give up first.
          let excess = -missing
          for (const p of waiting) if (excess > 0) (p.failures = 0, excess--)
          for (const on = online(); excess > 0 && on.length > 0; excess--) disconnect(on.splice(Math.floor(Math.random() * on.length), 1)[0]!)
        }
        onlinePeak = Math.max(onlinePeak, online().length)
      }
      if (Date.now() - lastReport >= 30_000) {
        lastReport = Date.now()
        const acked = sent.filter((s) => s.seq !== undefined).length
        console.log(`  ${min.toFixed(1)} min ${phase}: ${rateAt(min).toFixed(0)} msg/s asked, ${online().length} online, ${sent.length} sent, ${acked} acked, ${inFlight.size} in flight, ${connectFailures} connects failed`)
      }
      // This tenth of a second's messages, from people online, in one of their chats.
      carry += rateAt(min) / 10
      const senders = online().filter((p) => p.convs.length > 0)
      for (; carry >= 1 && senders.length > 0; carry--) {
        const p = pick(senders)
        const conversationId = pick(p.convs)
        const token = `w${(counter++).toString(36)}x${run}`
        const s: Sent = { conversationId, clientMsgId: randomUUID(), senderId: p.auth.user.id, token, at: performance.now(), phase }
        sent.push(s)
        offered[phase]++
        const device = p.device!
        const job = device.write({ type: 'send', conversationId, clientMsgId: s.clientMsgId, body: { kind: 'text', text: `${token} from the soak` } }).then(async (m) => {
          if (m.type !== 'ack') {
            const code = (m as { code?: string }).code ?? m.type
            refused[code] = (refused[code] ?? 0) + 1
            return
          }
          s.seq = m.seq
          latencies[s.phase].push(performance.now() - s.at)
          // Some are recalled within the two minutes, by their sender.
          if (Math.random() < RECALL_SHARE) {
            await sleep(1000 + Math.random() * 30_000)
            const d = p.device
            if (!d) return
            const r = await d.write({ type: 'recall', conversationId, clientMsgId: randomUUID(), targetSeq: m.seq })
            if (r.type === 'ack') (s.recalled = true, recalls++)
          }
        })
        inFlight.add(job)
        void job.finally(() => inFlight.delete(job))
      }
      await sleep(100)
    }
    console.log(`day over; waiting for ${inFlight.size} answers`)
    await Promise.allSettled([...inFlight])
    for (const p of people) p.device?.close()
    await sleep(3000)

    // Verification.
    console.log('checking: logs, D1 shards, search')
    const acked = sent.filter((s) => s.seq !== undefined)
    const ackedBy = new Map<string, Map<string, Sent>>()
    for (const s of acked) {
      const m = ackedBy.get(s.conversationId) ?? new Map<string, Sent>()
      m.set(s.clientMsgId, s)
      ackedBy.set(s.conversationId, m)
    }
    const problems: string[] = []
    let lost = 0
    let duplicates = 0
    let d1Mismatches = 0
    let stored = 0
    let checked = 0
    let recallsUndone = 0
    // A check that cannot run (the runtime refused a request four times) is counted and reported,
    // never the end of the run: the day's figures are printed whatever happens here.
    let unchecked = 0
    const guard = async (what: string, check: () => Promise<void>) => {
      try {
        await check()
      } catch (e) {
        unchecked++
        problems.push(`${what}: not checked (${String(e).slice(0, 160)})`)
      }
    }
    await pool([...byId.values()], SETUP_CONCURRENCY, (c) => guard(c.id, async () => {
      // A socket for this check only: one kept per reader held thousands of hubs live, and one
      // workerd runs out of file descriptors at ~6,600 live SQLite objects (bench/sqlite-objects.ts).
      const reader = c.members[0]!
      const d = await Device.open(base, await tokenOf(base, reader), new Map())
      let log: ConversationEvent[]
      try {
        log = (await d.sync(c.id, 0)).filter((e) => e.type === 'message')
      } finally {
        d.close()
      }
      stored += log.length
      const seen = new Map<string, number>()
      for (const e of log) {
        if (seen.has(e.clientMsgId)) (duplicates++, problems.push(`${c.id}: ${e.clientMsgId} at ${seen.get(e.clientMsgId)} and ${e.seq}`))
        seen.set(e.clientMsgId, e.seq)
      }
      const bySeq = new Map(log.map((e) => [e.seq, e]))
      for (const s of ackedBy.get(c.id)?.values() ?? []) {
        const e = bySeq.get(s.seq!)
        if (seen.get(s.clientMsgId) !== s.seq || e?.type !== 'message') {
          lost++
          problems.push(`${c.id}: acked ${s.clientMsgId} (seq ${s.seq}) is not in the log`)
          continue
        }
        s.recalledInLog = !!e.recalled || e.body === null
        if (s.recalled && !s.recalledInLog) (recallsUndone++, problems.push(`${c.id}: the acknowledged recall of seq ${s.seq} is not in the log`))
      }
      // D1, read through the history API from the conversation's shard, page by page.
      const d1 = new Map<number, ConversationEvent>()
      for (let before: number | null = null; ; ) {
        const page: { body: HistoryPage } = await http<HistoryPage>(base, `/api/conversations/${c.id}/messages?limit=100${before ? `&before=${before}` : ''}`, { token: await tokenOf(base, reader) })
        for (const e of page.body.events) if (e.type === 'message') d1.set(e.seq, e)
        if (page.body.nextBefore === null) break
        before = page.body.nextBefore
      }
      for (const e of log) {
        const row = d1.get(e.seq)
        if (!row || row.clientMsgId !== e.clientMsgId || JSON.stringify(row.type === 'message' ? row.body : null) !== JSON.stringify(e.type === 'message' ? e.body : null)) {
          d1Mismatches++
          if (problems.length < 50) problems.push(`${c.id}: D1 differs from the log at seq ${e.seq}`)
        }
      }
      if (d1.size !== log.length) (d1Mismatches++, problems.push(`${c.id}: D1 holds ${d1.size} messages, the log ${log.length}`))
      checked++
    }).finally(() => {
      // Progress counts checks that could not run, too: a runtime that stopped answering shows here.
      if ((checked + unchecked) % 500 === 0) console.log(`  ${checked + unchecked} of ${byId.size} conversations: ${checked} checked (${lost} lost, ${duplicates} duplicated, ${d1Mismatches} D1 differences), ${unchecked} could not be`)
    }))

    // Search: sampled messages are found by their word, recalled ones are not. A recall whose answer
    // never came (the client gave up waiting) was often carried out: the log says which.
    const live = acked.filter((s) => !s.recalled && s.recalledInLog === false)
    const recalledUnanswered = acked.filter((s) => !s.recalled && s.recalledInLog).length
    const sample = Array.from({ length: Math.min(100, live.length) }, () => pick(live))
    let found = 0
    let recalledFound = 0
    const personOf = new Map(people.map((p) => [p.auth.user.id, p]))
    for (const s of sample) {
      await guard(`search for ${s.token}`, async () => {
        const r = await http<{ hits: SearchHit[] }>(base, `/api/search?q=${s.token}`, { token: await tokenOf(base, personOf.get(s.senderId)!) })
        if (r.body.hits.some((h) => h.conversationId === s.conversationId && h.seq === s.seq)) found++
        else problems.push(`search did not find ${s.token} (${s.conversationId} seq ${s.seq})`)
      })
    }
    const recalledSample = acked.filter((s) => s.recalled).slice(0, 20)
    for (const s of recalledSample) {
      await guard(`search for recalled ${s.token}`, async () => {
        const r = await http<{ hits: SearchHit[] }>(base, `/api/search?q=${s.token}`, { token: await tokenOf(base, personOf.get(s.senderId)!) })
        if (r.body.hits.length > 0) (recalledFound++, problems.push(`search found recalled ${s.token}`))
      })
    }

    // The databases are read from disk once the runtime is stopped.
    await server.stop()
    stopped = true
    // Each conversation's rows are on its recorded shard only; the shards' sizes.
    const d1 = (binding: string, sql: string) =>
      JSON.parse(execFileSync('npx', ['wrangler', 'd1', 'execute', binding, '--local', '--persist-to', server.stateDir ?? stateDir, '--json', '--command', sql], { cwd: ROOT, env: { ...process.env, ...DEV_ENV }, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 }))[0].results as Record<string, unknown>[]
    const placed = new Map(d1('DB', 'SELECT id, history_shard FROM conversations').map((r) => [r.id as string, r.history_shard as string]))
    // D1 does not let a query read its page count: the size shown is the stored bodies' bytes.
    const shards: { binding: string; conversations: number; rows: number; bytes: number }[] = []
    let misplaced = 0
    for (const binding of ['DB', 'HISTORY_0', 'HISTORY_1']) {
      const per = d1(binding, 'SELECT conversation_id, count(*) AS n FROM messages GROUP BY conversation_id')
      for (const r of per) if (placed.get(r.conversation_id as string) !== binding) (misplaced++, problems.push(`${r.conversation_id}: rows on ${binding}, placed on ${placed.get(r.conversation_id as string)}`))
      const size = d1(binding, 'SELECT coalesce(sum(length(body)), 0) AS bytes FROM messages')[0]?.bytes as number
      shards.push({ binding, conversations: per.length, rows: per.reduce((a, r) => a + (r.n as number), 0), bytes: size })
    }

    // The report.
    const phases: Phase[] = ['night', 'morning', 'peak', 'evening']
    const span = { night: nightEnd, morning: peakStart - nightEnd, peak: PEAK_MIN, evening: DAY_MIN - peakEnd }
    const rows = phases.map((ph) => `| ${ph} (${span[ph].toFixed(1)} min) | ${offered[ph]} | ${latencies[ph].length} | ${(latencies[ph].length / Math.max(1e-9, span[ph] * 60)).toFixed(0)} | ${fmt(percentile(latencies[ph], 50))} | ${fmt(percentile(latencies[ph], 99))} |`)
    const verdict = unchecked === 0 && lost === 0 && duplicates === 0 && d1Mismatches === 0 && misplaced === 0 && recallsUndone === 0 && found === sample.length && recalledFound === 0
    const report = [
      `### Soak run ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC: ${verdict ? 'passed' : 'FAILED'}`,
      '',
      `\`npm run soak -- ${bare ? '--bare ' : ''}--users=${USERS} --conversations=${CONVERSATIONS} --minutes=${DAY_MIN} --peak=${PEAK} --peak-minutes=${PEAK_MIN} --online=${ONLINE_MAX}\` against ${bare ? 'the same bundle on bare workerd through Miniflare' : 'wrangler dev'} (the \`npm run dev\` config, two history shards; workerd's autogates on, for the 8 GiB SQLite heap) on this machine (${os.cpus().length} cores). Setup (${byId.size} conversations, their people and friendships ${viaApi ? 'made through the API' : 'written into D1 (bench/soak-seed.ts)'}, the runtime started) took ${setupS.toFixed(0)} s.`,
      '',
      '| phase | messages asked | acked | acked msg/s | send→ack p50 ms | p99 ms |',
      '| --- | ---: | ---: | ---: | ---: | ---: |',
      ...rows,
      '',
      `Online at most ${onlinePeak} sockets; ${reconnects} connects (${connectFailures} failed, retried with the app's backoff), each syncing every chat of its person: p50 ${fmt(percentile(syncMs, 50))} ms, p99 ${fmt(percentile(syncMs, 99))} ms. Refused: ${Object.entries(refused).map(([k, v]) => `${v} ${k}`).join(', ') || 'none'}. Recalled: ${recalls} acknowledged, and ${recalledUnanswered} more whose answer never came were carried out (the log shows them recalled).`,
      '',
      `Checks: ${acked.length} acknowledged, ${stored} messages in the logs; **${lost} lost, ${duplicates} duplicated**; D1 differs from the logs in ${d1Mismatches} places; ${recallsUndone} acknowledged recalls missing from the logs; ${misplaced} conversations with rows off their shard; search found ${found} of ${sample.length} sampled messages and ${recalledFound} of ${recalledSample.length} recalled ones; ${unchecked} checks could not run. ${signedOut} people found their session ended (a refresh retried after its window) and signed in again.`,
      '',
      '| shard | conversations | rows (events) | bytes of bodies |',
      '| --- | ---: | ---: | ---: |',
      ...shards.map((s) => `| ${s.binding} | ${s.conversations} | ${s.rows} | ${s.bytes} |`),
      ...(problems.length ? ['', 'First problems:', ...problems.slice(0, 10).map((p) => `- ${p}`)] : []),
      '',
    ].join('\n')
    console.log(`\n${report}`)
    if (record) appendFileSync(path.join(ROOT, 'bench/results.md'), `\n${report}`)
    process.exitCode = verdict ? 0 : 1
  } finally {
    if (!stopped) await server.stop()
  }
}

await main()
