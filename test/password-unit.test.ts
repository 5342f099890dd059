import { describe, it } from 'vitest'
import { hashPassword, PBKDF2_MAX_ITERATIONS, verifyPassword } from '../worker/auth/password'

describe('password hashing', () => {
  it('round-trips and rejects a wrong password', async ({ expect }) => {
    const stored = await hashPassword('s3cret-pass')
    expect(await verifyPassword('s3cret-pass', stored)).toBe(true)
    expect(await verifyPassword('s3cret-pasS', stored)).toBe(false)
  })

  it('salts: the same password hashes differently twice', async ({ expect }) => {
    expect(await hashPassword('same-password')).not.toBe(await hashPassword('same-password'))
  })

  it('refuses to hash above the production PBKDF2 cap, which local workerd does not enforce', async ({ expect }) => {
    expect(PBKDF2_MAX_ITERATIONS).toBe(100_000)
    await expect(hashPassword('x', 100_001)).rejects.toThrow(/cap/)
  })

  it('treats a stored hash above the cap or of another scheme as a mismatch, not a crash', async ({ expect }) => {
    const stored = await hashPassword('pw-123456', 1000)
    const [, , salt, hash] = stored.split('$')
    expect(await verifyPassword('pw-123456', `pbkdf2-sha256$200000$${salt}$${hash}`)).toBe(false)
    expect(await verifyPassword('pw-123456', `bcrypt$10$${salt}$${hash}`)).toBe(false)
    expect(await verifyPassword('pw-123456', 'garbage')).toBe(false)
  })
})
