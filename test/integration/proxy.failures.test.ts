import { randomBytes } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { connect } from 'node:net'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { Client, request } from 'undici'
import { SCRAPE_HEADERS, buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { freePort } from '../helpers/gateway-process.js'

const chat = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Tell me a story' }], ...extra })

const jsonHeaders = (ws: TestWorkspace) => ({ ...ws.headers, 'content-type': 'application/json' })

/** The gateway's error envelope, with the request id of the response header, and nothing else of the request. */
function assertEnvelope (t: Test, res: { statusCode: number, headers: Record<string, unknown>, body: string },
  status: number, type: string, code: string) {
  t.equal(res.statusCode, status, `status ${status}`)
  const body = JSON.parse(res.body)
  t.match(body, { object: 'error', type, code, message: String, param: null, error: { type, code } })
  t.equal(body.error.message, body.message)
  t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/)
  t.equal(body.request_id, res.headers['x-request-id'], 'request_id is the x-request-id header')
  return body
}

/** The request lines of proxied chat calls the app has logged so far, parsed. */
function requestLines (testApp: TestApp): Array<Record<string, any>> {
  return testApp.logs.map((line) => JSON.parse(line))
    .filter((line) => line.msg === 'request' && line.path === '/v1/chat/completions')
}

async function until (check: () => boolean, timeoutMs = 2_000) {
  const deadline = Date.now() + timeoutMs
  while (!check() && Date.now() < deadline) await sleep(20)
  return check()
}

/** Reads a streamed answer to its end or to the connection's end, whichever comes; never throws. */
async function readStream (url: string, ws: TestWorkspace) {
  const startedAt = Date.now()
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST', headers: jsonHeaders(ws), body: chat({ stream: true })
  })
  let text = ''
  let failure: unknown
  try {
    for await (const chunk of res.body) text += chunk
  } catch (err) {
    failure = err
  }
  return { res, text, failure, elapsedMs: Date.now() - startedAt }
}

/** A chat stream in Mistral's framing that never ends: large writes, as fast as the gateway takes them. */
async function endlessStream (_req: IncomingMessage, res: ServerResponse) {
  let open = true
  res.once('close', () => { open = false })
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' })
  while (open) {
    if (res.write(ENDLESS_EVENTS)) continue
    await new Promise<void>((resolve) => {
      const done = () => { res.off('drain', done).off('close', done); resolve() }
      res.on('drain', done).on('close', done)
    })
  }
}

// 16 events of 16 kB: a write of 256 kB
const ENDLESS_EVENTS = Buffer.from(`data: ${JSON.stringify({
  id: 'endless', object: 'chat.completion.chunk', created: 0, model: 'mistral-small-latest',
  choices: [{ index: 0, delta: { content: 'word '.repeat(3_200) }, finish_reason: null, logprobs: null }]
})}\n\n`.repeat(16))

/** The workspace's usage records once there is one: the meter settles when the upstream body closes. */
async function usageRecords ({ app, admin }: TestApp, ws: TestWorkspace) {
  const deadline = Date.now() + 2_000
  for (;;) {
    await app.usage.flush()
    const usage = await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)
    const records = usage.json.records as Array<Record<string, unknown>>
    if (records.length > 0 || Date.now() > deadline) return records
    await sleep(50)
  }
}

t.test('an upstream port nobody listens on is a 502 upstream_unreachable', async (t) => {
  const port = await freePort() // free, and nobody listens on it
  const { app, createWorkspace } = await buildTestApp(t, { MISTRAL_BASE_URL: `http://127.0.0.1:${port}` })
  const ws = await createWorkspace()
  const startedAt = Date.now()
  const res = await app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat()
  })
  assertEnvelope(t, res, 502, 'upstream_error', 'upstream_unreachable')
  t.ok(Date.now() - startedAt < 3_000, 'refused at once, not after a timeout')
  t.notMatch(res.body, /ECONNREFUSED|127\.0\.0\.1/, 'the cause stays in the log')
})

