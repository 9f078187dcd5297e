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
 * constraint, a value, a trigger's exception) would not.
 */
export function databaseUnanswered (err: unknown): boolean {
  const code = sqlState(err)
  if (code !== undefined && (UNANSWERED_STATES.has(code) || code.startsWith('08') || NETWORK_CODES.has(code))) {
    return true
  }
  // drizzle wraps the driver's error in its own, whose message quotes the query
  return [err, (err as { cause?: unknown }).cause].some((each) => each instanceof Error &&
    UNANSWERED_MESSAGES.some((message) => each.message.startsWith(message)))
}
