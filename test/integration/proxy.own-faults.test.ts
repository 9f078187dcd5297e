import t from 'tap'
import { generateMasterKey } from '../../src/tenancy/master-keys.js'
import { buildTestApp, TEST_MASTER_KEYS, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { recordsOf, requestLine } from '../helpers/recorded.js'
import { createScratchDatabase } from '../helpers/database.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { ownRedis } from '../helpers/own-redis.js'

// A call the gateway fails on its own side (a key it cannot open, a store it cannot reach) is not Mistral's failure:
// neither its answer nor its ledger row nor its request line may say Mistral could not be reached
// (src/proxy/routes.ts).
// And a call refused after admission but before it is metered gives its slot back at once.

const CHAT = '/v1/chat/completions'
const chat = (s: TestApp, ws: TestWorkspace) => s.app.inject({
  method: 'POST',
  url: CHAT,
  headers: { ...ws.headers, 'content-type': 'application/json' },
  payload: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] })
})

t.test('a Mistral key this replica cannot open is its own 500, recorded as one, and nothing goes to Mistral',
  async (t) => {
    // a database of its own: a key under a master key the run's ring lacks would stop every other test file's app
    const databaseUrl = await createScratchDatabase(t)
    const mistral = await startFakeMistral()
    t.teardown(() => mistral.close())
    // a replica left behind by a rotation of the master keys, started while no key was under the new one
    const behind = await buildTestApp(t, { DATABASE_URL: databaseUrl }, { mistral })
    const rotated = await buildTestApp(t, {
      DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: `${generateMasterKey('rotated')},${TEST_MASTER_KEYS}`
    }, { mistral })
    const ws = await rotated.createWorkspace()

    const res = await chat(behind, ws)
    const body = res.json()
    t.same([res.statusCode, body.type, body.code, body.message],
      [500, 'server_error', 'internal_error', 'Internal error'],
      'a fault of the gateway\'s own, not upstream_unreachable')
    t.notMatch(res.body, /rotated|master key/, 'the cause stays in the log')
    t.equal(mistral.received.length, 0, 'nothing was sent to Mistral')
    const logged = behind.logs.map((line) => JSON.parse(line)).find((line) => line.msg === 'request failed')
    t.match(logged?.err, { type: 'KeyCryptoError', message: /not in TRAMONTANE_MASTER_KEYS/ }, 'logged with its cause')
    t.notMatch(JSON.stringify(logged), ws.mistralKey, 'never the key')
    t.match(await recordsOf(behind, ws),
      [{ requestId: res.headers['x-request-id'], status: 500, upstreamStatus: null }],
      'the ledger records the status the client got')
    t.match(requestLine(behind, String(res.headers['x-request-id'])), { status: 500 }, 'so does the request line')
  })

t.test('Mistral\'s 429 while Redis does not answer key health is a 429, recorded as one', async (t) => {
  const redis = await ownRedis(t)
  const s = await buildTestApp(t, { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: '300' })
  const ws = await s.createWorkspace()
  t.equal((await chat(s, ws)).statusCode, 200, 'the token is read while Redis answers')
  await redis.stop()

  s.mistral.enqueueRateLimit({ retryAfterSeconds: 30, filter: CHAT })
  const res = await chat(s, ws)
  t.same([res.statusCode, res.json().code, res.headers['retry-after']], [429, 'upstream_rate_limited', '30'],
    'Mistral\'s answer, with its wait: the cooldown is this replica\'s alone')
  const records = await recordsOf(s, ws, 2)
  t.match(records.find((row) => row.requestId === res.headers['x-request-id']), { status: 429 },
    'the ledger records the status the client got')
  t.match(requestLine(s, String(res.headers['x-request-id'])), { status: 429 }, 'so does the request line')
})

t.test('a batch job deletion refused before the call is metered gives its concurrency slot back at once',
  async (t) => {
    const s = await buildTestApp(t, { BATCH_POLL_INTERVAL_MS: '600000' })
    const ws = await s.createWorkspace()
    t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
      { limits: { concurrency: 1 }, caps: { monthly: '100' } })).statusCode, 200)
    const created = await s.app.inject({
      method: 'POST',
      url: '/v1/batch/jobs',
      headers: { ...ws.headers, 'content-type': 'application/json' },
      payload: JSON.stringify({
        endpoint: CHAT,
        model: 'mistral-small-latest',
        requests: [{ custom_id: '0', body: { messages: [{ role: 'user', content: 'Hello' }] } }]
      })
    })
    t.equal(created.statusCode, 200, 'a job created, running')
    const jobId = created.json().id

    const refused = await s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${jobId}`, headers: ws.headers })
    t.same([refused.statusCode, refused.json().code], [409, 'conflict'], 'refused while it runs')
    const limits = (await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
    t.match(limits.workspace,
      { limits: { concurrency: { limit: 1, used: 0 } }, caps: { monthly: { reserved: /^0(\.0+)?$/ } } },
      'no slot held, nothing reserved')
    t.equal((await chat(s, ws)).statusCode, 200, 'the next call is admitted')
  })
