import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { Client, request } from 'undici'
import { TEST_ADMIN_TOKEN, TEST_DATABASE_URL, gatewayEnv } from '../helpers/app.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'

const CHAT_OPERATION = 'chat_completion_v1_chat_completions_post'
const chat = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Tell me a story' }], ...extra })

/** One request on a connection of its own: a status, or the error code when no connection was made. */
async function probe (url: string): Promise<number | string> {
  const client = new Client(new URL(url).origin)
  try {
    const res = await request(url, { dispatcher: client, headersTimeout: 2_000 })
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
  t.same(await readyz.body.json(), { status: 'ready', database: 'postgres', redis: 'redis' })
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
  const db = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await db.connect()
  t.teardown(() => db.end())
  const { rows } = await db.query('select * from usage_records where request_id = $1', [streamId])
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
