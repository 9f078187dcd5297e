import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import { Client, request } from 'undici'
import { TEST_ADMIN_TOKEN, TEST_DATABASE_URL, TEST_REDIS_URL, buildTestApp, gatewayEnv, listen } from '../helpers/app.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'
import { proxiedDatabase, startTcpProxy } from '../helpers/tcp-proxy.js'

const CHAT_OPERATION = 'chat_completion_v1_chat_completions_post'
const chat = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Tell me a story' }], ...extra })

interface ProbeOptions { method?: 'GET' | 'POST', headers?: Record<string, string>, body?: string }

/** One request on a connection of its own: a status, or the error code when no connection was made. */
async function probe (url: string, options: ProbeOptions = {}): Promise<number | string> {
  const client = new Client(new URL(url).origin)
  try {
    const res = await request(url, { ...options, dispatcher: client, headersTimeout: 2_000 })
    await res.body.dump()
    return res.statusCode
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err)
  } finally {
    client.destroy().catch(() => {})
  }
}

/** The process is there and not a zombie waiting to be reaped. */
function alive (pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))
  } catch {
    return false
  }
}

async function until<T> (check: () => Promise<T> | T, done: (value: T) => boolean, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let value = await check()
  while (!done(value) && Date.now() < deadline) {
    await sleep(25)
    value = await check()
  }
  return value
}

/** A workspace with a Mistral key and a token, made through the gateway's admin API: the token's request headers. */
async function tokenHeaders (gatewayUrl: string): Promise<Record<string, string>> {
  const admin = async (path: string, body: unknown) => {
    const res = await request(gatewayUrl + path, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify(body)
    })
    if (res.statusCode !== 201) throw new Error(`POST ${path}: ${res.statusCode} ${await res.body.text()}`)
    return res.body.json() as Promise<any>
  }
  const slug = `lc-${randomBytes(5).toString('hex')}`
  await admin('/admin/v1/workspaces', { slug, name: 'Lifecycle' })
  const key = `sk-lifecycle-${randomBytes(12).toString('hex')}`
  await admin(`/admin/v1/workspaces/${slug}/mistral-keys`, { name: 'default', key })
  const { token } = await admin(`/admin/v1/workspaces/${slug}/tokens`, { name: 'app' })
  return { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
}

/** The SSE events in what a client has read so far. */
const eventsIn = (text: string) => text.match(/^data: /gm)?.length ?? 0

async function ledgerRows (t: Test, requestId: string) {
  const db = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await db.connect()
  t.teardown(() => db.end())
  const { rows } = await db.query('select * from usage_records where request_id = $1', [requestId])
  return rows
}

