import { createServer, connect, type AddressInfo, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { sql } from 'drizzle-orm'
import pg from 'pg'
import t from 'tap'
import { openDatabase, type DatabaseHandle } from '../../src/db/client.js'
import { databaseUnanswered } from '../../src/db/sql-state.js'
import { createKeyCipher } from '../../src/tenancy/key-crypto.js'
import { createLocalBus } from '../../src/tenancy/invalidation-bus.js'
import { parseMasterKeys } from '../../src/tenancy/master-keys.js'
import { createMistralKeyStore } from '../../src/tenancy/mistral-keys.js'
import { TEST_DATABASE_URL, TEST_MASTER_KEYS, buildTestApp, listen } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { proxiedDatabase } from '../helpers/tcp-proxy.js'

// PG_QUERY_TIMEOUT_MS bounds how long the gateway waits on PostgreSQL: a statement waiting on a lock another session
// holds is cancelled by the server (statement_timeout), and one the server never answers (a network gone silent) is
// given up by the driver a second later. A query cut so is PostgreSQL not answering: the gateway's 503s, not a 500;
// and the connection it was on is closed, never handed out again. Migrations are not bounded by it.

const QUERY_TIMEOUT_MS = 300
// how long a test waits before it calls a call hung: far past the bound
const HUNG_MS = 8_000
const NO_ANSWER = 'no answer'

interface Tap {
  teardown (fn: () => unknown): void
}

function within<T> (promise: Promise<T>, ms: number): Promise<T | typeof NO_ANSWER> {
  return Promise.race([promise, sleep<typeof NO_ANSWER>(ms, NO_ANSWER)])
}

async function sessionOn (t: Tap, databaseUrl: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  t.teardown(() => client.end())
  return client
}

/**
 * A loopback proxy to PostgreSQL that can go silent: from `stall()` on, no byte passes either way and no connection is
 * closed, as on a network that drops every packet (what it drops is lost: `unstall()` brings the network back, not the
 * bytes). `close()` cuts every connection.
 */
async function stallingProxy (databaseUrl: string) {
  const target = new URL(databaseUrl)
  let stalled = false
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(Number(target.port || 5432), target.hostname)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
      socket.on('error', () => { client.destroy(); upstream.destroy() })
    }
    client.on('data', (chunk) => { if (!stalled) upstream.write(chunk) })
    upstream.on('data', (chunk) => { if (!stalled) client.write(chunk) })
    client.on('end', () => upstream.end())
    upstream.on('end', () => client.end())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = new URL(databaseUrl)
  url.hostname = '127.0.0.1'
  url.port = String((server.address() as AddressInfo).port)
  return {
    url: url.toString(),
    stall () { stalled = true },
    unstall () { stalled = false },
    async close () {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

const notReady = { object: 'error', type: 'server_error', code: 'not_ready', param: null }

t.test('an admin change waiting on a row another session holds ends in a 503 not_ready after PG_QUERY_TIMEOUT_MS',
  async (t) => {
    const { app, admin, adminHeaders, createWorkspace } = await buildTestApp(t,
      { PG_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS) })
    const ws = await createWorkspace()
    const locker = await sessionOn(t, TEST_DATABASE_URL)
    await locker.query('begin')
    await locker.query('select id from workspaces where id = $1 for update', [ws.id])
    const startedAt = Date.now()
    const res = await within(app.inject({
      method: 'PATCH', url: `/admin/v1/workspaces/${ws.slug}`, headers: adminHeaders, payload: { name: 'Renamed' }
    }), HUNG_MS)
    const elapsed = Date.now() - startedAt
    await locker.query('rollback')
    if (res === NO_ANSWER) return t.fail(`the change still waits after ${HUNG_MS} ms`)
    t.equal(res.statusCode, 503)
    t.match(res.json(), { ...notReady, message: /database/, request_id: res.headers['x-request-id'] },
      'the outage envelope, not a 500 internal_error')
    t.equal(res.headers['retry-after'], '5')
    t.ok(elapsed >= QUERY_TIMEOUT_MS - 50 && elapsed < QUERY_TIMEOUT_MS + 1_500,
      `cancelled by the server after PG_QUERY_TIMEOUT_MS (${elapsed} ms)`)
    t.equal((await admin('GET', `/admin/v1/workspaces/${ws.slug}`)).json.name, `Test ${ws.slug}`, 'nothing changed')
    t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { name: 'Renamed' })).statusCode, 200,
      'the lock released, the same change goes through')
  })

