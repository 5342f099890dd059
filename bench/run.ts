// `npm run bench`: echovalley beside the platform floor (a minimal SQLite Durable Object chat,
// bench/floor/worker.ts), both under wrangler dev (the runtime `npm run dev` uses) and on bare
// workerd through Miniflare, a Node reference server (ws + SQLite, bench/reference-server.ts) and
// Prosody, the same workloads against each in one run. Prints a table and writes bench/results.md
// (a subset or --quick run writes bench/results-partial.md, so it never replaces the full record).
//   npm run bench [-- --quick] [-- --only=latency,fanout] [-- --systems=echovalley,floor]
//   --systems=echovalley-bare-hub-writes (or echovalley-hub-writes, echovalley-bare-no-metrics) adds a variant; BENCH_IDLE_WAIT_MS the idle wait.
//   BENCH_TP_S=40 lengthens the throughput runs and BENCH_LATENCY_SENDS=20000 the one-in-flight run (to take a CPU profile with BENCH_INSPECTOR).
//   BENCH_SYNC_TRACE=1 prints how long each sync page waited (a stalled page, or every page slow).
//   BENCH_FANOUT_TRACE=1 prints every fan-out send's time in order (a p99 made of one stall, or of a drift).
//   BENCH_IDLE_TRACE=1 prints what each idle reading's resident memory is made of; BENCH_FLOOR_LOBBY=shared puts the floor's idle sockets in one object.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { freePort, processTree } from '../test/e2e/server'
import { BenchClient, type LoadClient } from './client'
import { floorTarget, productTarget } from './workerd-targets'
import { prosodyTarget } from './prosody'
import type { Target, User } from './target'
import type WebSocket from 'ws'
import { captureClock, decodeVoiceFrame, encodeVoiceFrame, VOICE_GOT_EVERY_MS } from '../worker/shared/voice'
import { opusFixture } from './opus-packets'

const QUICK = process.argv.includes('--quick')
const listArg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]?.split(',')
/** `--only=latency,rest,load,fanout,throughput,sync,idle,restart` runs a subset; `--systems=reference` one side. */
const ONLY = listArg('only')
const SYSTEMS = listArg('systems')
const ROOT = path.resolve(import.meta.dirname, '..')
/** Only a full run replaces the recorded results; a subset or --quick run goes beside them (not committed). */
const RESULTS = QUICK || ONLY || SYSTEMS ? 'bench/results-partial.md' : 'bench/results.md'
/** Durable Objects hibernate after 10 s without events; idle readings wait longer than that. */
const HIBERNATE_MS = 12_000
/** Idle memory is read after this: a hub hands its metrics over 10 s after its socket opened, then hibernates 10 s later. */
const IDLE_MEMORY_WAIT_MS = Number(process.env.BENCH_IDLE_WAIT_MS) || 25_000
const SIZES = {
  /** Sends before the timed ones, so every system is measured with its code compiled (JIT), not while it warms up. */
  latencyWarm: QUICK ? 100 : 1000,
  latencySends: Number(process.env.BENCH_LATENCY_SENDS ?? (QUICK ? 200 : 2000)),
  loadRate: 2000,
  loadSeconds: QUICK ? 3 : 5,
  loadConversations: 100,
  fanout: process.env.BENCH_FANOUT ? process.env.BENCH_FANOUT.split(',').map(Number) : QUICK ? [10, 100] : [10, 100, 1000],
  /** Timed sends per fan-out size below 1,000: a p99 needs well over 100 (of the 30 used until 12-04 it was the slowest send). */
  fanoutSends: QUICK ? 10 : 200,
  throughputSeconds: Number(process.env.BENCH_TP_S ?? (QUICK ? 3 : 5)),
  sync: QUICK ? [1000] : [1000, 10_000],
  restartClients: 100,
  /** Connections added per step of the idle-memory reading, and the steps (readings at 1·n … steps·n open). */
  idle: QUICK ? 150 : 500,
  idleSteps: 4,
  /** [speakers, listeners] per voice room. */
  voice: (QUICK ? [[1, 50]] : [[1, 50], [3, 50], [1, 200]]) as [number, number][],
}
/** How long each voice room speaks. */
const VOICE_SECONDS = QUICK ? 5 : 10

// ---- measurement helpers ----

function pct(xs: number[], p: number): number {
  if (!xs.length) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!
}

async function pool<T, R>(items: T[], width: number, fn: (t: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++
        out[i] = await fn(items[i]!, i)
      }
    }),
  )
  return out
}

/** Sums one number read from /proc/<pid>/… over a process tree; a process that has gone counts 0. */
function sumOverTree(pid: number, read: (p: number) => number): number {
  return processTree(pid).reduce((total, p) => {
    try {
      return total + read(p)
    } catch {
      return total
    }
  }, 0)
}

