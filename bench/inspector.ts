// workerd's inspector (CDP) for the benchmark: a full garbage collection in the Worker's isolate
// (where its Durable Objects live) before a memory reading, so two readings differ by what is held,
// not by when V8 last collected.
import WebSocket from 'ws'

/**
 * workerd answers an inspector command only when the isolate next runs, so `poke` (any request to
 * the server) is repeated until the collection is reported done.
 */
export async function collectGarbage(port: number, poke: () => Promise<unknown>): Promise<number> {
  const session = await inspect(port)
  try {
    if (!session.title?.includes('core:user')) throw new Error('no core:user isolate on the inspector')
    // Sent together and answered in order, so one round of pokes waits for all three. The last is the
    // isolate's JS heap after the collection, so a reading can tell the heap's share of resident
    // memory from the runtime's own.
    void session.call('HeapProfiler.enable').catch(() => undefined)
    void session.call('HeapProfiler.collectGarbage').catch(() => undefined)
    const usage = session.call<{ usedSize?: number }>('Runtime.getHeapUsage')
    return (await pokeUntil(usage, poke, 50, 'garbage collection not reported within 10 s')).usedSize ?? NaN
  } finally {
    session.close()
  }
}

/**
 * workerd answers an inspector command only when the isolate next runs: `poke` (any request to the
 * server) every 200 ms until `answer` comes, failing with `timeout` after `attempts` pokes.
 */
export async function pokeUntil<T>(answer: Promise<T>, poke: () => Promise<unknown>, attempts = Infinity, timeout = 'inspector command not answered'): Promise<T> {
  const settled = answer.then((value) => ({ value }))
  settled.catch(() => undefined) // a failure (the inspector closed) is thrown by the race below, not reported as unhandled
  for (let i = 0; ; i++) {
    if (i === attempts) throw new Error(timeout)
    await poke().catch(() => undefined)
    const got = await Promise.race([settled, new Promise<null>((r) => setTimeout(() => r(null), 200))])
    if (got) return got.value
  }
}

/**
 * A CDP session with the isolate whose title holds `worker` (`core:user` is the Worker and its
 * objects): `call` sends a command and resolves with its result, poking the server while it waits
 * when `poke` is given; `on` hears the isolate's events (a heap snapshot's chunks).
 */
export async function inspect(port: number, worker = 'core:user', poke?: () => Promise<unknown>) {
  const targets = (await (await fetch(`http://127.0.0.1:${port}/json`)).json()) as { title?: string; webSocketDebuggerUrl: string }[]
  const target = targets.find((t) => t.title?.includes(worker)) ?? targets[0]
  if (!target) throw new Error(`no isolate on the inspector at ${port}`)
  const ws = new WebSocket(target.webSocketDebuggerUrl, { maxPayload: 1 << 30 })
  await new Promise((resolve, reject) => (ws.once('open', resolve), ws.once('error', reject)))
  let nextId = 0
  const pending = new Map<number, { resolve: (result: unknown) => void; reject: (e: Error) => void }>()
  const listeners = new Map<string, (params: unknown) => void>()
  ws.on('message', (data) => {
    const m = JSON.parse(String(data)) as { id?: number; result?: unknown; method?: string; params?: unknown }
    if (m.id && pending.has(m.id)) {
      pending.get(m.id)!.resolve(m.result)
      pending.delete(m.id)
    } else if (m.method) listeners.get(m.method)?.(m.params)
  })
  // A runtime that exits (or a closed session) fails what is waiting, instead of poking forever.
  ws.on('error', () => ws.terminate())
  ws.on('close', () => {
    for (const p of pending.values()) p.reject(new Error('inspector closed before it answered'))
    pending.clear()
  })
  const call = <T>(method: string, params: object = {}): Promise<T> => {
    const answer = new Promise<T>((resolve, reject) => {
      if (ws.readyState !== WebSocket.OPEN) return reject(new Error('inspector closed'))
      const id = ++nextId
      pending.set(id, { resolve: resolve as (r: unknown) => void, reject })
      ws.send(JSON.stringify({ id, method, params }))
    })
    return poke ? pokeUntil(answer, poke) : answer
  }
  return { title: target.title, call, on: (method: string, fn: (params: unknown) => void) => void listeners.set(method, fn), close: () => ws.terminate() }
}
