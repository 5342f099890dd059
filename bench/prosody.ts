// Prosody (Debian's XMPP server, 0.12) as a reference: an established chat server doing the same
// jobs, driven over XMPP by @xmpp/client. Setup: SQL storage on SQLite, left at Prosody's defaults
// (rollback journal, synchronous=FULL: each commit fsyncs; the Node reference uses WAL); MAM
// (XEP-0313) archiving every message, never expiring; stream management (XEP-0198); carbons; MUC
// with MUC-MAM for groups; no TLS, no s2s, no rate limits (mod_limits not loaded), no mod_offline
// (clients catch up from MAM, as the product's sync does). Needs `apt-get install prosody lua-dbi-sqlite3`.
//
// What "accepted" means: send() writes the message and an SM <r/> behind it, and resolves on the
// <a h/> that covers the message, i.e. once the server has processed it. Prosody runs each
// connection's stanzas one at a time in order (mod_c2s: session.thread, a util.async runner), so the
// <r/> is answered only after the message's handlers have returned, and those archive before they
// route: mod_mam archives on pre-message/* (sender's archive) and message/* (recipient's) at
// priority 0, ahead of mod_message's delivery at -1; mod_muc_mam archives on muc-add-history, fired
// from muc-broadcast-message before the room broadcasts; mod_storage_sql commits each append in its
// own transaction. So a 1:1 message is committed twice (each user has an archive), a group one once.
//
// Approximations: a 1:1 conversation id is the sorted JID pair (no roster subscription needed); a
// group is a persistent members-only room that members join on connect, as clients autojoin
// bookmarks (presence broadcast off and no history on join, so joins are no presence flood, but
// Prosody still walks every occupant per join); `seq` is a per-connection running count, not a
// server sequence; accounts are written straight into Prosody's SQL store (see users()).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { createHash, createHmac, pbkdf2Sync, randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
// @ts-expect-error @xmpp/client ships no type declarations; the little used here is typed below.
import { client as untypedClient, xml as untypedXml } from '@xmpp/client'
import { freePort } from '../test/e2e/server'
import type { LoadClient } from './client'
import type { Target, User } from './target'

const HOST = 'bench.local'
const MUC_HOST = `conference.${HOST}`
const NS = {
  sm: 'urn:xmpp:sm:3',
  mam: 'urn:xmpp:mam:2',
  rsm: 'http://jabber.org/protocol/rsm',
  sid: 'urn:xmpp:sid:0',
  carbons: 'urn:xmpp:carbons:2',
  forward: 'urn:xmpp:forward:0',
  muc: 'http://jabber.org/protocol/muc',
  mucAdmin: 'http://jabber.org/protocol/muc#admin',
  data: 'jabber:x:data',
}
const PAGE = 200
const MAX_LIFETIME_S = 60 * 60

interface El {
  name: string
  attrs: Record<string, string | undefined>
  getChild(name: string, xmlns?: string): El | undefined
  getChildText(name: string, xmlns?: string): string | null
}
interface Xmpp {
  start(): Promise<unknown>
  stop(): Promise<unknown>
  send(el: El): Promise<void>
  /** One write for all of them (net.Socket under xmpp:// URIs). */
  sendMany(els: El[]): Promise<void>
  socket?: { setNoDelay(on: boolean): void }
  on(event: 'connect', fn: () => void): void
  on(event: 'stanza', fn: (el: El) => void): void
  on(event: 'error' | 'disconnect', fn: (e: unknown) => void): void
  iqCaller: { request(el: El, timeout?: number): Promise<El> }
  reconnect: { stop(): void }
  streamManagement: { enabled: boolean; on(event: 'ack' | 'fail', fn: (el: El) => void): void }
}
type Authenticate = (credentials: Record<string, unknown>, mechanism: string) => Promise<void>
const xmppClient = untypedClient as (opts: { service: string; domain: string; resource: string; timeout: number; credentials: (auth: Authenticate) => Promise<void> }) => Xmpp
const xml = untypedXml as (name: string, attrs?: Record<string, string>, ...children: (El | string)[]) => El

