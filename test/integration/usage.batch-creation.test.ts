import { randomBytes } from 'node:crypto'
import { eq } from 'drizzle-orm'
import t from 'tap'
import { watchedJobs } from '../../src/db/schema.js'
import { buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'

// A batch job is billed when it ends, at its model's price (src/usage/batch-watcher.ts): a model the price book lacks
// would run free. Its creation is refused as the same live call is, before Mistral hears of the job.

const requests = [{ custom_id: '0', body: { messages: [{ role: 'user', content: 'hello' }] } }]

async function createJob (s: TestApp, ws: TestWorkspace, job: Record<string, unknown>) {
  const res = await s.app.inject({
    method: 'POST', url: '/v1/batch/jobs', headers: ws.headers, payload: { requests, ...job }
  })
  return { statusCode: res.statusCode, json: res.json() }
}

const creationsUpstream = (s: TestApp) => s.mistral.requestsTo('/v1/batch/jobs')
  .filter((request) => request.method === 'POST').length

async function watchesOf (s: TestApp, ws: TestWorkspace) {
  return s.app.database.db.select().from(watchedJobs).where(eq(watchedJobs.workspaceId, ws.id))
}

t.test('a job on a model the price book lacks is refused as the live call is, and never reaches Mistral', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()

  const refused = await createJob(s, ws, { endpoint: '/v1/chat/completions', model: 'brand-new-model' })
  t.equal(refused.statusCode, 400)
  t.match(refused.json, {
    object: 'error',
    type: 'invalid_request_error',
    code: 'model_not_priced',
    param: 'model',
    message: /^Model 'brand-new-model' has no USD price in this gateway's price book/,
    error: { code: 'model_not_priced', param: 'model' }
  })
  t.equal(creationsUpstream(s), 0, 'Mistral saw no job')
  t.same(await watchesOf(s, ws), [], 'nothing watched')

  const live = await s.app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: ws.headers,
    payload: { model: 'brand-new-model', messages: [{ role: 'user', content: 'hello' }] }
  })
  t.equal(live.statusCode, 400)
  t.equal(live.json().message, refused.json.message, 'the same refusal as the live call')
})

t.test('a priced model, an agent job and a model priced by the operator are created and watched', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()

  const priced = await createJob(s, ws, { endpoint: '/v1/chat/completions', model: 'mistral-small-latest' })
  t.equal(priced.statusCode, 200, JSON.stringify(priced.json))
  // an agent job names no model: what it costs is known from its answers, priced when it ends
  const agent = await createJob(s, ws, { endpoint: '/v1/chat/completions', agent_id: 'ag_0123' })
  t.equal(agent.statusCode, 200, JSON.stringify(agent.json))

  const model = `brand-new-model-${randomBytes(4).toString('hex')}`
  t.equal((await createJob(s, ws, { endpoint: '/v1/chat/completions', model })).statusCode, 400, 'not priced yet')
  t.teardown(() => s.admin('DELETE', `/admin/v1/prices/${model}?currency=USD&family=chat`))
  const price = await s.admin('PUT', `/admin/v1/prices/${model}`,
    { currency: 'USD', family: 'chat', inputPerMTok: '1', outputPerMTok: '2' })
  t.equal(price.statusCode, 200, price.body)
  const added = await createJob(s, ws, { endpoint: '/v1/chat/completions', model })
  t.equal(added.statusCode, 200, JSON.stringify(added.json))

  t.equal(creationsUpstream(s), 3, 'the three jobs reached Mistral')
  const watched = await watchesOf(s, ws)
  t.same(watched.map((row) => row.jobId).sort(), [priced.json.id, agent.json.id, added.json.id].sort(),
    'each is watched, to be billed when it ends')
})

t.test('a job that names no model is priced by the model each inline request names', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const line = (model: string, i: number) => ({
    custom_id: String(i), body: { model, messages: [{ role: 'user', content: 'hello' }] }
  })
  // many lines of a few models: each model is looked up once, the unpriced one refused wherever it comes
  const models = Array.from({ length: 1_000 }, (_, i) => i % 2 === 0 ? 'mistral-small-latest' : 'mistral-large-latest')
  const lookups: string[] = []
  const { prices } = s.app
  const resolve = prices.resolve
  prices.resolve = (model, ...rest) => {
    lookups.push(model)
    return resolve.call(prices, model, ...rest)
  }
  t.teardown(() => { prices.resolve = resolve })

  const refused = await createJob(s, ws, {
    endpoint: '/v1/chat/completions', requests: [...models, 'brand-new-model', 'ministral-3b-latest'].map(line)
  })
  t.equal(refused.statusCode, 400)
  t.match(refused.json, {
    code: 'model_not_priced', param: 'model', message: /^Model 'brand-new-model' has no USD price/
  })
  t.equal(creationsUpstream(s), 0, 'Mistral saw no job')
  t.same(await watchesOf(s, ws), [], 'nothing watched')
  t.ok(lookups.filter((model) => model === 'mistral-small-latest').length <= 1, 'a model of 500 lines looked up once')

  const priced = await createJob(s, ws, { endpoint: '/v1/chat/completions', requests: models.map(line) })
  t.equal(priced.statusCode, 200, JSON.stringify(priced.json))
  t.equal(creationsUpstream(s), 1, 'the job of priced models reached Mistral')
  t.same((await watchesOf(s, ws)).map((row) => row.jobId), [priced.json.id], 'and is watched')

  // an agent job runs on the agent's model, whatever its lines name: it is priced when it ends
  const agent = await createJob(s, ws, {
    endpoint: '/v1/chat/completions', agent_id: 'ag_0123', requests: [line('brand-new-model', 0)]
  })
  t.equal(agent.statusCode, 200, JSON.stringify(agent.json))
})