t.test('a gateway process serves health, drains a stream on SIGTERM, writes its usage and exits 0', async (t) => {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const gateway = await startGatewayProcess(t, {
    ...gatewayEnv(mistral.url),
    // long enough that the exit below is the drain's, not the grace timer's
    SHUTDOWN_GRACE_MS: '8000'
  })
  const requestIds: string[] = [] // of every call this test makes, to find their log lines

  const healthz = await request(`${gateway.url}/healthz`)
  t.equal(healthz.statusCode, 200)
  t.same(await healthz.body.json(), { status: 'ok' })
  const readyz = await request(`${gateway.url}/readyz`)
  t.equal(readyz.statusCode, 200)
  t.same(await readyz.body.json(), { status: 'ready', database: 'ok', redis: 'ok' })
  requestIds.push(String(healthz.headers['x-request-id']), String(readyz.headers['x-request-id']))

  // set up through the gateway itself, so that its log has seen the Mistral key and the token go by
  const admin = async (method: 'POST', path: string, body: unknown) => {
    const res = await request(gateway.url + path, {
      method,
      headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify(body)
    })
    requestIds.push(String(res.headers['x-request-id']))
    t.equal(res.statusCode, 201, `${method} ${path}`)
    return res.body.json() as Promise<any>
  }
  const slug = `lc-${randomBytes(5).toString('hex')}`
  const mistralKey = `sk-lifecycle-${randomBytes(12).toString('hex')}`
  await admin('POST', '/admin/v1/workspaces', { slug, name: 'Lifecycle' })
  await admin('POST', `/admin/v1/workspaces/${slug}/mistral-keys`, { name: 'default', key: mistralKey })
  const { token } = await admin('POST', `/admin/v1/workspaces/${slug}/tokens`, { name: 'app' })
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }

  const complete = await request(`${gateway.url}/v1/chat/completions`, { method: 'POST', headers, body: chat() })
  t.equal(complete.statusCode, 200)
  const completion = await complete.body.json() as { usage: { total_tokens: number } }
  const completeId = String(complete.headers['x-request-id'])
  requestIds.push(completeId)

  // a stream in flight on a keep-alive connection, as any client or load balancer holds: its first event is out,
  // the rest waits for the gate
  const streamClient = new Client(gateway.url)
  t.teardown(() => streamClient.destroy())
  const gate = mistral.holdStreams()
  const stream = await request(`${gateway.url}/v1/chat/completions`, {
    method: 'POST', headers, body: chat({ stream: true }), dispatcher: streamClient
  })
  t.equal(stream.statusCode, 200)
  const streamId = String(stream.headers['x-request-id'])
  requestIds.push(streamId)
  const reader = stream.body[Symbol.asyncIterator]()
  let text = String((await reader.next()).value)
  t.match(text, /^data: \{/, 'the first event arrived before the shutdown')

  const terminatedAt = Date.now()
  process.kill(gateway.pid, 'SIGTERM')
  // a connection caught as the listener closes is reset or dropped unanswered; after that, none is accepted
  const draining = await until(() => probe(`${gateway.url}/readyz`), (outcome) => outcome !== 200, 3_000)
  t.match(String(draining), /^(503|ECONNREFUSED|ECONNRESET|UND_ERR_SOCKET)$/, `while draining, /readyz gets ${draining}`)
  const later = await probe(`${gateway.url}/readyz`)
  t.match(String(later), /^(503|ECONNREFUSED)$/, `then ${later}`)
  t.match(String(await probe(`${gateway.url}/v1/models`)), /^(503|ECONNREFUSED)$/, 'and so does any new call')
  t.ok(alive(gateway.pid), 'the process waits for the stream in flight')

  gate.release()
  for await (const chunk of { [Symbol.asyncIterator]: () => reader }) text += chunk
  t.match(text, /data: \[DONE\]\n\n$/, 'the stream in flight completed')
  const streamEndedAt = Date.now()

  // Node's server.close() ends the connections idle when it is called, not those that go idle later: the gateway
  // must end the stream's connection itself, or close() waits for the keep-alive timeout, past the grace delay
  const stillAlive = await until(() => alive(gateway.pid), (running) => !running, 2_000)
  t.notOk(stillAlive, 'exits once the stream is done, though its client keeps the connection open')
  await streamClient.close() // the client hangs up: nothing holds the server any more
  await until(() => alive(gateway.pid), (running) => !running, 5_000)
  const code = await gateway.stop(1_000) // already gone: only reads the exit code
  t.equal(code, 0, `exited with 0, ${Date.now() - streamEndedAt} ms after the stream ended ` +
    `(${Date.now() - terminatedAt} ms after SIGTERM)`)

  const reported = mistral.reportedUsage.find((usage) => usage.streamed)
  t.ok(reported, 'the fake reported usage on the stream')
  const rows = await ledgerRows(t, streamId)
  t.equal(rows.length, 1, "the drained stream's usage record was written before exit")
  t.match(rows[0], {
    operation: 'chat',
    model: 'mistral-small-latest',
    streamed: true,
    estimated: false,
    status: 200,
    total_tokens: reported?.usage.total_tokens
  })

  // the log: JSON lines only, one `request` line per request, facts and no secrets
  const output = gateway.output()
  const lines = output.split('\n').filter((line) => line.trim() !== '')
  const parsed = lines.map((line) => { try { return JSON.parse(line) } catch { return undefined } })
  t.same(lines.filter((_, i) => parsed[i] === undefined), [], 'every line of output is JSON')
  const requestLines = parsed.filter((line) => line?.msg === 'request')
  for (const id of requestIds) {
    t.equal(requestLines.filter((line) => line.reqId === id).length, 1, `one request line for ${id}`)
  }
  const ids = requestLines.map((line) => line.reqId)
  t.equal(new Set(ids).size, ids.length, 'no request is logged twice')
  const metered = [
    ['completion', completeId, completion.usage.total_tokens],
    ['stream', streamId, reported?.usage.total_tokens]
  ] as const
  for (const [name, id, tokens] of metered) {
    const line = requestLines.find((candidate) => candidate.reqId === id)
    t.match(line, {
      workspace: slug,
      token: token.slice(0, 12),
      operation: CHAT_OPERATION,
      model: 'mistral-small-latest',
      status: 200,
      upstreamStatus: 200,
      durationMs: Number
    }, `the request line of the ${name} carries the facts`)
    t.equal(line?.tokens, tokens, `and the ${name}'s tokens`)
  }
  t.ok(output.includes('shutting down'), 'the shutdown is logged')
  t.notOk(output.includes(token), 'no line carries the workspace token')
  t.notOk(output.includes(mistralKey), 'no line carries the Mistral key')
  t.notOk(output.includes(TEST_ADMIN_TOKEN), 'no line carries the admin token')
})

