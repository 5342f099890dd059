// `npm run bench:commits`: what one message costs in durable writes, counted by the kernel rather
// than by reading the code. Local workerd backs every Durable Object (and D1, itself an object) with
// its own SQLite file and syncs the disk once per commit, so fsync/fdatasync calls of the runtime's
// processes are its commits. strace counts them while a 1:1 chat and a 10-person group each carry
// N messages sent one at a time, with every recipient confirming delivery and reading, as the PWA
// does. Needs strace (apt-get install strace) and ptrace permission (root in this sandbox).
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { processTree, startServer } from '../test/e2e/server'
import { BenchClient, WriterClient } from './client'

const N = Number(process.argv.find((a) => a.startsWith('--messages='))?.split('=')[1] ?? 200)
/** `--gap-ms=400`: a pause between messages, as in a conversation people type (each D1 tick then carries one). */
const GAP_MS = Number(process.argv.find((a) => a.startsWith('--gap-ms='))?.split('=')[1] ?? 0)
/** `--hub-writes`: the sender writes on its chat socket, through its hub, as before writer sockets. */
const HUB_WRITES = process.argv.includes('--hub-writes')

async function json<T>(url: string, body?: unknown, token?: string): Promise<T> {
  const res = await fetch(url, { method: body === undefined ? 'GET' : 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: body === undefined ? undefined : JSON.stringify(body) })
  if (!res.ok) throw new Error(`${url}: ${res.status} ${await res.text()}`)
  return (await res.json()) as T
}

/** Counts the sync calls of every workerd process under `root` while `fn` runs. */
async function countSyncs(root: number, fn: () => Promise<void>): Promise<number> {
  const pids = processTree(root).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'workerd'
    } catch {
      return false
    }
  })
  const tracer = spawn('strace', ['-f', '-c', '-e', 'trace=fsync,fdatasync,msync,sync_file_range', ...pids.flatMap((p) => ['-p', String(p)])], { stdio: ['ignore', 'ignore', 'pipe'] })
  let out = ''
  tracer.stderr.on('data', (d) => (out += d))
  await new Promise((r) => setTimeout(r, 1000))
  await fn()
  // Let write-behind work (D1 flushes, cursor ticks) that the messages caused finish inside the window.
  await new Promise((r) => setTimeout(r, 3000))
  tracer.kill('SIGINT')
  await new Promise((r) => tracer.once('exit', r))
  let total = 0
  for (const line of out.split('\n')) {
    const m = line.trim().match(/^\S+\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync|msync|sync_file_range)$/)
    if (m) total += Number(m[1])
  }
  return total
}

async function main() {
  const server = await startServer({ vars: { WRITE_RATE: '1000000/1000000', FRAME_RATE: '1000000/1000000' } })
  try {
    const base = server.url
    const tag = Date.now().toString(36)
    const users: { id: string; handle: string; token: string }[] = []
    for (let i = 0; i < 10; i++) {
      const handle = `c${tag}_${i}`
      const r = await json<{ accessToken: string; user: { id: string } }>(`${base}/api/auth/register`, { handle, password: 'bench-password-1', displayName: handle })
      users.push({ id: r.user.id, handle, token: r.accessToken })
    }
    for (const u of users.slice(1)) {
      const req = await json<{ id: string }>(`${base}/api/friends/requests`, { handle: u.handle }, users[0]!.token)
      await json(`${base}/api/friends/requests/${req.id}/accept`, {}, u.token)
    }
    const direct = (await json<{ conversation: { id: string } }>(`${base}/api/conversations`, { peerHandle: users[1]!.handle }, users[0]!.token)).conversation.id
    const group = (await json<{ conversation: { id: string } }>(`${base}/api/conversations/groups`, { title: 'commits', memberIds: users.slice(1).map((u) => u.id) }, users[0]!.token)).conversation.id
    const socket = async (u: (typeof users)[number], path: string, confirm: boolean) => {
      const { ticket } = await json<{ ticket: string }>(`${base}/api/ws/ticket`, {}, u.token)
      return BenchClient.open(`${base.replace(/^http/, 'ws')}${path}?ticket=${encodeURIComponent(ticket)}`, confirm)
    }
    const clients = await Promise.all(users.map((u) => socket(u, '/api/ws', true)))
    // The sender writes on writer sockets, as the PWA does in an open chat.
    const sender = HUB_WRITES ? clients[0]! : new WriterClient(clients[0]!, (conv) => socket(users[0]!, `/api/ws/conversations/${conv}`, true))
    // Readers mark what they received as read, as an open chat in the PWA does.
    for (const c of clients) {
      const prev = c.onEvent
      c.onEvent = (conv, seq, id, at) => {
        prev?.(conv, seq, id, at)
        c.read(conv, seq)
      }
    }
    const rows: string[] = []
    for (const [name, conv] of [['1:1 text message', direct], ['group text message, 10 members', group]] as const) {
      // Warm the objects first, so waking them is not counted as the message's cost.
      for (let i = 0; i < 10; i++) await sender.send(conv, `warm ${i}`)
      await new Promise((r) => setTimeout(r, 1500))
      const syncs = await countSyncs(server.pid(), async () => {
        for (let i = 0; i < N; i++) {
          await sender.send(conv, `count ${i}`)
          if (GAP_MS) await new Promise((r) => setTimeout(r, GAP_MS))
        }
      })
      rows.push(`| ${name} | ${N} | ${syncs} | ${(syncs / N).toFixed(2)} |`)
    }
    const pace = GAP_MS ? `one every ${GAP_MS} ms` : 'one at a time'
    console.log(`\n| workload (sent ${pace}, every recipient confirms and reads) | messages | disk syncs (commits) | per message |\n| --- | ---: | ---: | ---: |\n${rows.join('\n')}`)
    sender.close()
  } finally {
    await server.stop()
  }
}

await main()
