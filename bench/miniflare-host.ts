// Runs a bundled Worker on bare workerd through Miniflare's API: no wrangler process, no proxy
// Worker in front. A child process of the benchmark, so its CPU and memory are measured apart
// from the load generator. Prints "listening <url>" when ready; SIGTERM disposes it.
//   tsx bench/miniflare-host.ts '<json options>'
import { Miniflare, type MiniflareOptions } from 'miniflare'

const { directPort, ...opts } = JSON.parse(process.argv[2] ?? '{}') as MiniflareOptions & { directPort?: number }
// `directPort`: clients connect to the Worker itself (Miniflare's direct socket), not through
// Miniflare's entry Worker, a local-only hop that production does not have.
const mf = new Miniflare({ ...opts, host: '127.0.0.1', ...(directPort ? { unsafeDirectSockets: [{ host: '127.0.0.1', port: directPort }] } : {}) } as MiniflareOptions)
const url = directPort ? await mf.unsafeGetDirectURL() : await mf.ready
console.log(`listening ${url.href.replace(/\/$/, '')}`)
const stop = async () => {
  await mf.dispose()
  process.exit(0)
}
process.on('SIGTERM', () => void stop())
process.on('SIGINT', () => void stop())
