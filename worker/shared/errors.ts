/** Every error the API or a socket reports carries one of these codes. */
export const ErrorCode = {
  BAD_REQUEST: 'BAD_REQUEST',
  UNAUTHORIZED: 'UNAUTHORIZED',
  FORBIDDEN: 'FORBIDDEN',
  NOT_FOUND: 'NOT_FOUND',
  CONFLICT: 'CONFLICT',
  HANDLE_TAKEN: 'HANDLE_TAKEN',
  INVALID_CREDENTIALS: 'INVALID_CREDENTIALS',
  TOKEN_REUSED: 'TOKEN_REUSED',
  /** The refresh token was spent while this request was on its way: retry with the same key. */
  REFRESH_IN_FLIGHT: 'REFRESH_IN_FLIGHT',
  NOT_MEMBER: 'NOT_MEMBER',
  NOT_ALLOWED: 'NOT_ALLOWED',
  TOO_LATE: 'TOO_LATE',
  RATE_LIMITED: 'RATE_LIMITED',
  /** The account is suspended by a moderator: sign-in is refused. */
  SUSPENDED: 'SUSPENDED',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  UNSUPPORTED_TYPE: 'UNSUPPORTED_TYPE',
  UNSUPPORTED_PROTOCOL: 'UNSUPPORTED_PROTOCOL',
  /** A service the request needs (speech to text) is down or not configured. */
  UNAVAILABLE: 'UNAVAILABLE',
  INTERNAL: 'INTERNAL',
} as const
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

/** The one error body every HTTP error response has. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string }
}

export function errorBody(code: ErrorCode, message: string): ErrorBody {
  return { error: { code, message } }
}

/** WebSocket close code for application errors; the reason is an ErrorCode. */
export const APP_CLOSE_CODE = 4099