t.test('a 401 while the key\'s row is locked: mistral_key_rejected after PG_QUERY_TIMEOUT_MS, the key left as it was',
  async (t) => {
    const { app, admin, mistral, createWorkspace } = await buildTestApp(t,
      { PG_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS) })
    const ws = await createWorkspace()
    const locker = await sessionOn(t, TEST_DATABASE_URL)
    await locker.query('begin')
    await locker.query('select id from mistral_keys where workspace_id = $1 for update', [ws.id])
    mistral.enqueueError(401, { detail: 'Unauthorized' }, {}, '/v1/chat/completions')
    const startedAt = Date.now()
    const res = await within(app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: { ...ws.headers, 'content-type': 'application/json' },
      payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] }
    }), HUNG_MS)
    const elapsed = Date.now() - startedAt
    await locker.query('rollback')
    if (res === NO_ANSWER) return t.fail(`the call still waits after ${HUNG_MS} ms`)
    t.equal(res.statusCode, 502)
    t.match(res.json(), { object: 'error', type: 'upstream_error', code: 'mistral_key_rejected' },
      'the client is told Mistral rejected the key')
    t.ok(elapsed < QUERY_TIMEOUT_MS + 1_500, `within the bound (${elapsed} ms)`)
    t.equal((await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data[0].status, 'active',
      'the mark was cancelled, so the key stays active')
    const entries = (await admin('GET', '/admin/v1/audit-log?limit=1000')).json.data as any[]
    t.same(entries.filter((entry) => entry.action === 'mistral_key.invalid' && entry.workspaceId === ws.id), [],
      'and no audit row says otherwise')
  })

t.test('a background read of a Mistral key waiting on a lock gives up after PG_QUERY_TIMEOUT_MS, and reads again later',
  async (t) => {
    // a database of its own: the whole mistral_keys table is locked below
    const databaseUrl = await createScratchDatabase(t)
    const { app, createWorkspace } = await buildTestApp(t,
      { DATABASE_URL: databaseUrl, PG_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS) })
    const ws = await createWorkspace()
    // the gateway's own pool, with a cache short enough to be refreshed in a test (the gateway's is 60 s)
    const cipher = createKeyCipher(parseMasterKeys(TEST_MASTER_KEYS))
    const keys = createMistralKeyStore({ db: app.database.db, cipher, bus: createLocalBus(), cacheTtlMs: 100 })
    t.equal((await keys.resolve(ws.id, 'default'))?.status, 'active')

    const locker = await sessionOn(t, databaseUrl)
    await locker.query('begin')
    await locker.query('lock table mistral_keys in access exclusive mode')
    await sleep(150)
    t.equal((await within(keys.resolve(ws.id, 'default'), 100) as { status?: string })?.status, 'active',
      'past its time, the key is answered from the cache while the read that replaces it waits')
    await sleep(QUERY_TIMEOUT_MS + 700)
    const { rows: [waiting] } = await locker.query<{ reads: number }>(`select count(*)::int as reads from
      pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and wait_event_type = 'Lock'
      and query ilike '%mistral_keys%'`)
    t.equal(waiting.reads, 0, 'no read of the keys still waits on the lock: the refresh gave up')

    await locker.query('update mistral_keys set status = \'invalid\' where workspace_id = $1', [ws.id])
    await locker.query('commit')
    const releasedAt = Date.now()
    let status = 'active'
    while (status !== 'invalid' && Date.now() - releasedAt < 8_000) {
      await sleep(100)
      status = (await keys.resolve(ws.id, 'default'))?.status ?? 'gone'
    }
    t.equal(status, 'invalid', 'the key is read again once PostgreSQL answers')
  })

t.test('a PostgreSQL that goes silent: a token never read gets 503 authentication_unavailable within the bound',
  async (t) => {
    const proxy = await stallingProxy(TEST_DATABASE_URL)
    const { app, createWorkspace } = await buildTestApp(t,
      { DATABASE_URL: proxy.url, PG_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS) })
    // registered after the app: teardowns run last first, so the connections are cut before the app closes
    t.teardown(() => proxy.close())
    const ws = await createWorkspace()
    proxy.stall()
    const startedAt = Date.now()
    const res = await within(app.inject({ method: 'GET', url: '/v1/models', headers: ws.headers }), HUNG_MS)
    const elapsed = Date.now() - startedAt
    if (res === NO_ANSWER) return t.fail(`the call still waits after ${HUNG_MS} ms`)
    t.equal(res.statusCode, 503)
    t.match(res.json(), { object: 'error', type: 'server_error', code: 'authentication_unavailable' })
    t.ok(elapsed >= QUERY_TIMEOUT_MS && elapsed < QUERY_TIMEOUT_MS + 2_500,
      `the driver gave up a little after PG_QUERY_TIMEOUT_MS (${elapsed} ms)`)
  })

