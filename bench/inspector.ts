// workerd's inspector (CDP) for the benchmark: a full garbage collection in the Worker's isolate
// (where its Durable Objects live) before a memory reading, so two readings differ by what is held,
// not by when V8 last collected.
import WebSocket from 'ws'

/**
 * workerd answers an inspector command only when the isolate next runs, so `poke` (any request to
 * the server) is repeated until the collection is reported done.
 */
export async function collectGarbage(port: number, poke: () => Promise<unknown>): Promise<number> {
  const targets = (await (await fetch(`http://127.0.0.1:${port}/json`)).json()) as { title?: string; webSocketDebuggerUrl: string }[]
  const target = targets.find((t) => t.title?.includes('core:user'))
  if (!target) throw new Error('no core:user isolate on the inspector')
  const ws = new WebSocket(target.webSocketDebuggerUrl)
  await new Promise((resolve, reject) => (ws.once('open', resolve), ws.once('error', reject)))
  try {
    // The isolate's JS heap after the collection (Runtime.getHeapUsage), so a reading can tell the
    // heap's share of resident memory from the runtime's own.
    const done = new Promise<number>((resolve) =>
      ws.on('message', (d) => {
        const m = JSON.parse(String(d)) as { id?: number; result?: { usedSize?: number } }
        if (m.id === 3) resolve(m.result?.usedSize ?? NaN)
      }),
    )
    ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.enable' }))
    ws.send(JSON.stringify({ id: 2, method: 'HeapProfiler.collectGarbage' }))
    ws.send(JSON.stringify({ id: 3, method: 'Runtime.getHeapUsage' }))
    return await pokeUntil(done, poke, 50, 'garbage collection not reported within 10 s')
  } finally {
    ws.terminate()
  }
}

/**
 * workerd answers an inspector command only when the isolate next runs: `poke` (any request to the
 * server) every 200 ms until `answer` comes, failing with `timeout` after `attempts` pokes.
 */
export async function pokeUntil<T>(answer: Promise<T>, poke: () => Promise<unknown>, attempts = Infinity, timeout = 'inspector command not answered'): Promise<T> {
  const settled = answer.then((value) => ({ value }))
  for (let i = 0; ; i++) {
    if (i === attempts) throw new Error(timeout)
    await poke().catch(() => undefined)
    const got = await Promise.race([settled, new Promise<null>((r) => setTimeout(() => r(null), 200))])
    if (got) return got.value
  }
}
