import { describe, it } from 'vitest'
import { DELIVERY_TIMEOUT_MS, DeliveryTracker, MAX_DELIVERY_RETRIES, PERSIST_AFTER_MS } from '../worker/user/delivery-tracker'

const connected = () => true
const gone = () => false

describe('DeliveryTracker', () => {
  it('owes nothing once the device confirms what it was sent', ({ expect }) => {
    const t = new DeliveryTracker()
    t.sent('s', 'c', 5, true, 0)
    t.sent('s', 'c', 6, true, 10)
    expect(t.size).toBe(1)
    t.confirm('s', 'c', 6, 20)
    expect(t.size).toBe(0)
    expect(t.due(DELIVERY_TIMEOUT_MS * 10, connected)).toEqual({ resend: [], push: [] })
  })

  it('resends everything after the confirmed cursor MAX_DELIVERY_RETRIES times, then pushes the newest message once', ({ expect }) => {
    const t = new DeliveryTracker()
    t.sent('s', 'c', 5, true, 0)
    t.sent('s', 'c', 6, false, 0)
    let now = 0
    for (let i = 0; i < MAX_DELIVERY_RETRIES; i++) {
      now += DELIVERY_TIMEOUT_MS
      expect(t.due(now, connected)).toEqual({ resend: [{ sessionId: 's', conversationId: 'c', afterSeq: 4 }], push: [] })
      // Not due again until another timeout has passed.
      expect(t.due(now + DELIVERY_TIMEOUT_MS - 1, connected)).toEqual({ resend: [], push: [] })
    }
    now += DELIVERY_TIMEOUT_MS
    expect(t.due(now, connected)).toEqual({ resend: [], push: [{ conversationId: 'c', seq: 5 }] })
    expect(t.size).toBe(0)
  })

  it('pushes at once when the device has gone, and not at all when it owes only its own or system events', ({ expect }) => {
    const t = new DeliveryTracker()
    t.sent('a', 'c', 3, true, 0)
    t.sent('b', 'c', 3, false, 0)
    expect(t.due(DELIVERY_TIMEOUT_MS, gone)).toEqual({ resend: [], push: [{ conversationId: 'c', seq: 3 }] })
    expect(t.size).toBe(0)
  })

  it('takes a room\'s hand-off of what a writer socket did not confirm: due from when it was sent, or at once after a close', ({ expect }) => {
    const t = new DeliveryTracker()
    t.owe('s', 'c', 2, 4, 4, 1_000)
    expect(t.due(1_000 + DELIVERY_TIMEOUT_MS - 1, connected)).toEqual({ resend: [], push: [] })
    expect(t.due(1_000 + DELIVERY_TIMEOUT_MS, connected).resend).toEqual([{ sessionId: 's', conversationId: 'c', afterSeq: 2 }])
    // Merged with what the hub sent itself: the older cursor, the newer seqs.
    t.sent('s', 'd', 7, true, 0)
    t.owe('s', 'd', 3, 9, 9, 500, 600)
    expect(t.due(600, connected).resend).toEqual([{ sessionId: 's', conversationId: 'd', afterSeq: 3 }])
  })

  it('a confirmation on the chat socket before the hand-off settles it: nothing is owed, nothing pushed', ({ expect }) => {
    const t = new DeliveryTracker()
    t.confirm('s', 'c', 4, 0)
    t.owe('s', 'c', 2, 4, 4, 0)
    expect(t.size).toBe(0)
    // Only what it confirmed: a later event is still owed, from after the confirmation.
    t.owe('s', 'c', 2, 6, 6, 0)
    expect(t.due(DELIVERY_TIMEOUT_MS, connected).resend).toEqual([{ sessionId: 's', conversationId: 'c', afterSeq: 4 }])
    // Remembered for a while only.
    const u = new DeliveryTracker()
    u.confirm('s', 'c', 4, 0)
    u.due(60_000, connected)
    u.owe('s', 'c', 2, 4, 4, 60_000)
    expect(u.size).toBe(1)
  })

  it('a device that confirms progress is alive: its clock starts again', ({ expect }) => {
    const t = new DeliveryTracker()
    t.sent('s', 'c', 1, true, 0)
    t.sent('s', 'c', 2, true, 4_000)
    t.confirm('s', 'c', 1, 4_500)
    expect(t.due(DELIVERY_TIMEOUT_MS, connected).resend).toEqual([])
    expect(t.due(4_500 + DELIVERY_TIMEOUT_MS, connected).resend).toEqual([{ sessionId: 's', conversationId: 'c', afterSeq: 1 }])
  })

  it('names for storage only what has been owed for over a second, once per change, and what was stored and is settled', ({ expect }) => {
    const t = new DeliveryTracker()
    t.sent('s', 'c', 1, true, 0)
    expect(t.toPersist(PERSIST_AFTER_MS - 1)).toEqual({ upsert: [], remove: [] })
    expect(t.toPersist(PERSIST_AFTER_MS)).toEqual({ upsert: [{ sessionId: 's', conversationId: 'c', pushSeq: 1 }], remove: [] })
    expect(t.toPersist(PERSIST_AFTER_MS + 1)).toEqual({ upsert: [], remove: [] })
    t.sent('s', 'c', 2, true, PERSIST_AFTER_MS + 2)
    expect(t.toPersist(PERSIST_AFTER_MS + 3).upsert).toEqual([{ sessionId: 's', conversationId: 'c', pushSeq: 2 }])
    t.confirm('s', 'c', 2, PERSIST_AFTER_MS + 4)
    expect(t.toPersist(PERSIST_AFTER_MS + 5)).toEqual({ upsert: [], remove: [{ sessionId: 's', conversationId: 'c' }] })
    // A delivery confirmed within the second never reaches storage.
    t.sent('s', 'd', 1, true, 10_000)
    t.confirm('s', 'd', 1, 10_100)
    expect(t.toPersist(20_000)).toEqual({ upsert: [], remove: [] })
  })
})