t.test('an admin call while PostgreSQL is unreachable is the same 503 not_ready', async (t) => {
  const database = await proxiedDatabase(t, TEST_DATABASE_URL)
  const { app, adminHeaders, createWorkspace } = await buildTestApp(t, { DATABASE_URL: database.url })
  const ws = await createWorkspace()
  database.proxy.cut()
  const res = await app.inject({ method: 'GET', url: `/admin/v1/workspaces/${ws.slug}`, headers: adminHeaders })
  database.proxy.restore()
  t.equal(res.statusCode, 503)
  t.match(res.json(), { ...notReady, request_id: res.headers['x-request-id'] })
  t.equal(res.headers['retry-after'], '5')
})

t.test('a start waits for another replica\'s migration past PG_QUERY_TIMEOUT_MS', async (t) => {
  const databaseUrl = await createScratchDatabase(t)
  const other = await sessionOn(t, databaseUrl)
  // the lock a migrating replica holds (src/db/client.ts), for longer than the timeout
  await other.query('select pg_advisory_lock(7275871)')
  const released = sleep(4 * QUERY_TIMEOUT_MS).then(() => other.query('select pg_advisory_unlock(7275871)'))
  const startedAt = Date.now()
  const { admin } = await buildTestApp(t, { DATABASE_URL: databaseUrl, PG_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS) })
  await released
  t.ok(Date.now() - startedAt >= 4 * QUERY_TIMEOUT_MS, 'the start waited for the lock')
  t.equal((await admin('GET', '/admin/v1/workspaces')).statusCode, 200, 'and serves once migrated')
})

/** The gateway's pool, of `poolSize` connections to PostgreSQL at `url`, bounded by PG_QUERY_TIMEOUT_MS. */
async function gatewayPool (t: Tap, url: string, poolSize: number): Promise<DatabaseHandle> {
  const database = await openDatabase({ url, dataDir: 'unused-on-postgres', poolSize,
    queryTimeoutMs: QUERY_TIMEOUT_MS })
  // a pool that lost a connection waits for it forever as it ends: the test ends all the same
  t.teardown(() => within(database.close(), 2_000))
  return database
}

/** What `promise` rejects with; undefined when it resolves. */
function failureOf (promise: Promise<unknown>): Promise<unknown> {
  return promise.then(() => undefined, (err: unknown) => err)
}

async function backendPid (database: DatabaseHandle): Promise<number> {
  const result = await database.db.execute(sql`select pg_backend_pid() as pid`) as unknown as
    { rows: Array<{ pid: number }> }
  return result.rows[0].pid
}

t.test('transactions whose begin the driver gives up on (a network gone silent) give their connections back: the ' +
  'pool serves again once the network is back', async (t) => {
  const proxy = await stallingProxy(TEST_DATABASE_URL)
  const database = await gatewayPool(t, proxy.url, 2)
  t.teardown(() => proxy.close())
  // both connections open, and idle in the pool
  await Promise.all([1, 2].map(() => database.db.execute(sql`select pg_sleep(0.05)`)))
  proxy.stall()
  const failures = await Promise.all([1, 2].map(() =>
    failureOf(database.db.transaction(async (tx) => { await tx.execute(sql`select 1`) }))))
  for (const err of failures) {
    t.match(err, { message: /Failed query: begin/, cause: { message: 'Query read timeout' } }, 'begin was given up')
    t.ok(databaseUnanswered(err), 'PostgreSQL not answering: a 503')
  }
  proxy.unstall()
  const startedAt = Date.now()
  const after = await Promise.all([1, 2, 3].map(() =>
    failureOf(database.db.transaction(async (tx) => { await tx.execute(sql`select 1`) }))))
  const elapsed = Date.now() - startedAt
  t.same(after.map(String), ['undefined', 'undefined', 'undefined'], 'every transaction is served')
  t.ok(elapsed < 2_000, `on new connections, at once (${elapsed} ms)`)
})

t.test('a transaction whose statement and rollback the driver gives up on: its connection is not handed out again',
  async (t) => {
    const proxy = await stallingProxy(TEST_DATABASE_URL)
    const database = await gatewayPool(t, proxy.url, 1)
    t.teardown(() => proxy.close())
    const pid = await backendPid(database)
    const err = await failureOf(database.db.transaction(async (tx) => {
      await tx.execute(sql`select 1`)
      proxy.stall()
      await tx.execute(sql`select 2`)
    }))
    t.match(err, { message: /Failed query: rollback/, cause: { message: 'Query read timeout' } },
      'the rollback failed too, with the statement\'s cause')
    t.ok(databaseUnanswered(err), 'PostgreSQL not answering: a 503')
    proxy.unstall()
    const startedAt = Date.now()
    const next = await within(backendPid(database), HUNG_MS)
    const elapsed = Date.now() - startedAt
    t.ok(typeof next === 'number' && next !== pid, `the next query is answered, on a new connection (${next})`)
    t.ok(elapsed < 1_000, `at once (${elapsed} ms)`)
  })