t.test('an upstream that accepts and never answers is a 504 upstream_timeout', async (t) => {
  // no retry here: this is about the timeout's mapping (test/integration/resilience.* retries)
  const { app, mistral, createWorkspace } = await buildTestApp(t, { UPSTREAM_HEADERS_TIMEOUT_MS: '300', UPSTREAM_RETRIES: '0' })
  const ws = await createWorkspace()
  mistral.enqueue(function silent () {}, '/v1/chat/completions')
  const startedAt = Date.now()
  const res = await app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat()
  })
  const elapsedMs = Date.now() - startedAt
  assertEnvelope(t, res, 504, 'upstream_error', 'upstream_timeout')
  t.equal(mistral.received.length, 1, 'the call reached upstream')
  t.ok(elapsedMs >= 250 && elapsedMs < 3_000, `gave up after ${elapsedMs} ms`)
})

t.test('UPSTREAM_TOTAL_TIMEOUT_MS cuts a slow stream', async (t) => {
  const mistral = await startFakeMistral({ streamDelayMs: 400 }) // 14 events: over 5 s
  t.teardown(() => mistral.close())
  const { app, createWorkspace } = await buildTestApp(t, { UPSTREAM_TOTAL_TIMEOUT_MS: '1500' }, { mistral })
  const ws = await createWorkspace()
  const url = await listen(app)
  const { res, text, failure, elapsedMs } = await readStream(url, ws)
  t.equal(res.statusCode, 200)
  t.match(text, /^data: \{/, 'the first events reached the client')
  t.notMatch(text, /\[DONE\]/, 'the stream never finished')
  t.match(lastEvent(text), {
    object: 'error', type: 'upstream_error', code: 'upstream_timeout', error: { type: 'upstream_error' }
  }, 'the client learnt of the cut from an SSE error event, as the gateway\'s timeout, not a cut of Mistral\'s')
  t.notOk(failure, 'and the stream then ended cleanly')
  t.ok(elapsedMs < 4_000, `cut after ${elapsedMs} ms`)
  t.ok(await until(() => mistral.received[0]?.aborted === true), 'the upstream call was cancelled')
})

t.test('a client that stops reading a stream is cut once the total timeout has passed, and its call recorded',
  async (t) => {
    // long enough for the answer to outgrow the buffers first, however loaded the machine (under half a second then)
    const totalTimeoutMs = 3_000
    const testApp = await buildTestApp(t, { UPSTREAM_TOTAL_TIMEOUT_MS: String(totalTimeoutMs) })
    const ws = await testApp.createWorkspace()
    // a stream with no end, in large writes: it outgrows every buffer between Mistral and a client that reads nothing
    // (some 4 MB on loopback). A generated answer of small events, one a turn, can be cut by the total timeout short
    // enough to fit those buffers whole: its reply then finishes, and there is nothing to cut
    testApp.mistral.enqueue(endlessStream, '/v1/chat/completions')
    const url = new URL(await listen(testApp.app))
    const socket = connect(Number(url.port), url.hostname)
    t.teardown(() => socket.destroy())
    const body = chat({ stream: true })
    socket.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: ${url.host}\r\nauthorization: ${ws.headers.authorization}` +
      `\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
    socket.pause() // reads nothing more
    const closed = new Promise<void>((resolve) => socket.once('close', resolve))

    // the gateway's own account: its request line, marked unfinished when the reply's socket closed before the answer
    // was all sent (this client never closes its own)
    const written = await until(() => requestLines(testApp).length === 1, 20_000)
    t.ok(written, 'the call\'s request line is written')
    if (!written) return
    const [line] = requestLines(testApp)
    t.match(line, { status: 200, upstreamStatus: 200, unfinished: true }, 'the gateway cut the connection')
    // the total timeout, then the 5 s given to read the end of the answer (timers may round a millisecond)
    t.ok(line.durationMs >= totalTimeoutMs + 5_000 - 10,
      `not before the time to read the end had passed (${line.durationMs} ms)`)
    const records = await usageRecords(testApp, ws)
    t.equal(records.length, 1, 'its record is in the ledger, not held for as long as the client lives')
    t.match(records[0], { requestId: line.reqId, status: 200, streamed: true, estimated: true })

    // what the client had not read, then the end of its connection
    socket.resume()
    t.ok(await Promise.race([closed.then(() => true), sleep(10_000).then(() => false)]),
      'the client, once it reads, finds its connection closed')
  })

for (const mode of ['stall', 'cut'] as const) {
  t.test(`a stream that upstream ${mode === 'stall' ? 'stalls' : 'cuts'} mid-way ends and is still metered`,
    async (t) => {
      const testApp = await buildTestApp(t, { UPSTREAM_IDLE_TIMEOUT_MS: '300' })
      const { app, mistral, createWorkspace } = testApp
      const ws = await createWorkspace()
      const url = await listen(app)
      mistral.faultNextStream({ after: 2, mode, path: '/v1/chat/completions' })
      const { res, text, failure, elapsedMs } = await readStream(url, ws)
      t.equal(res.statusCode, 200)
      const events = text.split('\n\n').filter((event) => event.startsWith('data: {'))
      t.equal(events.length, 3, 'the two events sent before the fault reached the client, then an error event')
      t.notMatch(text, /\[DONE\]/)
      t.match(lastEvent(text), {
        object: 'error', code: mode === 'stall' ? 'upstream_stalled' : 'upstream_cut', request_id: res.headers['x-request-id']
      }, 'the client learnt of the fault from an SSE error event, never a [DONE]')
      t.notOk(failure, 'and the stream then ended cleanly')
      t.ok(elapsedMs < 3_000, `ended for the client after ${elapsedMs} ms`)
      t.equal(mistral.received[0]?.fault, mode)

      const records = await usageRecords(testApp, ws)
      t.equal(records.length, 1, 'one usage record')
      t.match(records[0], {
        requestId: res.headers['x-request-id'],
        operation: 'chat',
        model: 'mistral-small-latest',
        streamed: true,
        estimated: true, // Mistral's usage rides on the last event, which never came
        status: 200,
        upstreamStatus: 200
      })
      t.ok((records[0].promptTokens as number) > 0, 'the prompt is estimated')
    })
}

for (const mode of ['stall', 'cut'] as const) {
  t.test(`a JSON answer that upstream ${mode === 'stall' ? 'stalls' : 'cuts'} mid-body is an error the client can read, metered`,
    async (t) => {
      const testApp = await buildTestApp(t, { UPSTREAM_IDLE_TIMEOUT_MS: '300' })
      const { app, mistral, createWorkspace } = testApp
      const ws = await createWorkspace()
      const url = await listen(app)
      const whole = JSON.stringify({ id: 'x', object: 'chat.completion', model: 'mistral-small-latest', choices: [] })
      mistral.enqueue((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(whole.length) })
        res.write(whole.slice(0, 20))
        if (mode === 'cut') setTimeout(() => res.destroy(), 50)
      }, '/v1/chat/completions')
      const res = await request(`${url}/v1/chat/completions`, { method: 'POST', headers: jsonHeaders(ws), body: chat() })
      const body = assertEnvelope(t, { ...res, body: await res.body.text() },
        mode === 'stall' ? 504 : 502, 'upstream_error', mode === 'stall' ? 'upstream_stalled' : 'upstream_cut')
      t.notMatch(JSON.stringify(body), /chat\.completion/, 'none of the half answer reaches the client')

      const records = await usageRecords(testApp, ws)
      t.equal(records.length, 1, 'one usage record')
      t.match(records[0], {
        requestId: res.headers['x-request-id'],
        model: 'mistral-small-latest',
        estimated: true, // Mistral began, and its usage never came
        status: mode === 'stall' ? 504 : 502,
        upstreamStatus: 200
      })
      t.ok((records[0].promptTokens as number) > 0, 'the prompt is estimated')
    })
}

