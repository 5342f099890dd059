// Runtime-free limits shared by worker and web: importing them pulls in no schema code.

/** Bumped on any incompatible change to the frames below. */
export const PROTOCOL_VERSION = 1
export const MAX_TEXT_LENGTH = 4000
/** Largest WebSocket frame a client may send, in bytes. */
export const MAX_FRAME_BYTES = 16 * 1024
/** Most events one sync page carries. */
export const SYNC_PAGE_LIMIT = 200
/** The sender may recall a message this long after its server timestamp. */
export const RECALL_WINDOW_MS = 120_000
/** How long a typing indicator shows after the last typing frame. */
export const TYPING_TTL_MS = 6_000
/** The sender may edit a text message this long after sending it. */
export const EDIT_WINDOW_MS = 48 * 3600 * 1000
