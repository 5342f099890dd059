import type { ErrorCode } from './shared/errors'

/** What a Durable Object method answers: a value, or an error the Worker maps to the one error shape. */
export type RoomResult<T> = { ok: true; value: T } | { ok: false; code: ErrorCode; message: string }
export const fail = (code: ErrorCode, message: string) => ({ ok: false, code, message }) as const
export const ok = <T>(value: T) => ({ ok: true, value }) as const