t.test('a 200 the client\'s dialect cannot be given (base64 embeddings of a body that is not JSON) is a 502 ' +
  'upstream_malformed, metered as that 502', async (t) => {
  const testApp = await buildTestApp(t)
  const { app, mistral, createWorkspace } = testApp
  const ws = await createWorkspace()
  mistral.enqueue((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html', 'x-upstream-marker': 'mistral' })
    res.end('<html>a proxy page, not JSON</html>')
  }, '/v1/embeddings')
  const res = await app.inject({
    method: 'POST',
    url: '/v1/embeddings',
    headers: jsonHeaders(ws),
    payload: { model: 'mistral-embed', input: ['the tramontane'], encoding_format: 'base64' }
  })
  assertEnvelope(t, res, 502, 'upstream_error', 'upstream_malformed')
  t.notMatch(res.body, /proxy page/, 'none of the body reaches the client')
  t.match(res.headers['content-type'], /^application\/json/, 'the error is JSON, whatever Mistral\'s answer said it was')
  t.notOk('x-upstream-marker' in res.headers, 'and none of Mistral\'s headers come with it')

  const records = await usageRecords(testApp, ws)
  t.equal(records.length, 1, 'one usage record')
  t.match(records[0], {
    requestId: res.headers['x-request-id'],
    operation: 'embeddings',
    model: 'mistral-embed',
    status: 502,
    upstreamStatus: 200,
    estimated: true // Mistral answered, and its usage could not be read
  })
})

