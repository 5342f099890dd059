// Runs a bundled Worker on bare workerd through Miniflare's API: no wrangler process, no proxy
// Worker in front. A child process of the benchmark, so its CPU and memory are measured apart
// from the load generator. Prints "listening <url>" when ready; SIGTERM disposes it.
//   tsx bench/miniflare-host.ts '<json options>'
import { Miniflare, type MiniflareOptions } from 'miniflare'

const opts = JSON.parse(process.argv[2] ?? '{}') as MiniflareOptions
const mf = new Miniflare({ ...opts, host: '127.0.0.1' })
const url = await mf.ready
console.log(`listening ${url.href.replace(/\/$/, '')}`)
const stop = async () => {
  await mf.dispose()
  process.exit(0)
}
process.on('SIGTERM', () => void stop())
process.on('SIGINT', () => void stop())
