import { DrizzleQueryError } from 'drizzle-orm'
import t from 'tap'
import { loadConfig } from '../../src/config.js'
import { DatabaseConnectError } from '../../src/db/pool.js'
import { databaseUnanswered } from '../../src/db/sql-state.js'

t.test('PG_QUERY_TIMEOUT_MS: 10 s unless set, at least 100 ms, within a timer\'s reach', async (t) => {
  t.equal(loadConfig({}).PG_QUERY_TIMEOUT_MS, 10_000)
  t.equal(loadConfig({ PG_QUERY_TIMEOUT_MS: '2500' }).PG_QUERY_TIMEOUT_MS, 2_500)
  t.throws(() => loadConfig({ PG_QUERY_TIMEOUT_MS: '0' }), /PG_QUERY_TIMEOUT_MS/, '0 would cancel every statement')
  t.throws(() => loadConfig({ PG_QUERY_TIMEOUT_MS: '3000000000' }), /PG_QUERY_TIMEOUT_MS/)
})

/** An error as node-postgres raises it for what the server said: a message and a SQLSTATE code. */
function serverError (message: string, code: string) {
  return Object.assign(new Error(message), { code })
}

t.test('PostgreSQL not answering is told from PostgreSQL refusing a statement', async (t) => {
  // what the gateway meets: the driver's error under drizzle's (a query) or the pool's (a transaction's connection)
  const wrapped = (cause: Error) => new DrizzleQueryError('select 1', [], cause)
  const noConnection = (cause: Error) => new DatabaseConnectError(cause)
  const cancelled = serverError('canceling statement due to statement timeout', '57014')
  const unanswered: Array<[string, unknown]> = [
    ['a statement cancelled past statement_timeout', wrapped(cancelled)],
    ['no answer within query_timeout', wrapped(new Error('Query read timeout'))],
    ['no connection from the pool in time', wrapped(new Error('timeout exceeded when trying to connect'))],
    ['the same, for a transaction', noConnection(new Error('timeout exceeded when trying to connect'))],
    ['no handshake in time', noConnection(new Error('Connection terminated due to connection timeout'))],
    ['the connection lost mid-query', wrapped(new Error('Connection terminated unexpectedly'))],
    ['the connection reset', wrapped(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }))],
    ['the server refusing connections', noConnection(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'),
      { code: 'ECONNREFUSED' }))],
    ['the server shutting down', wrapped(serverError('terminating connection due to administrator command', '57P01'))],
    ['the server starting', noConnection(serverError('the database system is starting up', '57P03'))],
    ['no connection slot left', noConnection(serverError('sorry, too many clients already', '53300'))],
    ['a connection exception', wrapped(serverError('connection failure', '08006'))],
    ['drizzle\'s error under another', new Error('the batch could not be charged', { cause: wrapped(cancelled) })]
  ]
  for (const [what, err] of unanswered) t.ok(databaseUnanswered(err), what)
  const refused: Array<[string, unknown]> = [
    ['a trigger\'s exception', wrapped(serverError('the test refuses this audit row', 'P0001'))],
    ['a unique violation', wrapped(serverError('duplicate key value violates unique constraint', '23505'))],
    ['a value out of range', wrapped(serverError('integer out of range', '22003'))],
    ['a bug', new TypeError('Cannot read properties of undefined')],
    ['a Fastify error', Object.assign(new Error('Body is too large'), { code: 'FST_ERR_CTP_BODY_TOO_LARGE' })],
    ['a client that hangs up mid-upload (Node\'s error, as Fastify hands it on)',
      Object.assign(new Error('aborted'), { code: 'ECONNRESET', statusCode: 400 })],
    ['a connection reset that is no query\'s (Redis\'s, say)',
      Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })],
    ['a driver\'s message no query raised', new Error('Connection terminated unexpectedly')]
  ]
  for (const [what, err] of refused) t.notOk(databaseUnanswered(err), what)
})
