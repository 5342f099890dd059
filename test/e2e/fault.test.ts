import { describe, it } from 'vitest'
import { crashLoop } from '../../scripts/fault/crash-loop'
import { netChaos } from '../../scripts/fault/net-chaos'

// Short runs of the fault scripts; `npm run fault:crash` and `npm run fault:net` run the long ones.
describe('faults', () => {
  it('kill -9 and restart, twenty times: nothing acknowledged lost, duplicated or gapped; D1 equals the logs', { timeout: 300_000 }, async ({ expect }) => {
    const r = await crashLoop({ cycles: 20, clients: 4 })
    expect(r.problems).toEqual([])
    expect(r.acknowledged).toBeGreaterThan(1000)
    expect({ lost: r.lost, duplicates: r.duplicates, gaps: r.gaps, diverged: r.clientsDiverged, d1: r.d1Mismatches, outOfOrder: r.outOfOrder }).toEqual({ lost: 0, duplicates: 0, gaps: 0, diverged: 0, d1: 0, outOfOrder: 0 })
  })

  it('reset, silent stall and mid-frame cut: every client converges on the same gapless log', { timeout: 240_000 }, async ({ expect }) => {
    const r = await netChaos({ rounds: 1, clients: 4 })
    expect(r.problems).toEqual([])
    expect(r.acknowledged).toBeGreaterThan(50)
    expect(r.reconnects).toBeGreaterThan(0)
    expect({ lost: r.lost, duplicates: r.duplicates, gaps: r.gaps, diverged: r.clientsDiverged, outOfOrder: r.outOfOrder }).toEqual({ lost: 0, duplicates: 0, gaps: 0, diverged: 0, outOfOrder: 0 })
  })
})
