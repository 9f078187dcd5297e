import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { sql } from 'drizzle-orm'
import pg from 'pg'
import t from 'tap'
import { openDatabase, type Database, type DatabaseHandle } from '../../src/db/client.js'
import { databaseUnanswered } from '../../src/db/sql-state.js'
import { TEST_DATABASE_URL } from '../helpers/app.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

// drizzle-orm 0.45's transaction() sends `begin` before its try/finally: a `begin` that fails never gives its
// connection back unless the pool's lease does. Each leak shrinks the pool by one, until every call waits for a
// connection that never comes. A begin PostgreSQL refuses must cost the pool nothing.

const POOL_SIZE = 2
// far past what a query on the loopback takes, well short of the pool's 5 s wait for a connection
const SERVED_MS = 2_500
const NO_ANSWER = 'no answer'

interface Tap {
  teardown (fn: () => unknown): void
}

function within<T> (promise: Promise<T>, ms: number): Promise<T | typeof NO_ANSWER> {
  return Promise.race([promise, sleep<typeof NO_ANSWER>(ms, NO_ANSWER)])
}

/** What `promise` rejects with; undefined when it resolves. */
function failureOf (promise: Promise<unknown>): Promise<unknown> {
  return promise.then(() => undefined, (err: unknown) => err)
}

async function sessionOn (t: Tap, databaseUrl: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  t.teardown(() => client.end())
  return client
}

/**
 * The gateway's pool (as client.ts builds it) of POOL_SIZE connections, reaching PostgreSQL through `port` when given,
 * its connections named `applicationName` in pg_stat_activity.
 */
async function gatewayPool (t: Tap, applicationName: string, port?: number): Promise<DatabaseHandle> {
  const url = new URL(TEST_DATABASE_URL)
  url.searchParams.set('application_name', applicationName)
  if (port !== undefined) {
    url.hostname = '127.0.0.1'
    url.port = String(port)
  }
  const database = await openDatabase({ url: url.toString(), dataDir: 'unused-on-postgres', poolSize: POOL_SIZE })
  // a pool that lost a connection waits for it forever as it ends: the test ends all the same
  t.teardown(() => within(database.close(), 2_000))
  return database
}

async function backendPid (db: Pick<Database, 'execute'>): Promise<number> {
  const result = await db.execute(sql`select pg_backend_pid() as pid`) as unknown as
    { rows: Array<{ pid: number }> }
  return result.rows[0].pid
}

/** Opens every connection of the pool; their backends' pids, once all are idle again. */
async function openEveryConnection (database: DatabaseHandle): Promise<number[]> {
  const pids = await Promise.all(Array.from({ length: POOL_SIZE }, () => database.db.transaction(async (tx) => {
    const result = await tx.execute(sql`select pg_backend_pid() as pid, pg_sleep(0.05)`) as unknown as
      { rows: Array<{ pid: number }> }
    return result.rows[0].pid
  })))
  return pids
}

/** A normal transaction, then a query: the pids they ran on, or NO_ANSWER when the pool had no connection to give. */
async function servedAfter (database: DatabaseHandle) {
  const startedAt = Date.now()
  const served = await within(Promise.all([
    database.db.transaction(backendPid),
    backendPid(database.db)
  ]), SERVED_MS)
  return { served, elapsed: Date.now() - startedAt }
}

t.test('begins PostgreSQL refuses on a live connection give their connections back, healthy: the pool keeps serving',
  async (t) => {
    const name = `tmt_begin_${randomBytes(4).toString('hex')}`
    const database = await gatewayPool(t, name)
    const pids = await openEveryConnection(database)
    // an isolation level PostgreSQL does not know (SQL Server's): it refuses the begin with a syntax error, and the
    // connection stays in step, out of any transaction
    const refused = { isolationLevel: 'snapshot' as 'serializable' }
    for (let attempt = 1; attempt <= POOL_SIZE + 1; attempt++) {
      const err = await within(failureOf(database.db.transaction(async (tx) => { await tx.execute(sql`select 1`) },
        refused)), SERVED_MS)
      if (err === NO_ANSWER) return t.fail(`begin ${attempt} waits for a connection: the pool lost its connections`)
      t.match(err, { message: /Failed query: begin isolation level snapshot/, cause: { code: '42601' } },
        `begin ${attempt} is refused by PostgreSQL`)
      t.notOk(databaseUnanswered(err), 'a refusal, not PostgreSQL not answering')
    }
    const { served, elapsed } = await servedAfter(database)
    if (served === NO_ANSWER) return t.fail(`a normal transaction still waits after ${elapsed} ms: connections leaked`)
    t.ok(served.every((pid) => pids.includes(pid)), `served on the pool's own connections ${served} (${elapsed} ms)`)
    const operator = await sessionOn(t, TEST_DATABASE_URL)
    const { rows: [open] } = await operator.query<{ connections: number }>(
      'select count(*)::int as connections from pg_stat_activity where application_name = $1', [name])
    t.equal(open.connections, POOL_SIZE, 'none closed, none opened: each refused begin gave its connection back once')
  })

t.test('begins on connections PostgreSQL terminated (57P01, a restart or a failover) close those connections: the ' +
  'pool opens new ones', async (t) => {
  // what the server sends reaches the pool late, so that each begin is sent on a connection whose backend is already
  // gone and is answered with its FATAL 57P01 (without the delay the pool would see them close while idle)
  const target = new URL(TEST_DATABASE_URL)
  const proxy = await startTcpProxy(Number(target.port || 5432), target.hostname, { delayMs: 100 })
  const name = `tmt_begin_${randomBytes(4).toString('hex')}`
  const database = await gatewayPool(t, name, proxy.port)
  // registered after the pool: teardowns run last first, so the connections are cut before the pool ends
  t.teardown(() => proxy.close())
  const pids = await openEveryConnection(database)
  const operator = await sessionOn(t, TEST_DATABASE_URL)
  const { rows } = await operator.query<{ terminated: boolean }>(
    'select pg_terminate_backend(pid) as terminated from pg_stat_activity where application_name = $1', [name])
  t.same(rows, Array.from({ length: POOL_SIZE }, () => ({ terminated: true })), 'both backends terminated')
  const failures = await within(Promise.all(Array.from({ length: POOL_SIZE }, () =>
    failureOf(database.db.transaction(async (tx) => { await tx.execute(sql`select 1`) })))), SERVED_MS)
  if (failures === NO_ANSWER) return t.fail('the begins still wait')
  for (const err of failures) {
    t.match(err, { message: /Failed query: begin/, cause: { code: '57P01' } }, 'begin refused: terminated')
    t.ok(databaseUnanswered(err), 'PostgreSQL not answering: a 503')
  }
  const { served, elapsed } = await servedAfter(database)
  if (served === NO_ANSWER) return t.fail(`a normal transaction still waits after ${elapsed} ms: connections leaked`)
  t.ok(served.every((pid) => !pids.includes(pid)), `served on new connections ${served} (${elapsed} ms)`)
})