const bare = (jid = '') => jid.split('/')[0]!
const dmId = (a: string, b: string) => [a, b].sort().join(' ')
const isGroup = (conv: string) => !conv.includes(' ')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** SCRAM-SHA-1 keys for one password and salt (RFC 5802), as Prosody's internal_hashed stores them. */
function scram(password: string, salt: string, iterations: number) {
  const salted = pbkdf2Sync(password, salt, iterations, 20, 'sha1')
  const clientKey = createHmac('sha1', salted).update('Client Key').digest()
  const serverKey = createHmac('sha1', salted).update('Server Key').digest()
  return { clientKey, serverKey, storedKey: createHash('sha1').update(clientKey).digest() }
}

function config(dir: string, port: number): string {
  return `-- written by bench/prosody.ts
data_path = ${JSON.stringify(dir)}
pidfile = ${JSON.stringify(path.join(dir, 'prosody.pid'))}
certificates = ${JSON.stringify(dir)}
log = { { levels = { min = "warn" }, to = "file", filename = ${JSON.stringify(path.join(dir, 'prosody.log'))} } }
run_as_root = true -- stay the invoking user, whoever that is, so the temp dir stays readable
interfaces = { "127.0.0.1" }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { ${port} }
modules_enabled = { "roster", "saslauth", "disco", "mam", "smacks", "carbons", "ping" }
modules_disabled = { "s2s", "s2s_auth_certs", "offline", "limits" } -- limits is not autoloaded anyway
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "sql"
sql = { driver = "SQLite3", database = "prosody.sqlite" }
archive_expires_after = "never"
default_archive_policy = true
max_archive_query_results = ${PAGE}

VirtualHost "${HOST}"

Component "${MUC_HOST}" "muc"
  modules_enabled = { "muc_mam" }
  muc_log_all_rooms = true
  muc_log_expires_after = "never"
  muc_room_locking = false
  muc_room_default_persistent = true
  muc_room_default_members_only = true
  muc_room_default_presence_broadcast = {}
  muc_room_cache_size = 1000
`
}

/** Ready means a SASL attempt is answered: the host is up and has touched SQL (which creates the tables). */
function probe(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () =>
      s.write(`<?xml version='1.0'?><stream:stream to='${HOST}' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>${Buffer.from('\0probe\0probe').toString('base64')}</auth>`),
    )
    let seen = ''
    const done = (ok: boolean) => (s.destroy(), resolve(ok))
    s.on('data', (d) => /<(failure|success)\b/.test((seen += d.toString())) && done(true))
    s.on('error', () => done(false))
    s.setTimeout(2000, () => done(false))
  })
}

/** Kills prosody (and clears its dir) if this process dies, even by SIGKILL, or after MAX_LIFETIME_S. */
function watchdog(pid: number, dir: string): ChildProcess {
  const script = `end=$(($(date +%s) + ${MAX_LIFETIME_S})); while kill -0 $1 && [ $(date +%s) -lt $end ]; do sleep 1; done 2>/dev/null; kill -9 $2; rm -rf "$3"`
  const w = spawn('sh', ['-c', script, 'watchdog', String(process.pid), String(pid), dir], { detached: true, stdio: 'ignore' })
  w.unref()
  return w
}

class XmppLoadClient implements LoadClient {
  onEvent: LoadClient['onEvent'] = null
  private pending = new Map<string, { resolve: (n: number) => void; refused: boolean }>()
  private watchers = new Set<(el: El) => void>()
  private seqs = new Map<string, number>()
  private accepted = 0

  constructor(
    readonly xmpp: Xmpp,
    readonly jid: string,
  ) {
    xmpp.on('stanza', (el) => this.receive(el, performance.now()))
    xmpp.on('error', () => {}) // surfaces as a failed start(), a -1 send or a rejected sync
    xmpp.on('disconnect', () => [...this.pending.keys()].forEach((id) => this.settle(id, false)))
    xmpp.streamManagement.on('ack', (el) => this.settle(el.attrs.id, true))
    xmpp.streamManagement.on('fail', (el) => this.settle(el.attrs.id, false))
  }