t.test('an answer whose status is outside HTTP\'s (600) is a 502 upstream_malformed, metered, its slot given back',
  async (t) => {
    // no retry: the one answer is the last one (the next test retries it)
    const testApp = await buildTestApp(t, { UPSTREAM_RETRIES: '0' })
    const { app, mistral, createWorkspace, admin } = testApp
    const ws = await createWorkspace()
    await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { limits: { concurrency: 1 } })
    for (const path of ['/v1/chat/completions', '/v1/models']) {
      mistral.enqueue((_req, res) => {
        res.writeHead(600, { 'content-type': 'application/json' })
        res.end('{"object":"odd"}')
      }, path)
    }
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat() })
    assertEnvelope(t, res, 502, 'upstream_error', 'upstream_malformed')
    t.notMatch(res.body, /odd/, 'none of the body reaches the client')
    const records = await usageRecords(testApp, ws)
    t.match(records, [{ requestId: res.headers['x-request-id'], status: 502, upstreamStatus: 600 }], 'recorded as that 502')
    // an operation that is not metered goes another way through the proxy: the same answer
    const models = await app.inject({ method: 'GET', url: '/v1/models', headers: ws.headers })
    assertEnvelope(t, models, 502, 'upstream_error', 'upstream_malformed')

    // the workspace may have one call at a time: a slot still held would refuse the next one
    const next = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat() })
    t.equal(next.statusCode, 200, 'the next call is admitted: the odd calls gave their slot back')
    const metrics = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
    t.match(metrics.body, /^tramontane_in_flight_calls 0$/m, 'and nothing is left in flight')
  })

t.test('a status outside HTTP\'s is sent again, as a 502 is, and counts against its key', async (t) => {
  const odd = (mistral: Awaited<ReturnType<typeof buildTestApp>>['mistral']) => mistral.enqueue((_req, res) => {
    res.writeHead(600, { 'content-type': 'application/json' })
    res.end('{"object":"odd"}')
  }, '/v1/chat/completions')

  const retried = await buildTestApp(t)
  const ws = await retried.createWorkspace()
  odd(retried.mistral)
  const res = await retried.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat() })
  t.equal(res.statusCode, 200, 'the second try\'s answer reaches the client')
  t.equal(retried.mistral.requestsTo('/v1/chat/completions').length, 2, 'Mistral was asked twice')
  const metrics = await retried.app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  t.match(metrics.body, /^tramontane_upstream_retries_total 1$/m, 'one retry')

  // one failure opens a breaker here: the odd answer must be one
  const counted = await buildTestApp(t, { BREAKER_THRESHOLD: '1', UPSTREAM_RETRIES: '0' })
  const other = await counted.createWorkspace()
  odd(counted.mistral)
  const first = await counted.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(other), payload: chat() })
  assertEnvelope(t, first, 502, 'upstream_error', 'upstream_malformed')
  const next = await counted.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(other), payload: chat() })
  assertEnvelope(t, next, 503, 'server_error', 'upstream_unavailable')
  t.equal(counted.mistral.requestsTo('/v1/chat/completions').length, 1, 'the key\'s breaker kept the next call from Mistral')
})

t.test('a failure that opens the only key\'s breaker reaches the client as Mistral sent it, with no retry', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t, { BREAKER_THRESHOLD: '1' })
  const ws = await createWorkspace()
  mistral.enqueue((_req, res) => {
    res.writeHead(503, { 'content-type': 'application/json' })
    res.end('{"object":"error","message":"Mistral is overloaded","type":"service_unavailable","code":"3505"}')
  }, '/v1/chat/completions')
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat() })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { message: 'Mistral is overloaded', code: '3505' }, 'Mistral\'s own answer, not the breaker\'s')
  t.equal(mistral.requestsTo('/v1/chat/completions').length, 1, 'sent once')
  const metrics = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  t.match(metrics.body, /^tramontane_upstream_retries_total 0$/m, 'no retry spent on it')
  const next = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat() })
  assertEnvelope(t, next, 503, 'server_error', 'upstream_unavailable')
})

