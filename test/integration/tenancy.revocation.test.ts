import { randomBytes, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildTestApp, TEST_ADMIN_TOKEN, TEST_DATABASE_URL, TEST_REDIS_URL, gatewayEnv } from '../helpers/app.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'
import { proxiedDatabase, startTcpProxy } from '../helpers/tcp-proxy.js'
import { hashWorkspaceToken } from '../../src/tenancy/token-format.js'

// the two replicas of the revocation case start while the cases that run in this process go, and that case runs last:
// they are processes of their own, whose start mostly waits. A failed start fails that case
const mistral = await startFakeMistral()
t.teardown(() => mistral.close())
const replicasStarting = Promise.all([0, 1].map(() => startGatewayProcess(t, {
  ...gatewayEnv(mistral.url),
  // the push must do the work, not the cache expiring
  TOKEN_CACHE_TTL_MS: '600000'
})))
replicasStarting.catch(() => {})

t.test('a token known before a PostgreSQL outage keeps working through it, whatever other workspace changes meanwhile; ' +
  'one that cannot be read gets a 503 to retry',
  async (t) => {
    const { proxy, url } = await proxiedDatabase(t, TEST_DATABASE_URL)
    const testApp = await buildTestApp(t, { DATABASE_URL: url, TOKEN_CACHE_TTL_MS: '50' })
    const { app } = testApp
    const ws = await testApp.createWorkspace()
    const token = ws.headers.authorization.slice('Bearer '.length)
    const chat = async () => (await app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: { ...ws.headers, 'content-type': 'application/json' },
      payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }] }
    })).statusCode
    t.equal(await chat(), 200, 'served before the outage: its token and Mistral key are known')
    // a second token of the workspace, never used: this replica has not read it
    const unread = await testApp.admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'unread' })
    t.equal(unread.statusCode, 201, 'a second token, never used')

    proxy.cut()
    await sleep(100) // its cache entry is due for a new read, which fails
    const lookup = app.tenancy.tokens.authenticate(token)
    // while that read waits on PostgreSQL, another workspace changes (another test's, another client's)
    await app.tenancy.tokens.forgetWorkspace(randomUUID())
    t.equal((await lookup)?.workspace.id, ws.id, 'still known: the change was not to its workspace')
    t.equal(await chat(), 200, 'and its calls are served')

    // a change to its own workspace is another matter: what was read before may be wrong now
    await app.tenancy.tokens.forgetWorkspace(ws.id)
    await t.rejects(app.tenancy.tokens.authenticate(token), { code: 'authentication_unavailable' },
      'not served from what was read before its workspace changed')

    // neither token can be told valid or invalid now: a 503 to retry, not a 401 the client would act on
    for (const [name, bearer] of [['the token whose workspace changed', token], ['a token never read', unread.json.token]]) {
      const res = await app.inject({
        method: 'POST',
        url: '/v1/chat/completions',
        headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
        payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }] }
      })
      t.equal(res.statusCode, 503, `${name}: 503`)
      t.match(res.json(), {
        type: 'server_error', code: 'authentication_unavailable', request_id: res.headers['x-request-id']
      }, `${name}: the error envelope, with the request id`)
      t.same([res.headers['retry-after'], res.headers['retry-after-ms']], ['5', '5000'], `${name}: retry in 5 s`)
      t.notOk(res.body.includes(bearer), `${name}: the body does not carry the token`)
    }
    // the outage is in the log once for the retry period, as the driver tells it: not the query, which names the hash
    const logged = testApp.logs.filter((line) => line.includes('token lookup failed'))
    t.equal(logged.length, 1, 'the failing reads are logged once in 5 s')
    const line = JSON.parse(logged[0] ?? '{}')
    t.match(line, { level: 50, err: { message: /\S/ } }, 'as an error, with what the driver said')
    // pino's error serialiser adds the type and an empty stack to a plain object
    t.same(Object.keys(line.err).filter((name) => !['code', 'type', 'stack'].includes(name)), ['message'],
      'and nothing else of the error')
    t.equal(line.err.stack, '', 'no stack: not the wrapping error\'s')
    t.notMatch(logged[0], /Failed query|workspace_tokens|params/, 'not the query, which quotes the hash')
    for (const secret of [token, unread.json.token]) {
      t.notOk(testApp.logs.some((line) => line.includes(secret) || line.includes(hashWorkspaceToken(secret)!.toString('hex'))),
        'no log line carries a token or its hash')
    }
    const malformed = await app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer not-a-token' } })
    t.equal(malformed.statusCode, 401, 'a token that cannot be one is refused as ever, without PostgreSQL')
    proxy.restore()
  })