  private peer(conv: string): string {
    return conv.split(' ').find((j) => j !== this.jid) ?? this.jid
  }

  private settle(id: string | undefined, ok: boolean) {
    const p = this.pending.get(id ?? '')
    if (!p) return
    this.pending.delete(id!)
    p.resolve(ok && !p.refused ? ++this.accepted : -1)
  }

  private receive(el: El, at: number) {
    this.watchers.forEach((w) => w(el))
    if (el.name !== 'message') return
    // A refusal comes back before the <a/> that covers the message (same in-order processing).
    if (el.attrs.type === 'error') {
      const p = this.pending.get(el.attrs.id ?? '')
      if (p) p.refused = true
      return
    }
    const carbon = el.attrs.from === this.jid ? (el.getChild('received', NS.carbons) ?? el.getChild('sent', NS.carbons)) : undefined
    const msg = carbon?.getChild('forwarded', NS.forward)?.getChild('message') ?? el
    if (!msg.getChild('body')) return // MAM results, room subjects, chat states
    const from = bare(msg.attrs.from)
    const conv = msg.attrs.type === 'groupchat' ? from : dmId(this.jid, from === this.jid ? bare(msg.attrs.to) : from)
    const seq = (this.seqs.get(conv) ?? 0) + 1
    this.seqs.set(conv, seq)
    const id = msg.getChild('origin-id', NS.sid)?.attrs.id ?? msg.attrs.id ?? ''
    this.onEvent?.(conv, seq, id, at)
  }

  /** Resolves with the first stanza `match` accepts. */
  waitFor(match: (el: El) => boolean, ms = 30_000): Promise<El> {
    return new Promise((resolve, reject) => {
      const w = (el: El) => match(el) && (this.watchers.delete(w), clearTimeout(timer), resolve(el))
      const timer = setTimeout(() => (this.watchers.delete(w), reject(new Error('timed out waiting for a stanza'))), ms)
      this.watchers.add(w)
    })
  }

  async join(room: string) {
    const occupant = `${room}/${this.jid.split('@')[0]}`
    const joined = this.waitFor((el) => el.name === 'presence' && el.attrs.from === occupant)
    await this.xmpp.send(xml('presence', { to: occupant }, xml('x', { xmlns: NS.muc }, xml('history', { maxstanzas: '0' }))))
    const el = await joined
    if (el.attrs.type === 'error') throw new Error(`${this.jid} could not join ${room}`)
  }

  send(conv: string, text: string, clientMsgId = randomUUID()): Promise<number> {
    const to = isGroup(conv) ? conv : this.peer(conv)
    const msg = xml('message', { to, type: isGroup(conv) ? 'groupchat' : 'chat', id: clientMsgId }, xml('body', {}, text), xml('origin-id', { xmlns: NS.sid, id: clientMsgId }))
    return new Promise((resolve) => {
      this.pending.set(clientMsgId, { resolve, refused: false })
      // One write, message then <r/>: the server answers the <r/> only after processing the message.
      this.xmpp.sendMany([msg, xml('r', { xmlns: NS.sm })]).catch(() => this.settle(clientMsgId, false))
    })
  }