t.test('so does one that opens a breaker when the workspace\'s other key is cooling down', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t, { BREAKER_THRESHOLD: '1' })
  const ws = await createWorkspace({ keys: ['default', 'backup'] })
  const send = () => app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat() })
  // `default` is rate-limited for a minute: the call fails over to `backup`
  mistral.enqueueRateLimit({ retryAfterSeconds: 60, filter: '/v1/chat/completions' })
  t.equal((await send()).statusCode, 200, 'served by backup')
  mistral.enqueue((_req, res) => {
    res.writeHead(503, { 'content-type': 'application/json' })
    res.end('{"object":"error","message":"Mistral is overloaded","type":"service_unavailable","code":"3505"}')
  }, '/v1/chat/completions')
  const mark = mistral.requestsTo('/v1/chat/completions').length
  const res = await send()
  t.equal(res.statusCode, 503)
  t.match(res.json(), { message: 'Mistral is overloaded', code: '3505' }, 'Mistral\'s own answer: no key could take a retry')
  t.equal(mistral.requestsTo('/v1/chat/completions').length - mark, 1, 'sent once')
})

t.test('a key whose breaker time is over still takes the retry, even with no hold in the cooldown order', async (t) => {
  // open long enough to outlast a retry's backoff (500 ms at most for the first)
  const { app, mistral, createWorkspace, admin } = await buildTestApp(t, { BREAKER_THRESHOLD: '1', BREAKER_OPEN_MS: '1500' })
  const ws = await createWorkspace({ keys: ['default', 'backup'] })
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { cooldown: { order: ['failover'] } })).statusCode, 200)
  const overloaded = () => mistral.enqueue((_req, res) => {
    res.writeHead(503, { 'content-type': 'application/json' })
    res.end('{"object":"error","message":"Mistral is overloaded","type":"service_unavailable","code":"3505"}')
  }, '/v1/chat/completions')
  const send = () => app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat() })
  // both keys fail once: both breakers open
  overloaded()
  overloaded()
  t.equal((await send()).statusCode, 503)
  await sleep(1_600)
  // the first key probed fails again; the other's open time is over too, and its probe serves the call
  overloaded()
  const mark = mistral.requestsTo('/v1/chat/completions').length
  const res = await send()
  t.equal(res.statusCode, 200, 'served by the other key\'s probe')
  t.equal(mistral.requestsTo('/v1/chat/completions').length - mark, 2, 'a failure, then the retry')
})

t.test('a JSON body over BODY_LIMIT_BYTES is a 413 and nothing goes upstream', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t, { BODY_LIMIT_BYTES: '2048' })
  const ws = await createWorkspace()
  const small = await app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat()
  })
  t.equal(small.statusCode, 200, 'a body under the limit goes through')
  mistral.reset()

  const big = chat({ messages: [{ role: 'user', content: 'x'.repeat(4096) }] })
  const res = await app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: big
  })
  assertEnvelope(t, res, 413, 'invalid_request_error', 'payload_too_large')
  t.notMatch(res.body, /xxxx/)

  // without a content-length the limit applies as the bytes arrive
  const url = await listen(app)
  const chunked = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: jsonHeaders(ws),
    body: Readable.from([Buffer.from(big.slice(0, 1000)), Buffer.from(big.slice(1000))])
  })
  assertEnvelope(t, { statusCode: chunked.statusCode, headers: chunked.headers, body: await chunked.body.text() },
    413, 'invalid_request_error', 'payload_too_large')
  t.equal(mistral.received.length, 0, 'nothing reached upstream')
})

t.test('malformed JSON is a 400 invalid_json that does not echo the body', async (t) => {
  const { app, mistral, createWorkspace, logs } = await buildTestApp(t)
  const ws = await createWorkspace()
  const canary = `canary-${randomBytes(6).toString('hex')}`
  const payload = `{"model":"mistral-small-latest","messages":[{"role":"user","content":"${canary}"}]`
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload })
  const body = assertEnvelope(t, res, 400, 'invalid_request_error', 'invalid_json')
  t.equal(body.message, 'The request body is not valid JSON')
  t.notOk(res.body.includes(canary), 'the response does not echo the body')
  t.notOk(logs.some((line) => line.includes(canary)), 'nor does the log')
  t.equal(mistral.received.length, 0, 'nothing reached upstream')
})

/** The JSON of the last `data:` event of an SSE text. */
function lastEvent (text: string): unknown {
  const events = text.split('\n\n').filter((event) => event.startsWith('data: {'))
  return JSON.parse(events[events.length - 1].slice(6))
}