t.test('SHUTDOWN_DELAY_MS keeps the listener open after SIGTERM: readiness 503, calls still served', async (t) => {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  // long enough for a loaded machine to answer both probes within it
  const gateway = await startGatewayProcess(t, { ...gatewayEnv(mistral.url), SHUTDOWN_DELAY_MS: '3000' })
  const headers = await tokenHeaders(gateway.url)

  const terminatedAt = Date.now()
  process.kill(gateway.pid, 'SIGTERM')
  // fresh connections, as a load balancer still routing here opens them
  t.equal(await until(() => probe(`${gateway.url}/readyz`), (outcome) => outcome === 503, 2_000), 503,
    '/readyz answers 503')
  t.equal(await probe(`${gateway.url}/v1/chat/completions`, { method: 'POST', headers, body: chat() }), 200,
    'a proxied call is still served')

  const refused = await until(() => probe(`${gateway.url}/readyz`), (outcome) => outcome === 'ECONNREFUSED', 5_000)
  const refusedAfterMs = Date.now() - terminatedAt
  t.equal(refused, 'ECONNREFUSED', 'then the listener closes')
  t.ok(refusedAfterMs >= 3_000, `not before the delay (${refusedAfterMs} ms after SIGTERM)`)
  t.notOk(await until(() => alive(gateway.pid), (running) => !running, 5_000), 'and the process exits')
  t.equal(await gateway.stop(1_000), 0, 'with 0')
})

t.test('past SHUTDOWN_GRACE_MS, a stream still open is cut and billed for what it relayed before the process exits',
  async (t) => {
    const mistral = await startFakeMistral()
    t.teardown(() => mistral.close())
    const gateway = await startGatewayProcess(t, { ...gatewayEnv(mistral.url), SHUTDOWN_GRACE_MS: '500' })
    const headers = await tokenHeaders(gateway.url)

    // Mistral sends a few events, then nothing: the stream outlives the grace
    mistral.faultNextStream({ after: 4, mode: 'stall' })
    const streamClient = new Client(gateway.url)
    t.teardown(() => streamClient.destroy())
    const stream = await request(`${gateway.url}/v1/chat/completions`, {
      method: 'POST', headers, body: chat({ stream: true }), dispatcher: streamClient
    })
    t.equal(stream.statusCode, 200)
    const streamId = String(stream.headers['x-request-id'])
    let text = ''
    const read = (async () => {
      try {
        for await (const chunk of stream.body) text += chunk
      } catch {} // cut: the read ends with an error
    })()
    const relayed = await until(() => eventsIn(text), (events) => events >= 4, 5_000)
    t.equal(relayed, 4, 'the client has the events Mistral sent before it stalled')

    process.kill(gateway.pid, 'SIGTERM')
    t.notOk(await until(() => alive(gateway.pid), (running) => !running, 10_000), 'the process exits')
    await read
    t.notMatch(text, /\[DONE\]/, 'the stream was cut, not completed')
    t.equal(await gateway.stop(1_000), 0, 'with 0: the shutdown finished, usage written')
    t.match(gateway.output(), /shutdown grace period over/, 'the cut is logged')

    const rows = await ledgerRows(t, streamId)
    t.equal(rows.length, 1, "the cut stream's record reached the ledger before exit")
    t.not(rows[0]?.status ?? 0, 0, 'its final record, not the provisional one (status 0)')
    t.ok((rows[0]?.completion_tokens ?? -1) >= relayed - 1,
      `a token at least for each event relayed after the first (${rows[0]?.completion_tokens} for ${relayed})`)
    t.match(rows[0], { streamed: true, estimated: true })
  })

