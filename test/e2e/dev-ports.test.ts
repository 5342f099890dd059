import { createServer, type Server } from 'node:net'
import { describe, it } from 'vitest'
// @ts-expect-error plain ESM helper of the dev script, without type declarations
import { portIsFree, portOrFree } from '../../scripts/ports.mjs'

const listen = (port = 0) =>
  new Promise<Server>((resolve) => {
    const srv = createServer()
    srv.listen(port, '127.0.0.1', () => resolve(srv))
  })

describe('npm run dev with a port taken', () => {
  it('sees the busy port and picks a free one for the transcriber instead of exiting', async ({ expect }) => {
    const busy = await listen()
    const port = (busy.address() as { port: number }).port
    try {
      expect(await portIsFree(port)).toBe(false)
      const other = (await portOrFree(port)) as number
      expect(other).not.toBe(port)
      expect(await portIsFree(other)).toBe(true)
    } finally {
      busy.close()
    }
    expect(await portOrFree(port)).toBe(port)
  })
})