t.test('clients hanging up at any moment: every call ends, none is blamed on Mistral, none is recorded twice', async (t) => {
  const testApp = await buildTestApp(t)
  const { app, mistral, createWorkspace } = testApp
  // every call pins a Mistral key of its own (x-tramontane-key): the key is what Mistral sees of a call, and its name
  // is in the call's usage record, so each call Mistral saw is matched with its own record (the gateway's request id
  // never goes upstream)
  const workers = 16
  const callsEach = 40
  const keyNames = Array.from({ length: workers * callsEach }, (_, i) => `call-${i}`)
  const ws = await createWorkspace({ keys: keyNames })
  // a key's first use reads and decrypts it: each is used once beforehand (a model list, which is not metered), so
  // that the calls below reach Mistral as soon as calls on a workspace's one warm key do
  for (const name of keyNames) {
    const warm = await app.inject({ url: '/v1/models', headers: { ...ws.headers, 'x-tramontane-key': name } })
    if (warm.statusCode !== 200) throw new Error(`warming ${name}: ${warm.statusCode}`)
  }
  mistral.reset()
  const keyNameOf = (apiKey: string | undefined) => apiKey?.slice(ws.mistralKey.length + 1)
  const url = await listen(app)
  let chatRequests = 0
  app.server.on('request', (req) => { if (req.url === '/v1/chat/completions') chatRequests++ })
  const requestIds = new Set<string>()
  const worker = async (w: number) => {
    const client = new Client(url)
    const stream = w % 2 === 0
    const body = JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }], stream })
    for (let i = 0; i < callsEach; i++) {
      const controller = new AbortController()
      // anywhere from the body's upload, through authentication and admission, to the stream's last event
      const timer = setTimeout(() => controller.abort(), Math.random() * 6)
      try {
        const res = await client.request({
          path: '/v1/chat/completions', method: 'POST', body, signal: controller.signal,
          headers: {
            ...ws.headers, 'content-type': 'application/json', 'x-tramontane-key': `call-${w * callsEach + i}`
          }
        })
        requestIds.add(String(res.headers['x-request-id']))
        for await (const _ of res.body) { /* read to the end, unless aborted */ }
      } catch {}
      clearTimeout(timer)
    }
    await client.close().catch(() => {})
  }
  await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)))

  const inFlight = async () => /^tramontane_in_flight_calls (\d+)$/m.exec(await app.metrics.scrape())?.[1]
  type Row = { requestId: string, keyName: string, status: number, upstreamStatus: number | null }
  let records: Row[] = []
  const unrecorded = () => {
    const recorded = new Set(records.map((record) => record.keyName))
    return mistral.received.map((request) => keyNameOf(request.apiKey)).filter((name) => !recorded.has(name as string))
  }
  // a request whose client has gone can still be in authentication or admission, not yet counted in flight, when the
  // gauge reads 0, and go in flight (and reach Mistral) after any one reading: wait for a reading with nothing in
  // flight and every call Mistral saw recorded, and then the same reading again a moment later
  let previous = ''
  let gauge: string | undefined
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(250)) {
    gauge = await inFlight()
    await app.usage.flush()
    const usage = await testApp.admin('GET', `/admin/v1/workspaces/${ws.slug}/usage?limit=10000`)
    records = usage.json.records as Row[]
    const reading = `${gauge} in flight, ${mistral.received.length} seen, ${records.length} recorded`
    if (gauge === '0' && unrecorded().length === 0 && reading === previous) break
    previous = reading
  }
  t.comment(`last reading: ${previous}`)
  t.ok(mistral.received.length > 0, 'some calls reached Mistral before their client left')
  t.equal(gauge, '0', 'no call is left in flight')
  t.equal(new Set(records.map((record) => record.keyName)).size, records.length, 'one record per call')
  t.same(unrecorded(), [], `each of the ${mistral.received.length} calls Mistral saw has its own record ` +
    `(${records.length} records in all)`)
  const statuses = new Set(records.map((record) => record.status))
  t.same([...statuses].filter((status) => status !== 200 && status !== 499), [], 'each answered (200) or the client left (499)')
  t.ok(records.filter((record) => record.status === 200).every((record) => requestIds.has(record.requestId)),
    'a call recorded as answered reached its client\'s headers')
  // the log: a call whose client left has its line too (its reply never finishes), once, with its record's status
  const lines = requestLines(testApp)
  const linesOf = (id: string) => lines.filter((line) => line.reqId === id)
  t.same(records.filter((record) => linesOf(record.requestId).length !== 1).map((record) => record.requestId), [],
    `each of the ${records.length} recorded calls has exactly one request line`)
  t.same(records.filter((record) => linesOf(record.requestId)[0]?.status !== record.status).map((record) => record.requestId), [],
    'with the status of its record')
  t.equal(new Set(lines.map((line) => line.reqId)).size, lines.length, 'no request has two lines')
  t.equal(lines.length, chatRequests, `and every request has one, also those whose client left before they were metered (${chatRequests})`)
})

