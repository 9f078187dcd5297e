import { DrizzleQueryError } from 'drizzle-orm'
import { DatabaseConnectError } from './pool.js'

/**
 * The SQLSTATE code of an error PostgreSQL (or PGlite) raised, undefined for any other error (no connection, a bug):
 * drizzle wraps the driver's error, which carries the code, in its own.
 */
export function sqlState (err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code ?? (err as { cause?: { code?: unknown } }).cause?.code
  return typeof code === 'string' ? code : undefined
}

// what PostgreSQL answers when it runs no statement now: one cancelled (past statement_timeout, or by an operator), the
// server shutting down or starting, no connection slot left; and class 08, the connection's own failures
const UNANSWERED_STATES = new Set(['57014', '57P01', '57P02', '57P03', '53300'])
// what node-postgres says when no answer came: no connection within its timeout (the pool's own wait, or the server's
// handshake), no answer to a query within query_timeout, the connection lost. These carry no code
const UNANSWERED_MESSAGES = ['Query read timeout', 'timeout exceeded when trying to connect', 'Connection terminated',
  'Client has encountered a connection error and is not queryable', 'Client was closed and is not queryable']
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN',
  'EHOSTUNREACH', 'ENETUNREACH'])

/**
 * Whether PostgreSQL did not answer: unreachable, gone silent, or cancelling a statement that waited past
 * PG_QUERY_TIMEOUT_MS (on a lock, say). The same call may succeed shortly; one whose statement PostgreSQL refused (a
 * constraint, a value, a trigger's exception) would not. Only a call to the database says so: a client's own error (a
 * 4xx, such as an upload it cut short, which Node reports as ECONNRESET) or another service's never does.
 */
export function databaseUnanswered (err: unknown): boolean {
  const status = (err as { statusCode?: unknown } | undefined)?.statusCode
  if (typeof status === 'number' && status < 500) return false
  const driverError = databaseCause(err)
  if (!(driverError instanceof Error)) return false
  const code = (driverError as { code?: unknown }).code
  if (typeof code === 'string' && (UNANSWERED_STATES.has(code) || code.startsWith('08') || NETWORK_CODES.has(code))) {
    return true
  }
  return UNANSWERED_MESSAGES.some((message) => driverError.message.startsWith(message))
}

// a cause chain is short; a cycle in one must not hang the error handler
const MAX_CAUSES = 8

/**
 * What the driver (or PGlite) raised, found along the cause chain under drizzle's error (a query) or the pool's (a
 * transaction's connection); undefined when no call to the database raised `err`. What to log: drizzle's message
 * quotes the query's values.
 */
export function databaseCause (err: unknown): unknown {
  let each = err
  for (let depth = 0; each instanceof Error && depth < MAX_CAUSES; depth++) {
    if (each instanceof DrizzleQueryError || each instanceof DatabaseConnectError) return each.cause
    each = each.cause
  }
  return undefined
}
