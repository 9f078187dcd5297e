import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { request } from 'undici'
import { SCRAPE_HEADERS, buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { parseExposition, valueOf } from '../helpers/exposition.js'

// A call that finds every one of UPSTREAM_CONNECTIONS busy waits for one at most UPSTREAM_QUEUE_TIMEOUT_MS: then the
// gateway answers 503 upstream_busy and the call gives back its admission, as a call Mistral never saw. A call that
// has its connection is never cut by that bound.

const CHAT = '/v1/chat/completions'
const chat = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Tell me a story' }], ...extra })
const jsonHeaders = (ws: TestWorkspace) => ({ ...ws.headers, 'content-type': 'application/json' })

async function until (check: () => boolean, timeoutMs = 2_000) {
  const deadline = Date.now() + timeoutMs
  while (!check() && Date.now() < deadline) await sleep(10)
  return check()
}

/** A workspace that may have two calls in flight, under a monthly cap: each call in flight holds a reservation. */
async function twoCallWorkspace (testApp: TestApp) {
  const ws = await testApp.createWorkspace()
  const patched = await testApp.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { limits: { concurrency: 2 }, caps: { monthly: '1.00' } })
  if (patched.statusCode !== 200) throw new Error(`limits: ${patched.body}`)
  return ws
}

/** What the workspace's concurrency and monthly cap hold now. */
async function held ({ admin }: TestApp, ws: TestWorkspace) {
  const { workspace } = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
  return { calls: workspace.limits.concurrency.used as number, reserved: workspace.caps.monthly.reserved as string }
}

async function usageRecords ({ app, admin }: TestApp, ws: TestWorkspace, count: number) {
  const deadline = Date.now() + 3_000
  for (;;) {
    await app.usage.flush()
    const records = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records as any[]
    if (records.length >= count || Date.now() > deadline) return records
    await sleep(50)
  }
}

