// workerd's inspector (CDP) for the benchmark: a full garbage collection in the Worker's isolate
// (where its Durable Objects live) before a memory reading, so two readings differ by what is held,
// not by when V8 last collected.
import WebSocket from 'ws'

/**
 * workerd answers an inspector command only when the isolate next runs, so `poke` (any request to
 * the server) is repeated until the collection is reported done.
 */
export async function collectGarbage(port: number, poke: () => Promise<unknown>): Promise<void> {
  const targets = (await (await fetch(`http://127.0.0.1:${port}/json`)).json()) as { title?: string; webSocketDebuggerUrl: string }[]
  const target = targets.find((t) => t.title?.includes('core:user'))
  if (!target) throw new Error('no core:user isolate on the inspector')
  const ws = new WebSocket(target.webSocketDebuggerUrl)
  await new Promise((resolve, reject) => (ws.once('open', resolve), ws.once('error', reject)))
  try {
    const done = new Promise<void>((resolve) => ws.on('message', (d) => (JSON.parse(String(d)) as { id?: number }).id === 2 && resolve()))
    ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.enable' }))
    ws.send(JSON.stringify({ id: 2, method: 'HeapProfiler.collectGarbage' }))
    for (let i = 0; ; i++) {
      if (i === 50) throw new Error('garbage collection not reported within 10 s')
      await poke().catch(() => undefined)
      if (await Promise.race([done.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 200))])) return
    }
  } finally {
    ws.terminate()
  }
}