  /** One MAM query page; counts the results that arrive before the closing iq result. */
  private async page(conv: string, rsm: { max: number; after?: string; before?: string }) {
    const queryid = randomUUID()
    let count = 0
    const counter = (el: El) => el.getChild('result', NS.mam)?.attrs.queryid === queryid && count++
    this.watchers.add(counter)
    try {
      const field = (v: string, value: string, type?: string) => xml('field', { var: v, ...(type ? { type } : {}) }, xml('value', {}, value))
      const form = xml('x', { xmlns: NS.data, type: 'submit' }, field('FORM_TYPE', NS.mam, 'hidden'), ...(isGroup(conv) ? [] : [field('with', this.peer(conv))]))
      const set = xml('set', { xmlns: NS.rsm }, xml('max', {}, String(rsm.max)), ...(rsm.after ? [xml('after', {}, rsm.after)] : []), ...(rsm.before !== undefined ? [xml('before', {}, rsm.before)] : []))
      const iq = xml('iq', { type: 'set', ...(isGroup(conv) ? { to: conv } : {}) }, xml('query', { xmlns: NS.mam, queryid }, form, set))
      const fin = (await this.xmpp.iqCaller.request(iq, 60_000)).getChild('fin', NS.mam)
      const s = fin?.getChild('set', NS.rsm)
      return { count, complete: fin?.attrs.complete === 'true', first: s?.getChildText('first'), last: s?.getChildText('last'), total: Number(s?.getChildText('count') ?? 0) }
    } finally {
      this.watchers.delete(counter)
    }
  }

  /**
   * The archive (own archive filtered by peer for 1:1, the room's for groups) in pages of 200.
   * afterSeq > 0 means "after the first afterSeq messages": XMPP has no sequence numbers, so it
   * counts the archive (max=0) and pages backwards from the end until the rest has arrived.
   */
  async syncAll(conv: string, afterSeq: number): Promise<number> {
    let got = 0
    if (afterSeq <= 0) {
      for (let after: string | undefined; ; ) {
        const p = await this.page(conv, { max: PAGE, after })
        got += p.count
        if (p.complete || !p.last || !p.count) return got
        after = p.last
      }
    }
    const want = (await this.page(conv, { max: 0 })).total - afterSeq
    for (let before = ''; got < want; ) {
      const p = await this.page(conv, { max: Math.min(PAGE, want - got), before })
      got += p.count
      if (!p.count || !p.first) break
      before = p.first
    }
    return got
  }

  close() {
    this.xmpp.stop().catch(() => {})
  }
}

