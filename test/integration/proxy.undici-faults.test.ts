import { connect } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { recordsOf, requestLine } from '../helpers/recorded.js'

// What undici throws from pool.request is not always Mistral's or the network's doing (src/proxy/attempts.ts): a
// request the gateway built wrong is its own 500, and a pool closed by the gateway's shutdown is its 503. Neither is
// held against the key (its breaker), nor retried. With BREAKER_THRESHOLD=1 a single failure counted against the key
// would open its breaker.

const CHAT = '/v1/chat/completions'
const CHAT_BODY = JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] })
const MISTRAL_503 = { object: 'error', message: 'Service unavailable', type: 'server_error', param: null, code: '3000' }
const BOUNDARY = 'tramontane-short-upload'
const FORM = `--${BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n` +
  'Content-Type: application/octet-stream\r\n\r\n{"a":1}\n'

const chat = (s: TestApp, ws: TestWorkspace, headers: Record<string, string> = {}) => s.app.inject({
  method: 'POST',
  url: CHAT,
  headers: { ...ws.headers, 'content-type': 'application/json', ...headers },
  payload: CHAT_BODY
})

async function cooldownOf (s: TestApp, ws: TestWorkspace) {
  const keys = (await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data as any[]
  return keys[0].cooldown
}

function failureLogged (s: TestApp, requestId: string) {
  return s.logs.map((line) => JSON.parse(line))
    .find((line) => line.msg === 'request failed' && line.reqId === requestId)
}

t.test('a header undici refuses to send is the gateway\'s own 500: nothing sent, the key not blamed', async (t) => {
  const s = await buildTestApp(t, { BREAKER_THRESHOLD: '1' })
  const ws = await s.createWorkspace()
  // Node's parser refuses such a value from a socket (its own 400); an in-process caller (inject) can pass it, and
  // undici refuses it with UND_ERR_INVALID_ARG
  const res = await chat(s, ws, { 'x-note': 'caf\u0100' })
  const requestId = String(res.headers['x-request-id'])
  t.same([res.statusCode, res.json().type, res.json().code], [500, 'server_error', 'internal_error'],
    'the gateway\'s fault, not upstream_unreachable')
  t.equal(s.mistral.received.length, 0, 'nothing went to Mistral, and nothing was retried')
  t.match(failureLogged(s, requestId)?.err, { code: 'UND_ERR_INVALID_ARG' }, 'logged with its cause')
  t.equal(await cooldownOf(s, ws), null, 'the key\'s breaker did not count it')
  t.match(await recordsOf(s, ws), [{ requestId, status: 500, upstreamStatus: null }],
    'the ledger records the status the client got')
  t.equal((await chat(s, ws)).statusCode, 200, 'the key serves the next call')
})

t.test('an upload body that ends short of the length it was sent with is the gateway\'s own 500, sent once',
  async (t) => {
    const s = await buildTestApp(t, { BREAKER_THRESHOLD: '1' })
    const ws = await s.createWorkspace()
    // a stream the gateway hands undici that ends short of the content-length forwarded with it: over a socket Node
    // never ends a request's body short (next test), so only the gateway's side (or an in-process caller) does this
    const res = await s.app.inject({
      method: 'POST',
      url: '/v1/files',
      headers: {
        ...ws.headers,
        'content-type': `multipart/form-data; boundary=${BOUNDARY}`,
        'content-length': String(FORM.length + 100)
      },
      payload: FORM
    })
    const requestId = String(res.headers['x-request-id'])
    t.same([res.statusCode, res.json().code], [500, 'internal_error'], 'not upstream_unreachable')
    t.match(failureLogged(s, requestId)?.err, { code: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' }, 'logged with its cause')
    t.equal(await cooldownOf(s, ws), null, 'the key\'s breaker did not count it')
    // undici cuts the connection as the body ends: the fake may or may not have seen the request begin
    await sleep(200)
    t.ok(s.mistral.requestsTo('/v1/files').length <= 1, 'sent once at most')
    // an upload is no metered call: no ledger row, the request line says how it ended
    t.match(requestLine(s, requestId), { status: 500, operation: 'files_api_routes_upload_file' },
      'the request line records the status the client got')
  })

t.test('a client whose upload stops short over a socket never reaches undici: Node answers 400, the key unblamed',
  async (t) => {
    const s = await buildTestApp(t, { BREAKER_THRESHOLD: '1' })
    const ws = await s.createWorkspace()
    const url = new URL(await listen(s.app))
    const socket = connect(Number(url.port), url.hostname)
    t.teardown(() => socket.destroy())
    let answer = ''
    socket.on('data', (chunk) => { answer += chunk })
    socket.write(`POST /v1/files HTTP/1.1\r\nhost: gateway\r\nauthorization: ${ws.headers.authorization}\r\n` +
      `content-type: multipart/form-data; boundary=${BOUNDARY}\r\ncontent-length: ${FORM.length + 100}\r\n\r\n${FORM}`)
    while (s.mistral.requestsTo('/v1/files').length === 0) await sleep(10)
    socket.end() // the upload ends 100 bytes short; the client still reads
    while (!answer.includes('\r\n\r\n')) await sleep(10)
    t.match(answer, /^HTTP\/1\.1 400 /, 'Node\'s own answer to a request cut short')
    t.equal(await cooldownOf(s, ws), null, 'the key\'s breaker did not count it')
  })

// Reached through inject only, as a guard of defensive code: no client on a socket meets the closed pool. app.ts
// closes it in an onClose hook, which fastify runs after server.close() has seen every connection end, and a call whose
// connection the grace period cuts is aborted (its signal) before any retry; a batch job's creation, never aborted,
// could meet the closed pool then, but its client is gone. An injected call holds no connection.
t.test('a retry the gateway\'s shutdown stops (its pool closed) is its 503, neither blamed on the key nor retried',
  async (t) => {
    const env = { BREAKER_THRESHOLD: '2', UPSTREAM_RETRIES: '3', UPSTREAM_COOLDOWN_HOLD_MS: '0' }
    const one = await buildTestApp(t, env)
    // another replica on the same Redis and database, to read the key's breaker and the ledger once `one` is closed
    const two = await buildTestApp(t, env, { mistral: one.mistral })
    const ws = await one.createWorkspace()
    // a stream in flight keeps the closing pool open (undici's close waits for it) and the rest of `one` with it
    const gate = one.mistral.holdStreams()
    const streaming = one.app.inject({
      method: 'POST', url: CHAT, headers: { ...ws.headers, 'content-type': 'application/json' },
      payload: JSON.stringify({ ...JSON.parse(CHAT_BODY), stream: true })
    })
    while (one.mistral.inFlight === 0) await sleep(10)
    // Mistral's 503, a failure of the key's, comes once the pool is closed: the call's retry meets the closed pool
    one.mistral.enqueue((_req, res) => setTimeout(() => {
      res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify(MISTRAL_503))
    }, 300), CHAT)
    const call = chat(one, ws)
    while (one.mistral.inFlight < 2) await sleep(10)
    const closing = one.app.close()

    const res = await call
    t.same([res.statusCode, res.json().type, res.json().code], [503, 'server_error', 'not_ready'],
      'the gateway\'s closing, not Mistral unreachable')
    t.match(res.json().message, /shutting down/)
    t.equal(res.headers['retry-after'], '1')
    t.equal(one.mistral.requestsTo(CHAT).length, 2, 'the stream and the call\'s one try reached Mistral')
    const retried = one.app.metrics.registry.getSingleMetric('tramontane_upstream_retries_total')!
    const [retries] = (await retried.get()).values
    t.equal(retries.value, 1, 'retried once, after the 503, and not after the closed pool')
    gate.release()
    await streaming
    await closing

    await sleep(200) // the breaker's news, had there been any, travels by pub/sub
    t.equal(await cooldownOf(two, ws), null, 'one failure counted (the 503), below BREAKER_THRESHOLD')
    const records = await recordsOf(two, ws, 2)
    t.match(records.find((row) => row.requestId === res.headers['x-request-id']), { status: 503 },
      'the ledger records the status the client got')
  })