t.test('a token that expires during a PostgreSQL outage is refused at its expiry all the same', async (t) => {
  // its 1.5 s must not be shared with the replicas' start, which compiles and loads while it runs
  await replicasStarting.catch(() => {})
  const { proxy, url } = await proxiedDatabase(t, TEST_DATABASE_URL)
  const testApp = await buildTestApp(t, { DATABASE_URL: url })
  const expiresAt = Date.now() + 1_500
  const ws = await testApp.createWorkspace({ tokenBody: { expiresAt: new Date(expiresAt).toISOString() } })
  const models = async () => await testApp.app.inject({ method: 'GET', url: '/v1/models', headers: ws.headers })
  t.equal((await models()).statusCode, 200, 'served before the outage, so the replica has it cached')

  proxy.cut()
  t.equal((await models()).statusCode, 200, 'and through the outage while it lives')
  await sleep(expiresAt - Date.now() + 100)
  const res = await models()
  t.equal(res.statusCode, 401, 'past its expiry, refused though PostgreSQL cannot be read')
  t.match(res.json(), { code: 'invalid_token', request_id: res.headers['x-request-id'] })
  t.equal((await models()).statusCode, 401, 'and again on the next call')
  proxy.restore()
})

/** Whether `check` holds within `timeoutMs`, asked every 10 ms. */
async function until (check: () => boolean, timeoutMs = 2_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (!check() && Date.now() < deadline) await sleep(10)
  return check()
}

t.test('a lookup is cached though another workspace changed while it read; not when its own workspace did', async (t) => {
  // every byte to and from PostgreSQL held 150 ms: a lookup takes long enough for a change to arrive in the middle
  const database = new URL(TEST_DATABASE_URL)
  const proxy = await startTcpProxy(Number(database.port || 5432), database.hostname, { delayMs: 150 })
  t.teardown(() => proxy.close())
  database.hostname = '127.0.0.1'
  database.port = String(proxy.port)
  const testApp = await buildTestApp(t, { DATABASE_URL: database.toString() })
  const { app } = testApp
  // made through a gateway on a direct connection: the delay is for the reads under test, not for the setup's writes
  const direct = await buildTestApp(t, {}, { mistral: testApp.mistral })
  // the setup's cache messages reach the app under test over Redis: they must have arrived before a read they would
  // stop. What the setup's gateway published (it hears its own at once) is what the app under test must have heard
  const published = new Map<string, number>()
  const heard = new Map<string, number>()
  const count = (seen: Map<string, number>) => (message: unknown) => {
    const key = JSON.stringify(message)
    seen.set(key, (seen.get(key) ?? 0) + 1)
  }
  direct.app.bus.subscribe(count(published))
  app.bus.subscribe(count(heard))
  const [ws, other] = await Promise.all([direct.createWorkspace(), direct.createWorkspace()])
  const setupMessages = [...published]
  // else the wait below holds on no message at all
  const announced = (workspaceId: string) => setupMessages.some(([message]) => {
    const parsed = JSON.parse(message) as { type?: string, workspaceId?: string } | null
    return parsed?.type === 'workspace' && parsed.workspaceId === workspaceId
  })
  t.same([announced(ws.id), announced(other.id)], [true, true],
    'the setup published the cache message of each workspace it made')
  t.ok(await until(() => setupMessages.every(([message, times]) => (heard.get(message) ?? 0) >= times)),
    `the setup's ${setupMessages.length} kinds of cache message reached the app under test`)
  const tokenOf = (workspace: typeof ws) => workspace.headers.authorization.slice('Bearer '.length)

  /** Reads `workspace`'s token, and changes the workspace `changed` while the read is under way. */
  const readCrossedBy = async (workspace: typeof ws, changed: string, what: string) => {
    const lookup = app.tenancy.tokens.authenticate(tokenOf(workspace))
    let done = false
    lookup.finally(() => { done = true }).catch(() => {})
    await sleep(50)
    await app.tenancy.tokens.forgetWorkspace(changed)
    t.notOk(done, `the change came while the read ${what} was under way`)
    t.equal((await lookup)?.workspace.id, workspace.id, `read ${what}`)
  }
  // an operator at work on another client: what the read found still holds
  await readCrossedBy(ws, other.id, 'while another workspace changed')
  // its own workspace changed: what the read found may be stale, so it is not kept
  await readCrossedBy(other, other.id, 'while its own workspace changed')

  proxy.cut()
  t.equal((await app.tenancy.tokens.authenticate(tokenOf(ws)))?.workspace.id, ws.id,
    'the first was cached: it is served without PostgreSQL')
  await t.rejects(app.tenancy.tokens.authenticate(tokenOf(other)), { code: 'authentication_unavailable' },
    'the second was not: it must be read again')
  proxy.restore()
})