t.test('a statement PostgreSQL cancels inside a transaction: the connection, rolled back, serves the next caller',
  async (t) => {
    const database = await gatewayPool(t, TEST_DATABASE_URL, 1)
    const pid = await backendPid(database)
    const err = await failureOf(database.db.transaction(async (tx) => { await tx.execute(sql`select pg_sleep(5)`) }))
    t.match(err, { cause: { code: '57014' } }, 'cancelled by statement_timeout')
    t.ok(databaseUnanswered(err), 'PostgreSQL not answering: a 503')
    t.equal(await backendPid(database), pid, 'the same connection: PostgreSQL answered on it, it was not dropped')
    const result = await database.db.transaction(async (tx) => await tx.execute(sql`select 1 as one`)) as unknown as
      { rows: unknown[] }
    t.same(result.rows, [{ one: 1 }], 'out of the failed transaction')
  })

t.test('a connection cut in the middle of a transaction fails the transaction (a 503), not the process', async (t) => {
  const { proxy, url } = await proxiedDatabase(t, TEST_DATABASE_URL)
  const database = await gatewayPool(t, url, 1)
  const err = await failureOf(database.db.transaction(async (tx) => {
    await tx.execute(sql`select 1`)
    proxy.cut()
    await sleep(50)
    await tx.execute(sql`select 2`)
  }))
  t.ok(databaseUnanswered(err), `PostgreSQL not answering: a 503 (${String(err)})`)
  proxy.restore()
  t.equal(String(await failureOf(database.db.execute(sql`select 1`))), 'undefined', 'the pool connects again')
})

t.test('a Mistral key whose first read PostgreSQL does not answer in time: the call is a 503 not_ready, and its ' +
  'ledger row says 503', async (t) => {
  // a database of its own: the whole mistral_keys table is locked below
  const databaseUrl = await createScratchDatabase(t)
  const { app, admin, logs, mistral, createWorkspace } = await buildTestApp(t,
    { DATABASE_URL: databaseUrl, PG_QUERY_TIMEOUT_MS: String(QUERY_TIMEOUT_MS) })
  const ws = await createWorkspace({ keys: ['default', 'other'] })
  const bound = await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'bound', mistralKey: 'other' })
  const headers = { authorization: `Bearer ${bound.json.token}`, 'content-type': 'application/json' }
  // the token is read now, before the lock; its key 'other' by no call yet
  t.equal((await app.inject({ method: 'GET', url: '/tramontane/v1/me', headers })).statusCode, 200)
  const locker = await sessionOn(t, databaseUrl)
  await locker.query('begin')
  await locker.query('lock table mistral_keys in access exclusive mode')
  const res = await within(app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers,
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] }
  }), HUNG_MS)
  await locker.query('rollback')
  if (res === NO_ANSWER) return t.fail(`the call still waits after ${HUNG_MS} ms`)
  t.equal(res.statusCode, 503)
  t.match(res.json(), { ...notReady, message: /database/, request_id: res.headers['x-request-id'] },
    'PostgreSQL\'s outage answer, not Mistral unreachable')
  t.equal(res.headers['retry-after'], '5')
  t.equal(mistral.received.length, 0, 'Mistral was not called')
  t.equal(logs.filter((line) => line.includes('PostgreSQL did not answer')).length, 1, 'the log says why')
  await app.usage.flush()
  const records = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records as any[]
  t.match(records, [{ status: 503, upstreamStatus: null }], 'recorded as the 503 it was')
})

t.test('a client that hangs up in the middle of its upload is its own 400, not PostgreSQL not answering', async (t) => {
  const { app, logs, adminHeaders, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const port = Number(new URL(await listen(app)).port)
  const calls = [['/v1/chat/completions', ws.headers.authorization],
    ['/admin/v1/workspaces', adminHeaders.authorization]]
  const before = logs.length
  for (const [path, authorization] of calls) {
    const socket = connect(port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.write(`POST ${path} HTTP/1.1\r\nhost: gateway\r\nauthorization: ${authorization}\r\n` +
      'content-type: application/json\r\ncontent-length: 100000\r\n\r\n{"model":"mistral')
    await sleep(100)
    socket.destroy()
  }
  const entries = () => logs.slice(before)
    .map((line) => JSON.parse(line) as { msg: string, path?: string, status?: number })
  const requestLines = () => entries().filter((entry) => entry.msg === 'request')
  for (let waited = 0; requestLines().length < calls.length && waited < 3_000; waited += 50) await sleep(50)
  t.same(requestLines().map((entry) => [entry.path, entry.status]),
    [['/v1/chat/completions', 400], ['/admin/v1/workspaces', 400]], 'each request line says 400')
  t.same(entries().filter((entry) => entry.msg.includes('PostgreSQL')), [], 'and no line blames PostgreSQL')
})
