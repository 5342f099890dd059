// workerd's inspector (CDP) for the benchmark: a full garbage collection in every isolate before a
// memory reading, so two readings differ by what is held, not by when V8 last collected.
import WebSocket from 'ws'

export async function collectGarbage(port: number): Promise<void> {
  const targets = (await (await fetch(`http://127.0.0.1:${port}/json`)).json()) as { webSocketDebuggerUrl: string }[]
  for (const t of targets) {
    const ws = new WebSocket(t.webSocketDebuggerUrl)
    await new Promise((resolve, reject) => (ws.once('open', resolve), ws.once('error', reject)))
    await new Promise<void>((resolve) => {
      ws.on('message', (d) => (JSON.parse(String(d)) as { id?: number }).id === 1 && resolve())
      ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }))
    })
    ws.close()
  }
}