t.test('/readyz stays 200 while PostgreSQL and Redis are unreachable, and says so; ?deep=true is 503', async (t) => {
  const { proxy: database, url } = await proxiedDatabase(t, TEST_DATABASE_URL)
  const redisUrl = new URL(TEST_REDIS_URL)
  const redis = await startTcpProxy(Number(redisUrl.port || 6379), redisUrl.hostname)
  t.teardown(() => redis.close())
  redisUrl.hostname = '127.0.0.1'
  redisUrl.port = String(redis.port)
  const { app } = await buildTestApp(t, { DATABASE_URL: url, REDIS_URL: redisUrl.toString() })
  const readyz = async (query = '') => {
    const res = await app.inject({ method: 'GET', url: `/readyz${query}` })
    return { status: res.statusCode, body: res.json() }
  }

  t.same(await readyz(), { status: 200, body: { status: 'ready', database: 'ok', redis: 'ok' } })
  t.equal((await readyz('?deep=true')).status, 200, 'deep: 200 too')
  database.cut()
  t.same(await readyz(), { status: 200, body: { status: 'ready', database: 'unreachable', redis: 'ok' } },
    'PostgreSQL unreachable: still ready, and says so')
  t.match(await readyz('?deep=true'), { status: 503, body: { code: 'not_ready', message: /database/ } }, 'deep: 503')
  redis.cut()
  t.same(await readyz(), { status: 200, body: { status: 'ready', database: 'unreachable', redis: 'unreachable' } },
    'Redis unreachable too')

  database.restore()
  redis.restore()
  const back = await until(readyz, ({ body }) => body.database === 'ok' && body.redis === 'ok', 10_000)
  t.same(back, { status: 200, body: { status: 'ready', database: 'ok', redis: 'ok' } }, 'both back')
})

t.test('a SHUTDOWN_DELAY_MS out of range stops the start, with its name', async (t) => {
  await t.rejects(startGatewayProcess(t, { ...gatewayEnv('http://127.0.0.1:9'), SHUTDOWN_DELAY_MS: '600001' }),
    /SHUTDOWN_DELAY_MS/)
  await t.rejects(startGatewayProcess(t, { ...gatewayEnv('http://127.0.0.1:9'), SHUTDOWN_DELAY_MS: '-1' }),
    /SHUTDOWN_DELAY_MS/)
})

t.test('once closing, a call on a kept-alive connection gets the envelope 503 with its request id, and the connection closes',
  async (t) => {
    const { app, mistral, createWorkspace } = await buildTestApp(t)
    const ws = await createWorkspace()
    const url = await listen(app)
    // a stream whose headers went out before the close, on a keep-alive connection the client will use again
    const client = new Client(url)
    t.teardown(() => client.destroy())
    const gate = mistral.holdStreams()
    const stream = await request(`${url}/v1/chat/completions`, {
      method: 'POST', headers: { ...ws.headers, 'content-type': 'application/json' }, body: chat({ stream: true }),
      dispatcher: client
    })
    t.equal(stream.statusCode, 200)
    const closed = app.close()
    gate.release()
    t.match(await stream.body.text(), /data: \[DONE\]\n\n$/, 'the stream in flight completes')

    // the next call on the same connection, before the server ends it
    const next = await request(`${url}/v1/models`, { headers: ws.headers, dispatcher: client })
    const body = await next.body.json() as any
    t.equal(next.statusCode, 503)
    t.match(body, { object: 'error', code: 'not_ready', type: 'server_error', request_id: String }, 'the envelope')
    t.equal(next.headers['x-request-id'], body.request_id, 'with its request id')
    t.same([next.headers['retry-after'], next.headers['retry-after-ms']], ['1', '1000'], 'and when to retry')
    t.equal(next.headers.connection, 'close', 'the connection is not kept for another call')
    await closed
  })
