// Port choice for `npm run dev`: a busy port is named, never a silent exit.
import { createServer } from 'node:net'

/** Resolves true when nothing listens on 127.0.0.1:port. */
export function portIsFree(port) {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(Number(port), '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

/** The preferred port when free, else one the system picks. */
export async function portOrFree(preferred) {
  if (await portIsFree(preferred)) return Number(preferred)
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}