async function scrape ({ app }: TestApp) {
  return parseExposition((await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body)
}

t.test('a call still waiting for a connection past UPSTREAM_QUEUE_TIMEOUT_MS is a 503 upstream_busy that holds and ' +
  'bills nothing', async (t) => {
  const QUEUE_MS = 300
  const testApp = await buildTestApp(t, { UPSTREAM_CONNECTIONS: '1', UPSTREAM_QUEUE_TIMEOUT_MS: String(QUEUE_MS) })
  const { app, mistral } = testApp
  const ws = await twoCallWorkspace(testApp)
  const idle = await held(testApp, ws)

  // a stream holds the only connection to Mistral, for longer than the queue's bound
  const gate = mistral.holdStreams()
  t.teardown(() => gate.release())
  const stream = app.inject({ method: 'POST', url: CHAT, headers: jsonHeaders(ws), payload: chat({ stream: true }) })
  t.ok(await until(() => mistral.inFlight === 1), 'the stream has the connection')
  const withOne = await held(testApp, ws)
  t.equal(withOne.calls, 1, 'one call in flight')

  const sentAt = Date.now()
  const waiting = app.inject({ method: 'POST', url: CHAT, headers: jsonHeaders(ws), payload: chat() })
  const refused = await Promise.race([waiting, sleep(3_000).then(() => undefined)])
  const waited = Date.now() - sentAt
  if (refused === undefined) {
    t.fail('the second call still waits for the connection 3 s later')
    return
  }
  t.equal(refused.statusCode, 503, 'the gateway answers 503')
  const body = refused.json()
  t.match(body, {
    object: 'error', type: 'server_error', code: 'upstream_busy', message: /connections to Mistral are all busy/, param: null,
    error: { type: 'server_error', code: 'upstream_busy' }
  }, 'in the gateway\'s error envelope')
  t.equal(body.request_id, refused.headers['x-request-id'], 'with the request id')
  t.equal(refused.headers['retry-after'], '1', 'Retry-After: what the bound waited, in whole seconds')
  t.equal(refused.headers['retry-after-ms'], String(QUEUE_MS))
  t.ok(waited >= QUEUE_MS - 20 && waited < 2 * QUEUE_MS, `after the bound (${waited} ms), not retried against Mistral`)

  t.same(await held(testApp, ws), withOne, 'its slot and reservation are given back while the stream goes on')
  const samples = await scrape(testApp)
  t.equal(valueOf(samples, 'tramontane_rate_limit_denials_total', { workspace: ws.slug, limit: 'upstream_busy' }), 1,
    'counted among the gateway\'s refusals')
  t.equal(valueOf(samples, 'tramontane_upstream_retries_total'), 0, 'not retried')
  t.equal(valueOf(samples, 'tramontane_upstream_queued_calls'), 0, 'and no longer counted as waiting')

  // the workspace may have two calls in flight: one more is admitted beside the stream, and waits less than the bound
  const next = app.inject({ method: 'POST', url: CHAT, headers: jsonHeaders(ws), payload: chat() })
  await sleep(QUEUE_MS / 3)
  gate.release()
  const [streamed, served] = await Promise.all([stream, next])
  t.equal(streamed.statusCode, 200, 'the stream, older than the bound, is not cut by it')
  t.match(streamed.body, /data: \[DONE\]/, 'and ends complete')
  t.equal(served.statusCode, 200, 'the next call is admitted and served')

  await sleep(100)
  t.equal(mistral.requestsTo(CHAT).length, 2, 'the refused call never reached Mistral, even once the connection freed')
  const records = await usageRecords(testApp, ws, 3)
  const refusedRecord = records.find((record) => record.requestId === refused.headers['x-request-id'])
  t.match(refusedRecord, { status: 503, upstreamStatus: null, billedCostMicros: 0, listCostMicros: 0, estimated: false },
    'the refused call is recorded, billed nothing')
  t.same(await held(testApp, ws), { calls: 0, reserved: idle.reserved }, 'nothing held once all is done')
})

t.test('a call that waits less than UPSTREAM_QUEUE_TIMEOUT_MS for a connection goes through', async (t) => {
  const testApp = await buildTestApp(t, { UPSTREAM_CONNECTIONS: '1', UPSTREAM_QUEUE_TIMEOUT_MS: '2000' })
  const { app, mistral } = testApp
  const ws = await testApp.createWorkspace()
  const gate = mistral.holdStreams()
  t.teardown(() => gate.release())
  const stream = app.inject({ method: 'POST', url: CHAT, headers: jsonHeaders(ws), payload: chat({ stream: true }) })
  t.ok(await until(() => mistral.inFlight === 1), 'the stream has the connection')
  const waiting = app.inject({ method: 'POST', url: CHAT, headers: jsonHeaders(ws), payload: chat() })
  await sleep(300)
  t.equal(valueOf(await scrape(testApp), 'tramontane_upstream_queued_calls'), 1, 'the second call waits')
  gate.release()
  const [streamed, served] = await Promise.all([stream, waiting])
  t.same([streamed.statusCode, served.statusCode], [200, 200], 'both are served')
  t.equal(mistral.requestsTo(CHAT).length, 2)
})

t.test('a call already sent is not cut by UPSTREAM_QUEUE_TIMEOUT_MS, however long Mistral takes', async (t) => {
  const testApp = await buildTestApp(t, { UPSTREAM_CONNECTIONS: '1', UPSTREAM_QUEUE_TIMEOUT_MS: '100' })
  const ws = await testApp.createWorkspace()
  testApp.mistral.enqueueDelay(500, CHAT)
  const res = await testApp.app.inject({ method: 'POST', url: CHAT, headers: jsonHeaders(ws), payload: chat() })
  t.equal(res.statusCode, 200, 'Mistral\'s answer, 500 ms later')
})

t.test('a client that hangs up while its call waits for a connection frees its slot at once', async (t) => {
  // a bound far longer than the test: only the hang-up can end the wait
  const testApp = await buildTestApp(t, { UPSTREAM_CONNECTIONS: '1', UPSTREAM_QUEUE_TIMEOUT_MS: '60000' })
  const { app, mistral } = testApp
  const ws = await twoCallWorkspace(testApp)
  const url = await listen(app)
  const gate = mistral.holdStreams()
  t.teardown(() => gate.release())
  const stream = app.inject({ method: 'POST', url: CHAT, headers: jsonHeaders(ws), payload: chat({ stream: true }) })
  t.ok(await until(() => mistral.inFlight === 1), 'the stream has the connection')
  const withOne = await held(testApp, ws)

  const client = new AbortController()
  const waiting = request(`${url}${CHAT}`, {
    method: 'POST', headers: jsonHeaders(ws), body: chat(), signal: client.signal
  }).catch(() => 'hung up')
  await sleep(200)
  t.equal((await held(testApp, ws)).calls, 2, 'the waiting call holds a slot')
  client.abort()
  t.equal(await waiting, 'hung up')
  let now = await held(testApp, ws)
  const deadline = Date.now() + 1_000
  while (now.calls !== 1 && Date.now() < deadline) {
    await sleep(20)
    now = await held(testApp, ws)
  }
  t.same(now, withOne, 'its slot and reservation are given back while the stream still holds the connection')

  gate.release()
  t.equal((await stream).statusCode, 200)
  await sleep(100)
  t.equal(mistral.requestsTo(CHAT).length, 1, 'the call left behind never reached Mistral')
  const records = await usageRecords(testApp, ws, 2)
  t.match(records.find((record) => record.status === 499), { upstreamStatus: null, billedCostMicros: 0 },
    'recorded as the client\'s 499, billed nothing')
})
