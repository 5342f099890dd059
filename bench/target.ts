import type { LoadClient } from './client'

/** A benchmark participant: how the workloads make users and conversations on one system. */
export interface User {
  id: string
  handle: string
  token: string
}

export interface Target {
  name: string
  users(n: number): Promise<User[]>
  direct(a: User, b: User): Promise<string>
  group(owner: User, others: User[]): Promise<string>
  connect(u: User): Promise<LoadClient>
  /** The server process (its descendants count too) for memory figures. */
  pid(): number
  /** A full garbage collection in the server's isolates (systems with an inspector), before a memory reading. */
  collectGarbage?(): Promise<number>
  /** HTTP systems only: one authenticated REST read (token, session check, a row) and one unauthenticated. */
  rest?: { authed(u: User): Promise<void>; open(): Promise<void> }
  /**
   * Voice rooms: a binary socket to the conversation's room (the first to join hosts), and what
   * lets a second or third speaker speak. Systems without voice rooms leave it out.
   */
  voice?: {
    join(u: User, conversationId: string): Promise<import('ws').WebSocket>
    promote(host: import('ws').WebSocket, userId: string): Promise<void>
  }
  /** kill -9 and start again on the same state. */
  restart(): Promise<void>
  stop(): Promise<void>
}