t.test('an admin change committed while Redis is down is answered and audited as done', async (t) => {
  const redisUrl = new URL(TEST_REDIS_URL)
  const proxy = await startTcpProxy(Number(redisUrl.port || 6379), redisUrl.hostname)
  t.teardown(() => proxy.close())
  const { admin, createWorkspace } = await buildTestApp(t, { REDIS_URL: `redis://127.0.0.1:${proxy.port}` })
  const ws = await createWorkspace()
  const minted = await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'spare' })
  t.equal(minted.statusCode, 201)

  proxy.cut()
  const suspended = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { status: 'suspended' })
  t.equal(suspended.statusCode, 200, 'the suspension is answered')
  t.equal(suspended.json.status, 'suspended')
  const revoked = await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/tokens/${minted.json.id}`)
  t.equal(revoked.statusCode, 200, 'the revocation is answered')
  proxy.restore()

  const log = (await admin('GET', '/admin/v1/audit-log?limit=1000')).json.data as Array<Record<string, unknown>>
  const mine = log.filter((entry) => entry.workspaceId === ws.id).map((entry) => entry.action)
  t.ok(mine.includes('workspace.update'), 'the suspension is audited')
  t.ok(mine.includes('token.revoke'), 'the revocation is audited')
})

t.test('a token put in an admin path by mistake (revoked by its secret) never reaches the log', async (t) => {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const minted = await testApp.admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'canary' })
  const secret = minted.json.token as string
  t.match(secret, /^tmt_/)
  const wrong = await testApp.admin('DELETE', `/admin/v1/workspaces/${ws.slug}/tokens/${secret}`)
  t.equal(wrong.statusCode, 404, 'no token has that id')
  const line = testApp.logs.map((l) => JSON.parse(l)).find((l) => l.msg === 'request' && l.method === 'DELETE')
  t.equal(line?.path, `/admin/v1/workspaces/${ws.slug}/tokens/[redacted]`, 'its request line says where, not what')
  t.notOk(testApp.logs.some((l) => l.includes(secret)), 'no log line holds the secret')
})

t.test('a revoked token is refused by every replica within 1 s', async (t) => {
  const [one, two] = await replicasStarting
  const admin = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(one.url + path, {
      method,
      headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    return res.json() as Promise<any>
  }
  const slug = `rv-${randomBytes(5).toString('hex')}`
  await admin('POST', '/admin/v1/workspaces', { slug, name: 'Revocation' })
  await admin('POST', `/admin/v1/workspaces/${slug}/mistral-keys`, { name: 'default', key: 'sk-revocation-test' })
  const minted = await admin('POST', `/admin/v1/workspaces/${slug}/tokens`, { name: 'app' })
  const models = (url: string) => fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${minted.token}` } })

  // both replicas have the token in their caches
  for (const gateway of [one, two]) t.equal((await models(gateway.url)).status, 200)

  const revokedAt = Date.now()
  await admin('DELETE', `/admin/v1/workspaces/${slug}/tokens/${minted.id}`)
  const refusedAfter: number[] = []
  for (const gateway of [one, two]) {
    let status = 200
    while (status !== 401 && Date.now() - revokedAt < 5_000) {
      status = (await models(gateway.url)).status
      if (status !== 401) await new Promise((resolve) => setTimeout(resolve, 20))
    }
    refusedAfter.push(Date.now() - revokedAt)
    t.equal(status, 401)
  }
  t.ok(refusedAfter.every((ms) => ms < 1_000), `refused after ${refusedAfter.join(' ms, ')} ms`)
  const body = await (await models(two.url)).json() as any
  t.equal(body.code, 'invalid_token')
})