/** What resident memory is made of (Linux /proc/<pid>/status), in bytes. */
interface Resident {
  rss: number
  anon: number
  file: number
  shmem: number
}

/**
 * Resident memory of the processes that serve connections, in bytes (Linux /proc): for a workerd
 * system its workerd processes (the runtime and, under wrangler dev, its proxy), not the Node
 * tooling around them, whose heap moves on its own; otherwise the whole tree. The median (by total)
 * of three readings a second apart, with its anonymous, file-backed and shared parts.
 */
async function rss(pid: number): Promise<Resident> {
  const tree = processTree(pid)
  const runtimes = tree.filter((p) => {
    try {
      return readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'workerd'
    } catch {
      return false
    }
  })
  const counted = runtimes.length ? runtimes : tree
  const kib = (status: string, field: string) => Number(status.match(new RegExp(`${field}:\\s+(\\d+)`))?.[1] ?? 0) * 1024
  const read = () => counted.reduce((n: Resident, p) => {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8')
      return { rss: n.rss + kib(status, 'VmRSS'), anon: n.anon + kib(status, 'RssAnon'), file: n.file + kib(status, 'RssFile'), shmem: n.shmem + kib(status, 'RssShmem') }
    } catch {
      return n
    }
  }, { rss: 0, anon: 0, file: 0, shmem: 0 })
  const readings: Resident[] = []
  for (let i = 0; i < 3; i++) {
    readings.push(read())
    await new Promise((r) => setTimeout(r, 1000))
  }
  return readings.sort((a, b) => a.rss - b.rss)[1]!
}

/** Pins a process tree to one core, so the generator (the other core) does not compete with it. */
function pin(pid: number, cpu: number) {
  for (const p of processTree(pid)) {
    try {
      execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(p)], { stdio: 'ignore' })
    } catch {
      // no taskset, or the process has gone
    }
  }
}

