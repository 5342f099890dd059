import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { generateVapidKeys } from '../support/push-service'

const ROOT = path.resolve(import.meta.dirname, '../..')
/**
 * wrangler dev's local explorer wraps every SQLite Durable Object class and writes the object's
 * name on each wake: a disk commit per wake that production does not have (docs/decisions.md).
 * `npm run dev` turns it off the same way.
 */
export const DEV_ENV = { CI: 'true', WRANGLER_SEND_METRICS: 'false', X_LOCAL_EXPLORER: 'false' }
/** A server left behind by a crashed test run still stops by itself. */
const MAX_LIFETIME_MS = 15 * 60 * 1000

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
    srv.on('error', reject)
  })
}

export interface LocalServer {
  url: string
  port: number
  stateDir: string
  stop(): Promise<void>
  /** kill -9 of the whole runtime (wrangler and workerd), as a crash would. */
  crash(): Promise<void>
  /** Starts the runtime again on the same port and state directory. */
  restart(): Promise<void>
  /** The process whose descendants are wrangler and workerd (for memory and CPU pinning). */
  pid(): number
  /** The tail of what wrangler printed (request lines, the Worker's logs): evidence for a failed test. */
  log(): string
}

/**
 * The real product as `npm run dev` runs it: wrangler dev (workerd) serving the built PWA,
 * with migrations applied to a fresh local state directory.
 */
export async function startServer(
  opts: {
    stateDir?: string
    port?: number
    vars?: Record<string, string>
    /** Safety kill after this long (benchmarks run longer than tests). */
    lifetimeMs?: number
    /** Another wrangler config (the benchmark's platform floor); it has no D1 to migrate. */
    config?: string
    /** wrangler's warnings only: at the soak's rates its line per request costs a core. */
    quiet?: boolean
    /** Runs on the migrated state folder before wrangler starts (the soak's seed). */
    prepare?: (stateDir: string) => Promise<void>
  } = {},
): Promise<LocalServer> {
  const lifetimeMs = opts.lifetimeMs ?? MAX_LIFETIME_MS
  const stateDir = opts.stateDir ?? mkdtempSync(path.join(tmpdir(), 'echovalley-e2e-'))
  const port = opts.port ?? (await freePort())
  const env = { ...process.env, ...DEV_ENV }
  // wrangler refuses to start without the assets folder; the benchmarks need the API only, not a built PWA.
  mkdirSync(path.join(ROOT, 'dist'), { recursive: true })
  if (!opts.config) migrateLocal(stateDir)
  await opts.prepare?.(stateDir)

  const vapid = generateVapidKeys()
  // Every test signs its people up from 127.0.0.1: the per-address sign-up limit is lifted unless a test sets it.
  const vars = { JWT_SECRET: 'e2e-secret-that-is-long-enough-0123456789', VAPID_PUBLIC_KEY: vapid.publicKey, VAPID_PRIVATE_KEY: vapid.privateKey, REGISTER_RATE: '100000/100000', ...opts.vars }
  const config = [...(opts.config ? ['-c', opts.config] : []), ...(opts.quiet ? ['--log-level', 'warn'] : [])]
  let child = await launch(port, stateDir, vars, env, lifetimeMs, config)
  const url = `http://127.0.0.1:${port}`
  return {
    url,
    port,
    stateDir,
    async stop() {
      await kill(child)
      if (!opts.stateDir) rmSync(stateDir, { recursive: true, force: true })
    },
    async crash() {
      await kill(child, 'SIGKILL')
    },
    async restart() {
      await kill(child)
      child = await launch(port, stateDir, vars, env, lifetimeMs, config)
    },
    pid: () => child.pid!,
    log: () => logOf(child),
  }
}

/** Applies the D1 migrations (main and history shards) to a local state directory, as `npm run dev` does. */
export function migrateLocal(stateDir: string) {
  const env = { ...process.env, ...DEV_ENV }
  const migrate = spawnSync('node', ['scripts/migrate.mjs', '--local', '--persist-to', stateDir], { cwd: ROOT, env, encoding: 'utf8' })
  if (migrate.status !== 0) throw new Error(`migrations failed: ${migrate.stderr}\n${migrate.stdout}`)
}

/** The tail of what each wrangler printed, for the error if it does not start and for a failed test (a run of hours must not keep every line). */
const logs = new WeakMap<ChildProcess, string>()
const logOf = (child: ChildProcess) => logs.get(child) ?? ''

async function launch(port: number, stateDir: string, vars: Record<string, string>, env: NodeJS.ProcessEnv, lifetimeMs: number, config: string[]): Promise<ChildProcess> {
  const child: ChildProcess = spawn(
    'npx',
    ['wrangler', 'dev', ...config, '--port', String(port), '--ip', '127.0.0.1', '--persist-to', stateDir, '--show-interactive-dev-session=false',
      ...Object.entries(vars).flatMap(([k, v]) => ['--var', `${k}:${v}`])],
    { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  )
  const keep = (d: Buffer) => {
    logs.set(child, (logOf(child) + d).slice(-64 * 1024))
    // SERVER_LOG=1 shows what wrangler prints, for debugging a test or a benchmark.
    if (process.env.SERVER_LOG) process.stderr.write(d)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  const killTimer = setTimeout(() => void kill(child, 'SIGKILL'), lifetimeMs)
  killTimer.unref()
  child.once('exit', () => clearTimeout(killTimer))

  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited early:\n${logOf(child)}`)
    try {
      const res = await fetch(`${url}/api/health/live`)
      if (res.ok) return child
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await kill(child, 'SIGKILL')
      throw new Error(`wrangler dev did not become ready:\n${logOf(child)}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** A process and its descendants (npx → sh → wrangler → node → workerd ×2). */
/** The process and all its descendants (pgrep -P, recursively). */
export function processTree(pid: number): number[] {
  const kids = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number)
  return [pid, ...kids.flatMap(processTree)]
}

/** Running, not a zombie: a zombie has let go of its ports and files. */
function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

/**
 * Stops npx → wrangler → workerd and waits until every one of them has gone, escalating to SIGKILL
 * after 5 s. Waiting for the whole tree matters: a workerd that outlives wrangler (it drains its
 * sockets on SIGTERM) keeps the port and its state, and the next start on that port would share them.
 */
function kill(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  return child.pid === undefined ? Promise.resolve() : killTree(child.pid, signal)
}

/** kill() for any detached process whose group holds a runtime. */
export async function killTree(root: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const pids = processTree(root)
  const signalAll = (sig: NodeJS.Signals) => {
    for (const target of [-root, ...pids]) {
      try {
        process.kill(target, sig)
      } catch {
        // already gone
      }
    }
  }
  signalAll(signal)
  const deadline = Date.now() + 5000
  while (pids.some(alive)) {
    if (Date.now() > deadline && signal !== 'SIGKILL') {
      signal = 'SIGKILL'
      signalAll('SIGKILL')
    }
    await new Promise((r) => setTimeout(r, 50))
  }
}
