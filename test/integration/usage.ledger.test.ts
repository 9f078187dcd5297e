import { sql } from 'drizzle-orm'
import t from 'tap'
import { costOf } from '../../src/pricing/cost.js'
import { selectRows } from '../../src/usage/sql-rows.js'
import { completePrices, DEFAULT_PRICES } from '../../src/pricing/default-prices.js'
import { SCRAPE_HEADERS, buildTestApp } from '../helpers/app.js'
import { CONNECTOR_TOKENS_PER_CALL } from '../helpers/fake-mistral.js'

const SMALL = completePrices(DEFAULT_PRICES.find((row) => row.model === 'mistral-small-2603' && row.family === 'chat')!
  .prices.USD!)

t.test('a priority-tier call is recorded with its tier and priced at 1.75×, under its canonical model', async (t) => {
  const { app, mistral, admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  for (const tier of ['auto', undefined]) {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: ws.headers,
      payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Which tier?' }], service_tier: tier }
    })
    t.equal(res.statusCode, 200, res.body)
  }
  await app.usage.flush()
  const records = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records.reverse()
  t.equal(records.length, 2)
  const [priority, standard] = records
  const [priorityUsage, standardUsage] = mistral.reportedUsage.map((entry) => entry.usage)
  t.equal(priorityUsage.service_tier, 'priority', 'the fake served the first call at priority')
  t.match(priority, { model: 'mistral-small-latest', pricedModel: 'mistral-small-2603', serviceTier: 'priority' })
  t.match(standard, { model: 'mistral-small-latest', pricedModel: 'mistral-small-2603', serviceTier: null })
  const units = (usage: Record<string, unknown>) => ({
    promptTokens: Number(usage.prompt_tokens), completionTokens: Number(usage.completion_tokens),
    cachedTokens: 0, audioSeconds: 0, pages: 0, characters: 0
  })
  const expectedPriority = costOf(units(priorityUsage), SMALL, { family: 'chat', markupBps: 0, serviceTier: 'priority' })
  const expectedStandard = costOf(units(standardUsage), SMALL, { family: 'chat', markupBps: 0 })
  t.equal(priority.listCostMicros, expectedPriority.listMicros)
  t.equal(standard.listCostMicros, expectedStandard.listMicros)
  t.ok(priority.listCostMicros > standard.listCostMicros, 'priority costs more for the same prompt')
})

t.test('conversations record their connector tokens, in the ledger and in the daily rollup', async (t) => {
  const { app, admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  for (const stream of [false, true]) {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/conversations',
      headers: ws.headers,
      payload: { model: 'mistral-medium-latest', inputs: 'Search the web', tools: [{ type: 'web_search' }], stream }
    })
    t.equal(res.statusCode, 200, res.body)
  }
  await app.usage.flush()
  const records = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records
  t.same(records.map((record: { connectorTokens: number }) => record.connectorTokens),
    [CONNECTOR_TOKENS_PER_CALL, CONNECTOR_TOKENS_PER_CALL])
  t.same(records.map((record: { streamed: boolean }) => record.streamed).sort(), [false, true])
  const rows = await selectRows(app.database.db, sql`SELECT sum(connector_tokens)::int AS connector,
    sum(calls)::int AS calls FROM usage_daily WHERE workspace_id = ${ws.id}`)
  t.same(rows[0], { connector: 2 * CONNECTOR_TOKENS_PER_CALL, calls: 2 })
})

t.test('the upstream duration of each call is observed', async (t) => {
  const { app, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const res = await app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: ws.headers,
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'How long?' }] }
  })
  t.equal(res.statusCode, 200)
  const models = await app.inject({ method: 'GET', url: '/v1/models', headers: ws.headers })
  t.equal(models.statusCode, 200)
  const text = (await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body
  const count = (operation: string, model: string) => Number(new RegExp(
    `^gen_ai_server_request_duration_seconds_count\\{gen_ai_operation_name="${operation}",` +
    `gen_ai_request_model="${model}",stream="false"\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0)
  t.equal(count('chat', 'mistral-small-2603'), 1, 'a metered call')
  t.equal(count('models', 'other'), 1, 'a call that is not metered')
})

t.test('a capped workspace\'s conversations are bounded in completion_args, where Mistral reads it', async (t) => {
  const { app, createWorkspace, admin, mistral } = await buildTestApp(t)
  const ws = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { daily: '5' } })).statusCode, 200)
  const send = async (url: string, payload: Record<string, unknown>) => {
    const res = await app.inject({ method: 'POST', url, headers: ws.headers, payload })
    t.equal(res.statusCode, 200, `${url}: ${res.body.slice(0, 300)}`)
    return res.json()
  }
  const started = await send('/v1/conversations', {
    model: 'mistral-small-latest', inputs: 'Hello', completion_args: { temperature: 0.2, max_tokens: 50 }
  })
  await send(`/v1/conversations/${started.conversation_id}`, { inputs: 'And then?' })
  await send(`/v1/conversations/${started.conversation_id}/restart`, {
    inputs: 'Again', from_entry_id: started.outputs[0].id
  })
  const sent = mistral.requestsTo('/v1/conversations').map((request) => request.json as Record<string, any>)
  t.equal(sent.length, 3)
  t.same(sent.map((body) => 'max_tokens' in body), [false, false, false], 'never at the top level')
  t.equal(sent[0].completion_args.max_tokens, 50, 'the client\'s own bound, kept')
  t.equal(sent[0].completion_args.temperature, 0.2, 'beside its other arguments')
  t.ok(sent.slice(1).every((body) => body.completion_args.max_tokens > 0), 'the append and the restart are bounded too')
})

t.test('a conversation\'s append is priced at the model its answer names, not at the dearest chat price', async (t) => {
  const { app, createWorkspace, admin } = await buildTestApp(t)
  const ws = await createWorkspace()
  const send = async (url: string, payload: Record<string, unknown>) =>
    (await app.inject({ method: 'POST', url, headers: ws.headers, payload })).json()
  const started = await send('/v1/conversations', { model: 'mistral-small-latest', inputs: 'Hello' })
  await send(`/v1/conversations/${started.conversation_id}`, { inputs: 'And then?' })
  await app.usage.flush()
  const records = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records as Array<Record<string, any>>
  t.equal(records.length, 2)
  t.match(records.map((record) => record.pricedModel), [/^mistral-small-/, /^mistral-small-/],
    'both at the price of the conversation\'s model')
  t.same(records.map((record) => record.model), ['mistral-small-latest', 'mistral-small-latest'])
})