/** CPU time (ms) used so far by a process and its descendants (Linux /proc; 100 ticks a second). */
function treeCpuMs(pid: number): number {
  return sumOverTree(pid, (p) => {
    const fields = readFileSync(`/proc/${p}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')
    return (Number(fields[11]) + Number(fields[12])) * 10 // utime + stime, in ticks of 10 ms
  })
}

/**
 * CPU use during `fn`, each as a share of one core: the generator (this process) and the server's
 * process tree. Near 1.0 means that side was the limit (both are pinned to one core each).
 */
async function withCpu<T>(fn: () => Promise<T>, serverPid?: number): Promise<{ value: T; genCpu: number; serverCpu: number }> {
  const start = process.cpuUsage()
  const server0 = serverPid ? treeCpuMs(serverPid) : 0
  const t0 = performance.now()
  const value = await fn()
  const used = process.cpuUsage(start)
  const elapsed = performance.now() - t0
  // A process of the tree that exited (a reload) takes its CPU time with it: no figure then.
  const serverCpu = serverPid ? (treeCpuMs(serverPid) - server0) / elapsed : NaN
  return { value, genCpu: (used.user + used.system) / 1000 / elapsed, serverCpu: serverCpu >= 0 ? serverCpu : NaN }
}

/** Waits (up to a minute) until the server is nearly idle, so one scenario's backlog does not land in the next. */
async function settle(serverPid: number) {
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    const before = treeCpuMs(serverPid)
    await new Promise((r) => setTimeout(r, 500))
    if (treeCpuMs(serverPid) - before < 50) return
  }
}

// ---- the systems under test ----

async function json<T>(url: string, init: RequestInit & { token?: string; body?: string } = {}): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(url, { ...init, headers: { 'content-type': 'application/json', ...(init.token ? { authorization: `Bearer ${init.token}` } : {}) } })
    if (res.ok) return (await res.json()) as T
    if (res.status < 500 || attempt > 4) throw new Error(`${init.method ?? 'GET'} ${url}: ${res.status} ${await res.text()}`)
    await new Promise((r) => setTimeout(r, 200 * (attempt + 1)))
  }
}

async function referenceTarget(): Promise<Target> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'echovalley-ref-'))
  const port = await freePort()
  let child: ChildProcess
  const launch = async () => {
    child = spawn('taskset', ['-c', '1', process.execPath, '--import', 'tsx', path.join(ROOT, 'bench/reference-server.ts'), '--port', String(port), '--db', path.join(dir, 'ref.sqlite')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    await new Promise<void>((resolve) => child.stdout!.on('data', (d: Buffer) => d.toString().includes('listening') && resolve()))
  }
  await launch()
  const base = `http://127.0.0.1:${port}`
  const setup = (conversationId: string, userIds: string[]) => json(`${base}/setup`, { method: 'POST', body: JSON.stringify({ conversationId, userIds }) })
  return {
    name: 'reference',
    async users(n) {
      return Array.from({ length: n }, () => {
        const id = randomUUID()
        return { id, handle: id, token: '' }
      })
    },
    async direct(a, b) {
      const id = randomUUID()
      await setup(id, [a.id, b.id])
      return id
    },
    async group(owner, others) {
      const id = randomUUID()
      await setup(id, [owner.id, ...others.map((o) => o.id)])
      return id
    },
    connect: (u) => BenchClient.open(`ws://127.0.0.1:${port}/ws?user=${u.id}`, false),
    pid: () => child.pid!,
    async restart() {
      child.kill('SIGKILL')
      await new Promise((r) => child.once('exit', r))
      await launch()
    },
    async stop() {
      child.kill('SIGTERM')
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

// ---- workloads ----

interface Row {
  metric: string
  unit: string
  /** Lower is better (latency, memory) or higher (throughput). */
  better: 'lower' | 'higher'
  values: Record<string, number>
  notes: string[]
}

const rows: Row[] = []
const failures: string[] = []
function record(metric: string, unit: string, better: Row['better'], system: string, value: number, note?: string) {
  let row = rows.find((r) => r.metric === metric)
  if (!row) rows.push((row = { metric, unit, better, values: {}, notes: [] }))
  row.values[system] = value
  if (note) row.notes.push(`${system}: ${note}`)
  console.log(`  ${system.padEnd(10)} ${metric}: ${Number.isFinite(value) ? value.toFixed(unit === 'ms' ? 2 : unit === 'KiB' ? 1 : 0) : 'n/a'} ${unit}${note ? ` (${note})` : ''}`)
}
const saturated = (genCpu: number, serverCpu = NaN) =>
  [
    genCpu > 0.85 ? `generator at ${Math.round(genCpu * 100)}% of a core: may be the limit` : undefined,
    Number.isFinite(serverCpu) ? `server at ${Math.round(serverCpu * 100)}% of its core` : undefined,
  ].filter(Boolean).join('; ') || undefined

async function latency(t: Target, users: User[]) {
  const conv = await t.direct(users[0]!, users[1]!)
  const a = await t.connect(users[0]!)
  const b = await t.connect(users[1]!)
  const measure = async (label: string) => {
    const times: number[] = []
    for (let i = 0; i < SIZES.latencyWarm; i++) await a.send(conv, `warm ${i}`)
    for (let i = 0; i < SIZES.latencySends; i++) {
      const t0 = performance.now()
      await a.send(conv, `ping ${i}`)
      times.push(performance.now() - t0)
    }
    record(`send→ack p50, one in flight${label}`, 'ms', 'lower', t.name, pct(times, 50))
    record(`send→ack p99, one in flight${label}`, 'ms', 'lower', t.name, pct(times, 99))
  }
  // The recipient online with another chat on screen: echovalley delivers through their hub.
  await measure(', recipient online elsewhere')
  // Both with the chat on screen, as in a live conversation (the floor's only case): echovalley's
  // room sends the event on the recipient's writer socket.
  await b.ready?.(conv)
  await measure(', both in the chat')
  a.close()
  b.close()
}

/** What checking the session on every REST call costs: an authenticated read beside an open one. */
async function restCalls(t: Target, users: User[]) {
  if (!t.rest) return
  const authed: number[] = []
  const open: number[] = []
  for (let i = 0; i < 50; i++) await Promise.all([t.rest.authed(users[0]!), t.rest.open()])
  for (let i = 0; i < 300; i++) {
    let t0 = performance.now()
    await t.rest.open()
    open.push(performance.now() - t0)
    t0 = performance.now()
    await t.rest.authed(users[0]!)
    authed.push(performance.now() - t0)
  }
  record('REST p50, GET /api/health/live (no auth)', 'ms', 'lower', t.name, pct(open, 50))
  record('REST p50, GET /api/me (token + session check + user row)', 'ms', 'lower', t.name, pct(authed, 50))
}

/** Open loop at a fixed total rate over many conversations; each keeps one write in flight, so queueing shows in latency. */
async function underLoad(t: Target, users: User[]) {
  const n = SIZES.loadConversations
  const convs = await pool(Array.from({ length: n }, (_, i) => i), 8, (i) => t.direct(users[2 * i]!, users[2 * i + 1]!))
  const senders = await pool(convs, 16, async (conv, i) => {
    const c = await t.connect(users[2 * i]!)
    await c.ready?.(conv)
    return c
  })
  await settle(t.pid())
  const times: number[] = []
  let acked = 0
  let refused = 0
  let unsent = 0
  const perConvInterval = (1000 * n) / SIZES.loadRate
  const { genCpu, serverCpu, value: seconds } = await withCpu(async () => {
    const t0 = performance.now()
    const end = t0 + SIZES.loadSeconds * 1000
    await Promise.all(
      convs.map(async (conv, i) => {
        let due = t0 + Math.random() * perConvInterval
        while (due < end) {
          // A server that falls behind is not waited for past the end: what was due and never sent is counted.
          if (performance.now() >= end) {
            unsent += Math.ceil((end - due) / perConvInterval)
            break
          }
          const wait = due - performance.now()
          if (wait > 0) await new Promise((r) => setTimeout(r, wait))
          const s = performance.now()
          // Latency counts from when the message was due, so a backlog shows.
          if ((await senders[i]!.send(conv, 'load')) < 0) refused++
          else acked++
          times.push(performance.now() - Math.min(s, due))
          due += perConvInterval
        }
      }),
    )
    return (performance.now() - t0) / 1000
  }, t.pid())
  const rate = acked / seconds
  const note = [saturated(genCpu, serverCpu), rate < SIZES.loadRate * 0.95 ? `reached ${Math.round(rate)} msg/s of ${SIZES.loadRate}` : undefined, refused ? `${refused} refused` : undefined, unsent ? `${unsent} due messages never sent (backlog at the end)` : undefined].filter(Boolean).join('; ') || undefined
  record(`send→ack p50 at ${SIZES.loadRate} msg/s offered`, 'ms', 'lower', t.name, pct(times, 50), note)
  record(`send→ack p99 at ${SIZES.loadRate} msg/s offered`, 'ms', 'lower', t.name, pct(times, 99))
  record(`achieved rate at ${SIZES.loadRate} msg/s offered`, 'msg/s', 'higher', t.name, rate)
  senders.forEach((s) => s.close())
}

async function fanout(t: Target, users: User[], size: number) {
  const group = users.slice(0, size)
  const conv = await t.group(group[0]!, group.slice(1))
  const clients = await pool(group, 16, (u) => t.connect(u))
  await clients[0]!.ready?.(conv)
  const latest = new Map<string, number>()
  const counts = new Map<string, number>()
  const waiting = new Map<string, () => void>()
  for (const c of clients.slice(1)) {
    c.onEvent = (_conv, _seq, id, at) => {
      const n = (counts.get(id) ?? 0) + 1
      counts.set(id, n)
      latest.set(id, at)
      if (n === size - 1) waiting.get(id)?.()
    }
  }
  const times: number[] = []
  let incomplete = 0
  const sends = Number(process.env.BENCH_FANOUT_SENDS) || (size >= 1000 ? Math.min(10, SIZES.fanoutSends) : SIZES.fanoutSends)
  const sendAndWait = async (i: number) => {
    const id = randomUUID()
    const all = new Promise<boolean>((resolve) => {
      waiting.set(id, () => resolve(true))
      setTimeout(() => resolve(false), 30_000)
    })
    const t0 = performance.now()
    await clients[0]!.send(conv, `fan ${i}`, id)
    const complete = await all
    waiting.delete(id)
    return { complete, ms: (latest.get(id) ?? NaN) - t0 }
  }
  // The first message after the members have sat idle (> 10 s: their objects hibernated, as a
  // quiet group's are) is its own row; the p99 is over the messages that follow it.
  await new Promise((r) => setTimeout(r, HIBERNATE_MS))
  const cold = await sendAndWait(-1)
  const { genCpu, serverCpu } = await withCpu(async () => {
    for (let i = 0; i < sends; i++) {
      const r = await sendAndWait(i)
      if (!r.complete) incomplete++
      times.push(r.ms)
    }
  }, t.pid())
  // BENCH_FANOUT_TRACE=1 prints every send's time in order: a slow p99 is a periodic stall (a timer) or a drift.
  if (process.env.BENCH_FANOUT_TRACE) console.log(`  fan-out ${size} members, each send (ms): ${times.map((x) => x.toFixed(0)).join(' ')}`)
  record(`fan-out send→last receive, ${size} members, first message after ${HIBERNATE_MS / 1000} s idle`, 'ms', 'lower', t.name, cold.ms, cold.complete ? undefined : 'not received by all within 30 s')
  const note = [`${sends} sends, slowest ${Math.max(...times.filter(Number.isFinite)).toFixed(1)} ms`, saturated(genCpu, serverCpu), incomplete ? `${incomplete} of ${sends} sends not received by all within 30 s` : undefined].filter(Boolean).join('; ')
  record(`fan-out send→last receive p99, ${size} members`, 'ms', 'lower', t.name, pct(times, 99), note)
  clients.forEach((c) => c.close())
}

async function throughput(t: Target, users: User[]) {
  // One conversation, 10 members each with one write in flight.
  const group = users.slice(0, 10)
  const conv = await t.group(group[0]!, group.slice(1))
  const clients = await pool(group, 10, async (u) => {
    const c = await t.connect(u)
    await c.ready?.(conv)
    return c
  })
  const run = async (senders: { c: LoadClient; conv: string }[]) => {
    let acked = 0
    let refused = 0
    const end = performance.now() + SIZES.throughputSeconds * 1000
    const r = await withCpu(async () => {
      const t0 = performance.now()
      await Promise.all(
        senders.map(async ({ c, conv }) => {
          while (performance.now() < end) {
            if ((await c.send(conv, 'tp')) < 0) refused++
            else acked++
          }
        }),
      )
      return acked / ((performance.now() - t0) / 1000)
    }, t.pid())
    if (refused) failures.push(`${t.name} throughput: ${refused} sends refused`)
    return r
  }
  // Connecting starts work of its own (presence to friends): let it finish before measuring.
  await settle(t.pid())
  const one = await run(clients.map((c) => ({ c, conv })))
  record('sustained msg/s, one conversation (10 senders)', 'msg/s', 'higher', t.name, one.value, saturated(one.genCpu, one.serverCpu))
  clients.forEach((c) => c.close())
  const n = SIZES.loadConversations
  const convs = await pool(Array.from({ length: n }, (_, i) => i), 8, (i) => t.direct(users[2 * i]!, users[2 * i + 1]!))
  const senders = await pool(convs, 16, async (conv, i) => {
    const c = await t.connect(users[2 * i]!)
    await c.ready?.(conv)
    return { c, conv }
  })
  await settle(t.pid())
  const many = await run(senders)
  record(`sustained msg/s, ${n} conversations`, 'msg/s', 'higher', t.name, many.value, saturated(many.genCpu, many.serverCpu))
  senders.forEach((s) => s.c.close())
}

async function syncAfterAbsence(t: Target, users: User[]) {
  for (const missed of SIZES.sync) {
    const [a, b] = [users[0]!, users[1]!]
    const conv = await t.direct(a, b)
    const sender = await t.connect(a)
    const base = await sender.syncAll(conv, 0)
    // b is offline while `missed` messages arrive; several senders' worth, written in parallel conversations' style.
    for (let i = 0; i < missed; i += 50) await Promise.all(Array.from({ length: Math.min(50, missed - i) }, (_, k) => sender.send(conv, `missed ${i + k}`)))
    sender.close()
    const t0 = performance.now()
    const c = await t.connect(b)
    const got = await c.syncAll(conv, base)
    const ms = performance.now() - t0
    c.close()
    record(`reconnect + sync of ${missed.toLocaleString('en')} missed`, 'ms', 'lower', t.name, ms, got < missed ? `only ${got} arrived` : undefined)
  }
}

async function afterRestart(t: Target, users: User[]) {
  const n = SIZES.restartClients
  const convs = await pool(Array.from({ length: n / 2 }, (_, i) => i), 8, (i) => t.direct(users[2 * i]!, users[2 * i + 1]!))
  const writers = await pool(convs, 16, (_, i) => t.connect(users[2 * i]!))
  await Promise.all(writers.map(async (w, i) => { for (let k = 0; k < 20; k++) await w.send(convs[i]!, `before ${k}`) }))
  writers.forEach((w) => w.close())
  await t.restart()
  const t0 = performance.now()
  const totals = await pool(users.slice(0, n), n, async (u, i) => {
    const c = await t.connect(u)
    const got = await c.syncAll(convs[Math.floor(i / 2)]!, 0)
    c.close()
    return got
  })
  const ms = performance.now() - t0
  record(`${n} clients reconnect + sync after a restart`, 'ms', 'lower', t.name, ms, totals.some((g) => g < 20) ? 'some clients missed messages' : undefined)
}

async function idleConnections(t: Target) {
  const n = SIZES.idle
  // Users of their own, in no conversation and with no friends: a connect of a member of the earlier
  // scenarios' groups wakes rooms and greets friends, and the memory that work frees is reused by
  // the next step's sockets (a full run read steps of 37, 16 and 106 KiB that way).
  const users = await t.users(n * SIZES.idleSteps)
  const steps = Array.from({ length: SIZES.idleSteps }, (_, i) => users.slice(i * n, (i + 1) * n))
  // Create the per-user objects (and their storage) first, so the figure is the connection, not
  // the user's first visit, then restart the runtime (state on disk kept) and read from there.
  // Until 2026-12-04 the readings followed a 75 s wait for those objects' eviction in the same
  // process: the new connections then reused memory the evicted objects had freed (resident memory
  // does not shrink back), and the slope read 5–10 KiB where a fresh runtime reads ~110 KiB.
  const warm = await pool(steps.flat(), 16, (u) => t.connect(u))
  warm.forEach((c) => c.close())
  // The closes' own work (presence, metrics hand-overs) finishes before the restart cuts it off.
  await settle(t.pid())
  await t.restart()
  const t0 = performance.now()
  const clients = await pool(steps[0]!, 32, (u) => t.connect(u))
  const seconds = (performance.now() - t0) / 1000
  record('connections per second (ticket + upgrade)', 'conn/s', 'higher', t.name, n / seconds)
  // Memory: readings with n, 2n, … connections open, each taken once the objects hibernated
  // (> 10 s idle) and after a full collection where the system allows one; the figure is the
  // least-squares slope, so one reading disturbed by the allocator moves it less than a
  // difference of two did. A reading against an empty server mixes in memory the allocator has
  // not yet handed back, so the first has n open.
  const reading = async () => {
    await new Promise((r) => setTimeout(r, IDLE_MEMORY_WAIT_MS))
    // Settled: evictions of objects from earlier work hand memory back for a while, and a reading
    // taken meanwhile made the difference negative. Read until two readings 5 s apart agree.
    let last = { rss: NaN, heap: NaN }
    for (let i = 0; i < 8; i++) {
      const heap = (await t.collectGarbage?.()) ?? NaN
      const resident = await rss(t.pid())
      const now = { rss: resident.rss, heap }
      if (Math.abs(now.rss - last.rss) < 256 * 1024) {
        // BENCH_IDLE_TRACE=1: what the resident memory is made of (anonymous, file-backed pages such as code faulted in, shared).
        if (process.env.BENCH_IDLE_TRACE) console.log(`  idle reading: rss ${mib(resident.rss)}, anon ${mib(resident.anon)}, file ${mib(resident.file)}, shmem ${mib(resident.shmem)} MiB`)
        return now
      }
      last = now
      await new Promise((r) => setTimeout(r, 5_000))
    }
    return last
  }
  const readings = [{ open: n, ...(await reading()) }]
  for (const step of steps.slice(1)) {
    clients.push(...(await pool(step, 32, (u) => t.connect(u))))
    readings.push({ open: clients.length, ...(await reading()) })
  }
  const perConnection = slope(readings.map((r) => [r.open, r.rss])) / 1024
  const heapPer = slope(readings.map((r) => [r.open, r.heap])) / 1024
  const stepsKiB = readings.slice(1).map((r, i) => ((r.rss - readings[i]!.rss) / n / 1024).toFixed(1)).join(', ')
  const label = `memory per idle connection (slope over ${n} → ${clients.length} open, after ${IDLE_MEMORY_WAIT_MS / 1000} s idle)`
  const gc = t.collectGarbage ? `; garbage collected before each reading; of it the Worker isolate's JS heap ${heapPer.toFixed(1)} KiB` : ''
  record(label, 'KiB', 'lower', t.name, perConnection > 0 ? perConnection : NaN, perConnection > 0 ? `per step ${stepsKiB} KiB${gc}` : `resident memory fell over the readings (per step ${stepsKiB} KiB): not measurable`)
  clients.forEach((c) => c.close())
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1)

/** Least-squares slope of y over x. */
function slope(points: [number, number][]): number {
  const mx = points.reduce((a, [x]) => a + x, 0) / points.length
  const my = points.reduce((a, [, y]) => a + y, 0) / points.length
  const num = points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0)
  const den = points.reduce((a, [x]) => a + (x - mx) ** 2, 0)
  return num / den
}

/**
 * Voice rooms: speakers send real 20 ms Opus packets at their real pace; every listener reads as
 * fast as frames come (they keep up), so any frame missing is lost by the relay. Latency is the
 * frame's capture time (written by the speaker) to its arrival at a listener, one clock.
 */
async function voiceRooms(t: Target, users: User[]) {
  if (!t.voice) return
  const packets = opusFixture(VOICE_SECONDS)
  for (const [speakers, listeners] of SIZES.voice) {
    const people = users.slice(0, speakers + listeners)
    const conv = await t.group(people[0]!, people.slice(1))
    const sockets: WebSocket[] = []
    for (const u of people) sockets.push(await t.voice.join(u, conv))
    for (let i = 1; i < speakers; i++) await t.voice.promote(sockets[0]!, people[i]!.id)
    const latencies: number[] = []
    const received = new Map<WebSocket, number>()
    const reporters: ReturnType<typeof setInterval>[] = []
    for (const ws of sockets.slice(speakers)) {
      received.set(ws, 0)
      ws.on('message', (data: ArrayBuffer, binary: boolean) => {
        if (!binary) return
        const f = decodeVoiceFrame(data)
        if (!f) return
        latencies.push((captureClock() - f.captureMs) >>> 0)
        received.set(ws, received.get(ws)! + 1)
      })
      // What the PWA does: tell the room how much arrived, so it knows this listener keeps up.
      reporters.push(setInterval(() => ws.send(JSON.stringify({ type: 'got', n: received.get(ws) })), VOICE_GOT_EVERY_MS))
    }
    await settle(t.pid())
    const { genCpu, serverCpu } = await withCpu(async () => {
      await Promise.all(
        sockets.slice(0, speakers).map(async (ws, s) => {
          const t0 = performance.now() + s * 7
          for (let i = 0; i < packets.length; i++) {
            // At the frame's due time, as a microphone would deliver it (drift-free).
            const due = t0 + i * 20 - performance.now()
            if (due > 0) await new Promise((r) => setTimeout(r, due))
            ws.send(encodeVoiceFrame({ level: 100, seq: i, captureMs: captureClock(), packet: packets[i]! }))
          }
        }),
      )
      await new Promise((r) => setTimeout(r, 500))
    }, t.pid())
    const expected = packets.length * speakers
    const lost = [...received.values()].reduce((n, got) => n + Math.max(0, expected - got), 0)
    const label = `${speakers} speaker${speakers > 1 ? 's' : ''} → ${listeners} listeners`
    const note = saturated(genCpu, serverCpu)
    record(`voice relay p50, ${label}`, 'ms', 'lower', t.name, pct(latencies, 50), note)
    record(`voice relay p99, ${label}`, 'ms', 'lower', t.name, pct(latencies, 99))
    record(`voice frames lost of ${expected * listeners}, ${label}`, 'frames', 'lower', t.name, lost)
    record(`voice relay server CPU, ${label}`, '% of a core', 'lower', t.name, serverCpu * 100)
    reporters.forEach(clearInterval)
    sockets.forEach((ws) => ws.close())
  }
}

// ---- main ----

const SYSTEM_NAMES = ['echovalley', 'floor', 'echovalley-bare', 'floor-bare', 'echovalley-hub-writes', 'echovalley-bare-hub-writes', 'echovalley-bare-no-metrics', 'reference', 'prosody'] as const
/** Variants that each priced one choice on the message path (writer sockets, metrics), and the scenarios they run. */
const SCENARIOS_OF: Record<string, string[]> = { 'echovalley-hub-writes': ['latency', 'throughput'], 'echovalley-bare-hub-writes': ['latency', 'throughput'], 'echovalley-bare-no-metrics': ['latency', 'throughput'] }
/** The variants run only when named in --systems. */
const ON_REQUEST = new Set(Object.keys(SCENARIOS_OF))
/** Ratio columns: echovalley against the floor on the same runtime first, then the other servers. */
const RATIOS: [string, string][] = [
  ['echovalley', 'floor'],
  ['echovalley-bare', 'floor-bare'],
  ['echovalley', 'echovalley-hub-writes'],
  ['echovalley-bare', 'echovalley-bare-hub-writes'],
  ['echovalley-bare', 'echovalley-bare-no-metrics'],
  ['echovalley', 'prosody'],
  ['echovalley-bare', 'prosody'],
  ['echovalley', 'reference'],
]

function table(): string {
  const systems = SYSTEM_NAMES.filter((s) => rows.some((r) => r.values[s] !== undefined))
  const ratios = RATIOS.filter(([a, b]) => systems.includes(a as never) && systems.includes(b as never))
  const lines = [
    `| metric | ${systems.join(' | ')} | ${ratios.map(([a, b]) => `${a} ÷ ${b}`).join(' | ')} | notes |`,
    `| --- | ${systems.map(() => '---:').join(' | ')} | ${ratios.map(() => '---:').join(' | ')} | --- |`,
  ]
  for (const r of rows) {
    const fmt = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? 'n/a' : `${x.toFixed(r.unit === 'ms' ? 2 : r.unit === 'KiB' ? 1 : 0)} ${r.unit}`)
    const ratio = ([a, b]: [string, string]) => {
      const mine = r.values[a]
      const theirs = r.values[b]
      return mine !== undefined && theirs && Number.isFinite(mine) && Number.isFinite(theirs) ? `${(mine / theirs).toFixed(2)}` : 'n/a'
    }
    lines.push(`| ${r.metric} (${r.better} is better) | ${systems.map((s) => fmt(r.values[s])).join(' | ')} | ${ratios.map(ratio).join(' | ')} | ${r.notes.join('; ')} |`)
  }
  return lines.join('\n')
}

async function main() {
  try {
    execFileSync('taskset', ['-p', '-c', '0', String(process.pid)], { stdio: 'ignore' })
  } catch {
    console.warn('taskset is not available: generator and servers share cores')
  }
  const started = new Date()
  const want: Record<string, number> = { latency: 2, rest: 1, load: SIZES.loadConversations * 2, fanout: Math.max(...SIZES.fanout), throughput: SIZES.loadConversations * 2, sync: 2, idle: 0, restart: SIZES.restartClients, voice: Math.max(...SIZES.voice.map(([s, l]) => s + l)) }
  const needUsers = Math.max(...Object.entries(want).filter(([k]) => !ONLY || ONLY.includes(k)).map(([, n]) => n))
  const makers: [string, () => Promise<Target>][] = [
    ['echovalley', () => productTarget('wrangler')],
    ['floor', () => floorTarget('wrangler')],
    ['echovalley-bare', () => productTarget('bare')],
    ['floor-bare', () => floorTarget('bare')],
    ['echovalley-hub-writes', () => productTarget('wrangler', { writers: false })],
    ['echovalley-bare-hub-writes', () => productTarget('bare', { writers: false })],
    ['echovalley-bare-no-metrics', () => productTarget('bare', { metrics: false })],
    ['reference', referenceTarget],
    ['prosody', prosodyTarget],
  ]
  for (const [name, make] of makers) {
    if (SYSTEMS ? !SYSTEMS.includes(name) : ON_REQUEST.has(name)) continue
    let t: Target
    try {
      t = await make()
    } catch (e) {
      console.error(`  ${name} could not start: ${String(e)}`)
      failures.push(`${name}: could not start: ${String(e).slice(0, 200)}`)
      continue
    }
    try {
      const only = SCENARIOS_OF[name]?.filter((k) => !ONLY || ONLY.includes(k))
      const userCount = only ? Math.max(2, ...only.map((k) => want[k]!)) : needUsers
      console.log(`\n${t.name}: creating ${userCount} users`)
      const s0 = performance.now()
      const users = await t.users(userCount)
      console.log(`  (${((performance.now() - s0) / 1000).toFixed(1)} s)`)
      const scenarios: [string, () => Promise<void>][] = [
        ['latency', () => latency(t, users)],
        ['rest', () => restCalls(t, users)],
        ['load', () => underLoad(t, users)],
        ...SIZES.fanout.map((size): [string, () => Promise<void>] => ['fanout', () => fanout(t, users, size)]),
        ['throughput', () => throughput(t, users)],
        ['sync', () => syncAfterAbsence(t, users)],
        // Voice before the restart: the restarted runtime's late work (overdue alarms) stalled the first voice row once.
        ['voice', () => voiceRooms(t, users)],
        ['idle', () => idleConnections(t)],
        ['restart', () => afterRestart(t, users)],
      ]
      for (const [name, run] of scenarios) {
        if (ONLY && !ONLY.includes(name)) continue
        if (SCENARIOS_OF[t.name] && !SCENARIOS_OF[t.name]!.includes(name)) continue
        // One scenario failing (a server that falls over under load) is a finding, not the end of the run.
        try {
          await settle(t.pid())
          await run()
        } catch (e) {
          console.error(`  ${t.name} ${name} failed: ${String(e)}`)
          failures.push(`${t.name} ${name}: ${String(e).slice(0, 160)}`)
        }
      }
    } finally {
      await t.stop()
    }
    writeResults(started)
  }
  console.log(`\n${table()}\n\nwritten to ${RESULTS}`)
  process.exit(0)
}

/** Rewritten after each system, so a run cut short still leaves what it measured. */
function writeResults(started: Date) {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU'
  const out = `# echovalley benchmark

Run ${started.toISOString()} on ${os.cpus().length} × ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}, Node ${process.version}${QUICK ? ', --quick sizes' : ''}.
Systems: **echovalley** under \`wrangler dev\` (workerd with local D1, Durable Objects and Queues on disk, the runtime of
\`npm run dev\`) and **echovalley-bare**, the same bundle on bare workerd through Miniflare's API (no wrangler process or
proxy Worker in front${process.env.BENCH_ENTRY === '1' ? ', but through Miniflare\'s entry Worker' : ', clients on Miniflare\'s direct socket'}); **floor** and **floor-bare**, the platform floor on those two runtimes (\`bench/floor/worker.ts\`: one
minimal SQLite Durable Object per conversation that inserts a row and acks, the least a Durable Object chat can do);
**reference**, a Node ws + better-sqlite3 server (WAL, synchronous=FULL, commit before ack, no auth, receipts or push);
**prosody**, Debian's XMPP server (SQLite storage, MAM archiving, stream management; "acked" = the stream-management
answer after the message was archived), driven by @xmpp/client; its 1:1 messages are archived twice (each user has an
archive) and its groups are members-only MUC rooms. Every server is pinned to core 1 with taskset and the load generator
(this process) to core 0. Rate limits and the 50-person group ceiling are lifted for the run (\`WRITE_RATE\`,
\`GROUP_LIMIT\`); echovalley otherwise runs as shipped, its clients confirming delivery of every event as the PWA does.
A ratio above 1 means the first system's figure is larger (worse for latency and memory, better for rates).

${table()}
${failures.length ? `\nScenarios that failed (a finding, not left out):\n\n${failures.map((f) => `- ${f}`).join('\n')}\n` : ''}
Rerun with \`npm run bench\` (\`-- --quick\` for smaller sizes, \`-- --systems=echovalley,floor\` and \`-- --only=latency,fanout\` for a subset).
`
  writeFileSync(path.join(ROOT, RESULTS), out)
}

await main()
