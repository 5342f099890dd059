// Clients talk to the product through a loopback TCP proxy that resets connections, stalls them
// silently and cuts them mid-frame; afterwards every client must hold the same gapless log.
// Run: npm run fault:net -- --rounds 3 --clients 4
import net from 'node:net'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { freePort, startServer } from '../../test/e2e/server'
import { directChat, drain, FaultClient, keepWriting, registerUser, verify, type Verdict } from './client'
import { report } from './crash-loop'

type Mode = 'pass' | 'stall' | 'cut'

/** A TCP proxy on 127.0.0.1 whose faults are switched on from the outside. */
export class ChaosProxy {
  private server: net.Server
  private pairs = new Set<[net.Socket, net.Socket]>()
  private mode: Mode = 'pass'
  port = 0

  constructor(private readonly target: number) {
    this.server = net.createServer((client) => this.accept(client))
  }

  async listen(): Promise<number> {
    this.port = await freePort()
    await new Promise<void>((r) => this.server.listen(this.port, '127.0.0.1', r))
    return this.port
  }

  private accept(client: net.Socket) {
    const upstream = net.connect(this.target, '127.0.0.1')
    const pair: [net.Socket, net.Socket] = [client, upstream]
    this.pairs.add(pair)
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on('data', (chunk: Buffer) => {
        if (this.mode === 'cut' && chunk.length > 1) {
          // Half a frame, then nothing: the peer sees a truncated message and a dead socket.
          to.write(chunk.subarray(0, Math.floor(chunk.length / 2)))
          this.mode = 'pass'
          client.destroy()
          upstream.destroy()
          return
        }
        to.write(chunk)
      })
    forward(client, upstream)
    forward(upstream, client)
    if (this.mode === 'stall') (client.pause(), upstream.pause())
    const end = () => {
      client.destroy()
      upstream.destroy()
      this.pairs.delete(pair)
    }
    client.on('close', end).on('error', end)
    upstream.on('close', end).on('error', end)
  }

  /** Connection reset: every open connection dies at once. */
  reset() {
    for (const [a, b] of this.pairs) (a.resetAndDestroy(), b.destroy())
  }

  /** Silent stall: nothing moves in either direction, and nothing is closed, for `ms`. */
  async stall(ms: number) {
    this.mode = 'stall'
    for (const [a, b] of this.pairs) (a.pause(), b.pause())
    await new Promise((r) => setTimeout(r, ms))
    this.mode = 'pass'
    for (const [a, b] of this.pairs) (a.resume(), b.resume())
  }

  /** The next chunk in either direction is cut in half and its connection dropped. */
  cutNextFrame() {
    this.mode = 'cut'
  }

  close() {
    this.reset()
    this.server.close()
  }
}

export interface NetChaosResult extends Verdict {
  rounds: number
  faults: Record<string, number>
  reconnects: number
  problems: string[]
  seconds: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function netChaos(opts: { rounds: number; clients: number; log?: (s: string) => void }): Promise<NetChaosResult> {
  const log = opts.log ?? (() => undefined)
  const started = Date.now()
  const server = await startServer({ vars: { WRITE_RATE: '100000/100000', FRAME_RATE: '100000/100000' } })
  const proxy = new ChaosProxy(server.port)
  const viaProxy = `http://127.0.0.1:${await proxy.listen()}`
  const clients: FaultClient[] = []
  const faults = { reset: 0, stall: 0, cut: 0 }
  let stopWriting: () => Promise<void> = async () => {}
  try {
    const tag = Date.now().toString(36)
    const users = []
    for (let i = 0; i < opts.clients; i++) users.push(await registerUser(server.url, `chaos_${tag}_${i}`))
    // Everyone in pairs, and the first of each pair also with the next pair: shared and separate logs.
    const convs: [string, number[]][] = []
    for (let i = 0; i + 1 < users.length; i += 2) convs.push([await directChat(server.url, users[i]!, users[i + 1]!), [i, i + 1]])
    for (let i = 0; i + 2 < users.length; i += 2) convs.push([await directChat(server.url, users[i]!, users[i + 2]!), [i, i + 2]])
    users.forEach((u, i) => clients.push(new FaultClient(viaProxy, u, convs.filter(([, who]) => who.includes(i)).map(([id]) => id))))
    for (const c of clients) c.start()
    stopWriting = keepWriting(clients, 20)

    for (let round = 1; round <= opts.rounds; round++) {
      await sleep(1500)
      proxy.reset()
      faults.reset++
      log(`round ${round}: reset every connection`)
      await sleep(1500)
      log(`round ${round}: silent stall for 7 s`)
      await proxy.stall(7000)
      faults.stall++
      await sleep(1500)
      proxy.cutNextFrame()
      faults.cut++
      log(`round ${round}: cut the next frame mid-way`)
    }
    await sleep(1500)
    await stopWriting()
    // Give the last live events and syncs time to land on every client.
    await drain(clients, 3000)
    const verdict = await verify(server.url, clients, { checkD1: false })
    return { ...verdict, rounds: opts.rounds, faults, reconnects: clients.reduce((n, c) => n + c.reconnects, 0), seconds: Math.round((Date.now() - started) / 1000) }
  } finally {
    await stopWriting()
    for (const c of clients) c.stop()
    proxy.close()
    await server.stop()
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, clients: { type: 'string', default: '4' } } })
  const result = await netChaos({ rounds: Number(values.rounds), clients: Number(values.clients), log: console.log })
  process.exit(report('network chaos (reset, silent stall, mid-frame cut)', result as unknown as Record<string, unknown> & { problems: string[] }) ? 0 : 1)
}