t.test('a client that hangs up still gets its request line, marked unfinished, with its tokens', async (t) => {
  const testApp = await buildTestApp(t)
  const { mistral } = testApp
  const ws = await testApp.createWorkspace()
  const url = await listen(testApp.app)
  const client = new Client(url)
  t.teardown(() => client.close())
  const newLine = async (seen: number) => {
    t.ok(await until(() => requestLines(testApp).length > seen), 'a request line is written')
    return requestLines(testApp)[seen]
  }

  // gone while Mistral works on it: no response headers, so the line is found by its order
  mistral.enqueueDelay(5_000)
  const controller = new AbortController()
  const aborted = client.request({
    path: '/v1/chat/completions', method: 'POST', headers: jsonHeaders(ws), body: chat(), signal: controller.signal
  }).then(() => t.fail('the call was aborted'), () => {})
  t.ok(await until(() => mistral.received.length === 1, 10_000), 'the call reached Mistral')
  controller.abort()
  await aborted
  t.match(await newLine(0), {
    workspace: ws.slug, model: 'mistral-small-latest', key: 'default', status: 499, unfinished: true, tokens: 0
  }, 'left before the answer: 499, as its record says')

  // gone in the middle of a stream (Mistral holds it after its first event): the status it had, the tokens billed
  const gate = mistral.holdStreams()
  t.teardown(() => gate.release())
  const res = await client.request({
    path: '/v1/chat/completions', method: 'POST', headers: jsonHeaders(ws), body: chat({ stream: true })
  })
  const streamId = String(res.headers['x-request-id'])
  for await (const _ of res.body) break // one chunk, then the connection goes
  const cut = await newLine(1)
  gate.release()
  const record = (await usageRecords(testApp, ws)).find((row) => row.requestId === streamId)
  t.match(cut, { reqId: streamId, status: 200, upstreamStatus: 200, unfinished: true }, 'left mid-stream: the 200 it got')
  t.equal(cut.tokens, record?.totalTokens, `with the tokens of its record (${record?.totalTokens})`)
  t.ok(Number(record?.totalTokens ?? 0) > 0, 'which bills the prompt')

  // a call whose client stays: one line, without the mark
  const whole = await client.request({ path: '/v1/chat/completions', method: 'POST', headers: jsonHeaders(ws), body: chat() })
  const completion = await whole.body.json() as { usage: { total_tokens: number } }
  const done = await newLine(2)
  t.match(done, { reqId: whole.headers['x-request-id'], status: 200, tokens: completion.usage.total_tokens })
  t.notOk('unfinished' in done, 'an answer that reached its client is not marked')
  await sleep(200)
  t.equal(requestLines(testApp).length, 3, 'one line a call')
})

t.test('the request line cuts a model of any length as the ledger does, and logs no path that is no ' +
  'operation', async (t) => {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const lineOf = (requestId: unknown) => testApp.logs.map((line) => JSON.parse(line))
    .find((line) => line.msg === 'request' && line.reqId === requestId)

  const model = `m-${'x'.repeat(100_000)}`
  const unpriced = await testApp.app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: jsonHeaders(ws), payload: chat({ model })
  })
  t.equal(unpriced.statusCode, 400)
  t.equal(unpriced.json().code, 'model_not_priced')
  const line = lineOf(unpriced.headers['x-request-id'])
  t.equal(line?.model, model.slice(0, 200), 'the model, cut at 200 characters')
  t.ok(JSON.stringify(line).length < 1_000, 'a line of a few hundred bytes')

  const path = `/v1/no-such-route/${'y'.repeat(5_000)}`
  const unknown = await testApp.app.inject({ method: 'GET', url: path, headers: ws.headers })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'unknown_route')
  t.match(lineOf(unknown.headers['x-request-id']), { path: 'unknown', status: 404 },
    'a path that is no operation: unknown')
})
