import t from 'tap'
import { TEST_DATABASE_URL, buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { proxiedDatabase } from '../helpers/tcp-proxy.js'

// Issue 4: what is retried and what is not. 4xx other than 429 are the client's mistake and go back as Mistral sent
// them, once; a connection that fails before any byte came back is tried again (within UPSTREAM_RETRIES).

const CHAT = '/v1/chat/completions'

async function chat ({ app }: TestApp, ws: TestWorkspace) {
  const res = await app.inject({
    method: 'POST',
    url: CHAT,
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] }
  })
  return { status: res.statusCode, json: res.json(), headers: res.headers }
}

t.test('400 and 422 from Mistral: passed through as they came, never retried', async (t) => {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const bodies = {
    400: { object: 'error', message: 'Invalid model: mistral-smol', type: 'invalid_model', param: null, code: '1500' },
    422: {
      object: 'error',
      message: { detail: [{ type: 'missing', loc: ['body', 'messages'], msg: 'Field required', input: {} }] },
      type: 'invalid_request_message_error',
      param: null,
      code: null
    }
  }
  for (const status of [400, 422] as const) {
    const before = testApp.mistral.received.length
    testApp.mistral.enqueueError(status, bodies[status], {}, CHAT)
    const reply = await chat(testApp, ws)
    t.equal(reply.status, status, `${status} reaches the client`)
    t.match(reply.json, { message: bodies[status].message, type: bodies[status].type }, `${status}: Mistral's own body`)
    t.equal(testApp.mistral.received.length - before, 1, `${status}: one upstream call, no retry`)
  }
})

t.test('a connection cut before the answer: tried again, and served', async (t) => {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const before = testApp.mistral.received.length
  // Mistral's side drops the connection with the request read and no byte answered
  testApp.mistral.enqueue((_req, res) => { res.socket?.destroy() }, CHAT)
  const reply = await chat(testApp, ws)
  t.equal(reply.status, 200, 'served by the second attempt')
  t.equal(testApp.mistral.received.length - before, 2, 'two upstream calls: the cut one and the retry')
})

t.test('connections cut every time: UPSTREAM_RETRIES more tries, then 502 upstream_unreachable', async (t) => {
  const testApp = await buildTestApp(t, { UPSTREAM_RETRIES: '2', BREAKER_THRESHOLD: '100' })
  const ws = await testApp.createWorkspace()
  const before = testApp.mistral.received.length
  for (let i = 0; i < 4; i++) testApp.mistral.enqueue((_req, res) => { res.socket?.destroy() }, CHAT)
  const reply = await chat(testApp, ws)
  t.equal(reply.status, 502)
  t.match(reply.json, { object: 'error', type: 'upstream_error', code: 'upstream_unreachable' }, 'the envelope')
  t.equal(testApp.mistral.received.length - before, 3, 'the first try and 2 retries, no more')
  testApp.mistral.reset()
})

t.test('a call that creates something is not sent again once Mistral may have acted on it', async (t) => {
  const testApp = await buildTestApp(t, { BREAKER_THRESHOLD: '100', BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await testApp.createWorkspace()
  const JOBS = '/v1/batch/jobs'
  const createJob = async () => {
    const res = await testApp.app.inject({
      method: 'POST',
      url: JOBS,
      headers: { ...ws.headers, 'content-type': 'application/json' },
      payload: {
        endpoint: '/v1/chat/completions',
        model: 'mistral-small-latest',
        requests: [{ custom_id: '1', body: { messages: [{ role: 'user', content: 'Hello' }] } }]
      }
    })
    return { status: res.statusCode, json: res.json() }
  }
  const sent = (path: string, method: string) =>
    testApp.mistral.requestsTo(path).filter((request) => request.method === method).length
  const cases: Array<{ name: string, script: () => void, status: number, tries: number }> = [
    {
      name: 'a connection cut with the request read',
      script: () => testApp.mistral.enqueue((_req, res) => { res.socket?.destroy() }, JOBS),
      status: 502,
      tries: 1
    },
    {
      name: 'a 502 (a hop after Mistral may have taken it)',
      script: () => testApp.mistral.enqueueError(502, { message: 'bad gateway' }, {}, JOBS),
      status: 502,
      tries: 1
    },
    {
      name: 'a 504',
      script: () => testApp.mistral.enqueueError(504, { message: 'gateway timeout' }, {}, JOBS),
      status: 504,
      tries: 1
    },
    {
      name: 'a 503 (Mistral refused it): sent again',
      script: () => testApp.mistral.enqueueError(503, { message: 'unavailable' }, {}, JOBS),
      status: 200,
      tries: 2
    }
  ]
  for (const { name, script, status, tries } of cases) {
    const before = sent(JOBS, 'POST')
    script()
    const reply = await createJob()
    t.equal(reply.status, status, `${name}: ${status} to the client`)
    t.equal(sent(JOBS, 'POST') - before, tries, `${name}: ${tries} batch job creation(s) sent to Mistral`)
  }

  // a conversation's turn is stored by Mistral: a 502 from a hop after it may have taken it is not sent again
  const CONVERSATIONS = '/v1/conversations'
  const beforeTurn = sent(CONVERSATIONS, 'POST')
  testApp.mistral.enqueueError(502, { message: 'bad gateway' }, {}, CONVERSATIONS)
  const turn = await testApp.app.inject({
    method: 'POST',
    url: CONVERSATIONS,
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: { model: 'mistral-small-latest', inputs: 'Hello' }
  })
  t.equal(turn.statusCode, 502, 'a conversation started with a 502: the 502 to the client')
  t.equal(sent(CONVERSATIONS, 'POST') - beforeTurn, 1, 'one conversation start sent to Mistral')

  // a read is sent again after the same cut
  const before = sent('/v1/models', 'GET')
  testApp.mistral.enqueue((_req, res) => { res.socket?.destroy() }, '/v1/models')
  const models = await testApp.app.inject({ method: 'GET', url: '/v1/models', headers: ws.headers })
  t.equal(models.statusCode, 200, 'a GET cut once: served by the second try')
  t.equal(sent('/v1/models', 'GET') - before, 2, 'two GETs sent')
})

t.test('a 401 while PostgreSQL is away: the rejected key\'s own 502, not an unreachable Mistral', async (t) => {
  const database = await proxiedDatabase(t, TEST_DATABASE_URL)
  const testApp = await buildTestApp(t, { DATABASE_URL: database.url })
  const ws = await testApp.createWorkspace()
  t.equal((await chat(testApp, ws)).status, 200, 'served once: the token and the key are cached')

  database.proxy.cut()
  testApp.mistral.enqueueError(401, { detail: 'Unauthorized' }, {}, CHAT)
  const reply = await chat(testApp, ws)
  database.proxy.restore()
  t.equal(reply.status, 502)
  t.match(reply.json, { object: 'error', type: 'upstream_error', code: 'mistral_key_rejected' },
    'the answer says Mistral rejected the key, though it could not be marked invalid')
  const logged = testApp.logs.map((line) => JSON.parse(line)).find((line) => line.level === 50 &&
    /could not be marked invalid/.test(line.msg))
  t.match(logged, { key: 'default' }, 'an error is logged, naming the key')
  t.notMatch(JSON.stringify(testApp.logs), ws.mistralKey, 'never the key itself')
})