export async function prosodyTarget(): Promise<Target> {
  try {
    execFileSync('sh', ['-c', 'command -v prosody && lua5.4 -e \'require "dbd.sqlite3"\''], { stdio: 'ignore' })
  } catch {
    throw new Error('Prosody with SQLite support is not installed: apt-get install prosody lua-dbi-sqlite3')
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'echovalley-prosody-'))
  const port = await freePort()
  const cfg = path.join(dir, 'prosody.cfg.lua')
  writeFileSync(cfg, config(dir, port))
  let child: ChildProcess
  let guard: ChildProcess | undefined
  const kill = () => (child?.kill('SIGKILL'), guard?.kill())
  process.on('exit', kill)
  const exited = () => (child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', r)))

  const launch = async () => {
    let stderr = ''
    child = spawn('taskset', ['-c', '1', 'prosody', '-F', '--config', cfg], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)))
    child.on('error', (e) => (stderr += String(e))) // no taskset, say
    guard?.kill()
    guard = watchdog(child.pid!, dir)
    const deadline = Date.now() + 20_000
    while (Date.now() < deadline && child.exitCode === null) {
      if (await probe(port)) return
      await sleep(50)
    }
    kill()
    let log = ''
    try {
      log = readFileSync(path.join(dir, 'prosody.log'), 'utf8').slice(-2000)
    } catch {}
    throw new Error(`prosody did not start (exit ${child.exitCode}):\n${stderr}${log}`)
  }
  try {
    await launch()
  } catch (e) {
    process.off('exit', kill)
    rmSync(dir, { recursive: true, force: true })
    throw e
  }

  // SCRAM keys for the one benchmark password, worked out once: @xmpp/client's own PBKDF2 runs in
  // JavaScript (~1.3 s a login) and would make every connect a generator benchmark. Real clients
  // cache these keys too; the server's side of SCRAM is unchanged.
  const password = 'bench-password-1'
  const salt = randomUUID()
  const iterations = 10_000 // Prosody 0.12's default_iteration_count
  const keys = scram(password, salt, iterations)
  const run = Date.now().toString(36)
  let made = 0
  let rooms = 0
  let resources = 0
  const roomsOf = new Map<string, Set<string>>()

  const open = async (u: User, join: Iterable<string>): Promise<XmppLoadClient> => {
    const xmpp = xmppClient({
      service: `xmpp://127.0.0.1:${port}`,
      domain: HOST,
      resource: `load${resources++}`,
      timeout: 30_000,
      credentials: (auth) => auth({ username: u.handle, password: u.token, salt: Buffer.from(salt), clientKey: keys.clientKey, serverKey: keys.serverKey }, 'SCRAM-SHA-1'),
    })
    xmpp.reconnect.stop() // a benchmark client that silently reconnects would hide failures
    xmpp.on('connect', () => xmpp.socket?.setNoDelay(true)) // as WebSocket clients do; Nagle would add 40 ms stalls
    const c = new XmppLoadClient(xmpp, u.id)
    try {
      await xmpp.start()
      // start() resolves at resource binding, before <enabled/>: a stanza sent in between throws the
      // library's inbound count off, and Prosody closes streams that ack more than it sent.
      const end = Date.now() + 10_000
      while (!xmpp.streamManagement.enabled) {
        if (Date.now() > end) throw new Error('stream management was not enabled')
        await sleep(1)
      }
      // Available presence (so messages to the bare JID reach this session), carbons as any modern client, then the rooms.
      await Promise.all([
        xmpp.send(xml('presence')),
        xmpp.iqCaller.request(xml('iq', { type: 'set' }, xml('enable', { xmlns: NS.carbons }))),
        ...[...join].map((room) => c.join(room)),
      ])
    } catch (e) {
      c.close()
      throw e
    }
    return c
  }

  return {
    name: 'prosody',
    async users(n) {
      // Written straight into Prosody's account store (the rows mod_auth_internal_hashed writes), in
      // one transaction: registration over XMPP would hash 10,000 PBKDF2 rounds on the server per user.
      const db = new Database(path.join(dir, 'prosody.sqlite'), { timeout: 10_000 })
      const insert = db.prepare('INSERT INTO prosody (host, user, store, key, type, value) VALUES (?, ?, ?, ?, ?, ?)')
      const users: User[] = []
      db.transaction(() => {
        for (let i = 0; i < n; i++) {
          const handle = `b${run}_${made++}`
          insert.run(HOST, handle, 'accounts', 'salt', 'string', salt)
          insert.run(HOST, handle, 'accounts', 'iteration_count', 'number', String(iterations))
          insert.run(HOST, handle, 'accounts', 'stored_key', 'string', keys.storedKey.toString('hex'))
          insert.run(HOST, handle, 'accounts', 'server_key', 'string', keys.serverKey.toString('hex'))
          users.push({ id: `${handle}@${HOST}`, handle, token: password })
        }
      })()
      db.close()
      return users
    },
    direct: async (a, b) => dmId(a.id, b.id),
    async group(owner, others) {
      // The owner's join creates the room (persistent, members-only by config); members are added one iq each.
      const room = `g${run}_${rooms++}@${MUC_HOST}`
      const c = await open(owner, [room])
      try {
        for (let i = 0; i < others.length; i += 50) {
          await Promise.all(others.slice(i, i + 50).map((o) => c.xmpp.iqCaller.request(xml('iq', { type: 'set', to: room }, xml('query', { xmlns: NS.mucAdmin }, xml('item', { affiliation: 'member', jid: o.id }))))))
        }
      } finally {
        c.close()
      }
      for (const u of [owner, ...others]) {
        if (!roomsOf.has(u.id)) roomsOf.set(u.id, new Set())
        roomsOf.get(u.id)!.add(room)
      }
      return room
    },
    connect: (u) => open(u, roomsOf.get(u.id) ?? []),
    pid: () => child.pid!,
    async restart() {
      child.kill('SIGKILL')
      await exited()
      await launch()
    },
    async stop() {
      process.off('exit', kill)
      child.kill('SIGTERM')
      await Promise.race([exited(), sleep(5000)])
      kill()
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
