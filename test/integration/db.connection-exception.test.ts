import { setTimeout as sleep } from 'node:timers/promises'
import { sql } from 'drizzle-orm'
import pg from 'pg'
import t, { type Test } from 'tap'
import { openDatabase } from '../../src/db/client.js'
import { LeasingPool } from '../../src/db/pool.js'
import { TEST_DATABASE_URL } from '../helpers/app.js'
import { startRefusingPgProxy, type Refusal } from '../helpers/pg-refusing-proxy.js'

// A refusal that ends the session (class 08, a connection exception, as PgBouncer's query_wait_timeout sends before it
// closes the connection; or a FATAL) leaves a connection that answers nothing more: no ReadyForQuery comes, then the
// close. Whatever statement it answered, the lease must close that connection, never hand it back to be reused.

const MARKER = 'tmt-refused-here'
// the close reaches the driver this long after the refusal: past it, a query on the dead connection fails
const CLOSE_AFTER_MS = 1_000
// far past what a query on the loopback takes, short of the close
const SERVED_MS = 600
const NO_ANSWER = 'no answer'

const REFUSALS: Array<Omit<Refusal, 'marker' | 'closeAfterMs'>> = [
  { severity: 'ERROR', code: '08P01' },
  { severity: 'FATAL', code: '57P01' }
]

function within<T> (promise: Promise<T>, ms: number): Promise<T | typeof NO_ANSWER> {
  return Promise.race([promise, sleep<typeof NO_ANSWER>(ms, NO_ANSWER)])
}

/** What `promise` rejects with; undefined when it resolves. */
function failureOf (promise: Promise<unknown>): Promise<unknown> {
  return promise.then(() => undefined, (err: unknown) => err)
}

/** PostgreSQL reached through a proxy that refuses the queries that hold MARKER; it closes in teardown. */
async function refusingDatabase (t: Test, severity: Refusal['severity'], code: string): Promise<string> {
  const url = new URL(TEST_DATABASE_URL)
  const proxy = await startRefusingPgProxy(Number(url.port || 5432), url.hostname,
    { marker: MARKER, severity, code, closeAfterMs: CLOSE_AFTER_MS })
  t.teardown(() => proxy.close())
  url.hostname = '127.0.0.1'
  url.port = String(proxy.port)
  return url.toString()
}

for (const { severity, code } of REFUSALS) {
  t.test(`a one-statement lease refused ${severity} ${code} closes its connection: the next query gets a new one`,
    async (t) => {
      const pool = new LeasingPool({ connectionString: await refusingDatabase(t, severity, code), max: 1 })
      pool.on('error', () => {})
      t.teardown(() => within(pool.end(), 2_000))
      const lease = await pool.connect()
      const { rows: [{ pid }] } = await lease.query<{ pid: number }>('select pg_backend_pid() as pid')
      const refusal = await within(failureOf(lease.query(`select 1 /* ${MARKER} */`)), SERVED_MS)
      t.match(refusal, { severity, code }, 'the statement is refused')
      const later = await within(failureOf(lease.query('select 2')), SERVED_MS)
      t.equal(later, refusal, 'a later query on the lease fails with the refusal, at once')
      lease.release()
      t.equal(pool.totalCount, 0, 'the connection is closed, not handed back to the pool')
      const next = await within(pool.query<{ pid: number }>('select pg_backend_pid() as pid')
        .then(({ rows }) => rows[0].pid, (err: Error) => err.message), SERVED_MS)
      t.type(next, 'number', `the next query is served (${String(next)})`)
      t.not(next, pid, 'on a new connection')
    })
}

t.test('a statement refused 08P01 in a transaction closes the connection without waiting for its rollback',
  async (t) => {
    const url = await refusingDatabase(t, 'ERROR', '08P01')
    const database = await openDatabase({ url, dataDir: 'unused-on-postgres', poolSize: 1 })
    t.teardown(() => within(database.close(), 2_000))
    const startedAt = Date.now()
    const err = await within(failureOf(database.db.transaction(async (tx) => {
      await tx.execute(sql.raw(`select 1 /* ${MARKER} */`))
    })), SERVED_MS)
    const elapsed = Date.now() - startedAt
    t.match(err, { message: /Failed query: rollback/, cause: { code: '08P01' } },
      `the rollback fails with the refusal at once (${elapsed} ms), on a connection closed`)
    const served = await within(database.db.execute(sql`select 3 as n`)
      .then((result) => (result as unknown as pg.QueryResult).rows, (err: Error) => err.message), SERVED_MS)
    t.same(served, [{ n: 3 }], 'the next query is served')
  })
