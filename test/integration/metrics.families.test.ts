import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { request } from 'undici'
import { SCRAPE_HEADERS, TEST_DATABASE_URL, buildTestApp, listen } from '../helpers/app.js'
import { parseExposition, valueOf } from '../helpers/exposition.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'
import type { FastifyInstance } from 'fastify'

const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Count the series' }] }
// the scrape reads PostgreSQL at most once a second (src/scrape-facts.ts): a later scrape waits that long
const FACTS_AGE_MS = 1_100

async function chatStatus (app: FastifyInstance, headers: Record<string, string>) {
  return (await app.inject({ method: 'POST', url: '/v1/chat/completions', headers, payload: chat })).statusCode
}

async function scrape (app: FastifyInstance) {
  const res = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`)
  return parseExposition(res.body)
}

t.test('upstream status codes, breakers, invalid keys and Mistral quota, from real calls', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t, {
    UPSTREAM_RETRIES: '0', BREAKER_THRESHOLD: '1', BREAKER_OPEN_MS: '600000'
  })
  const before = await scrape(app)
  const served = await createWorkspace()
  const ok = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: served.headers, payload: chat })
  t.equal(ok.statusCode, 200)
  mistral.enqueueError(422, {
    detail: [{ type: 'extra_forbidden', loc: ['body', 'x'], msg: 'Extra inputs are not permitted' }]
  })
  t.equal(await chatStatus(app, served.headers), 422)
  mistral.enqueueError(418, { message: 'teapot' })
  t.equal(await chatStatus(app, served.headers), 418)

  const rejected = await createWorkspace()
  mistral.enqueueError(401, { message: 'Unauthorized' })
  t.equal(await chatStatus(app, rejected.headers), 502)

  const failing = await createWorkspace()
  mistral.enqueueError(503, { detail: 'Service Unavailable' })
  t.equal(await chatStatus(app, failing.headers), 503)

  await sleep(FACTS_AGE_MS)
  const after = await scrape(app)
  const responses = (code: string) => valueOf(after, 'tramontane_upstream_responses_total', { code })
  t.equal(responses('200'), 1, 'one 200')
  t.equal(responses('422'), 1, 'one 422')
  t.equal(responses('other'), 1, 'a 418 is `other`')
  t.equal(responses('401'), 1, 'one 401')
  t.equal(valueOf(after, 'tramontane_upstream_responses_total', { code: '503', status_class: '5xx' }), 1, 'one 503')

  // key health and key statuses are shared with the other replicas (and test files) of this Redis and database
  t.ok((valueOf(after, 'tramontane_upstream_breakers', { state: 'open' }) ?? 0) >= 1, 'the 503 opened a breaker')
  t.not(valueOf(after, 'tramontane_upstream_breakers', { state: 'half_open' }), undefined)
  const invalidBefore = valueOf(before, 'tramontane_mistral_keys', { status: 'invalid' }) ?? 0
  const invalidAfter = valueOf(after, 'tramontane_mistral_keys', { status: 'invalid' }) ?? 0
  t.ok(invalidAfter >= invalidBefore + 1, 'the 401 key counts as invalid')
  t.ok((valueOf(after, 'tramontane_mistral_keys', { status: 'active' }) ?? 0) >= 2)

  const quota = (name: string, resource: string) =>
    valueOf(after, name, { workspace: served.slug, key: 'default', resource, window: 'minute' })
  const sent = (header: string) => Number(ok.headers[header])
  t.equal(quota('tramontane_mistral_quota_remaining', 'tokens'), sent('x-ratelimit-remaining-tokens-minute'),
    'tokens left, as Mistral said')
  t.equal(quota('tramontane_mistral_quota_limit', 'tokens'), sent('x-ratelimit-limit-tokens-minute'))
  t.equal(quota('tramontane_mistral_quota_remaining', 'requests'), sent('x-ratelimit-remaining-req-minute'))
  t.ok(Number(ok.headers['x-ratelimit-limit-tokens-minute']) > 0, 'the fake sent its quota headers')
  const text = (await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body
  for (const ws of [served, rejected, failing]) {
    t.notMatch(text, ws.mistralKey, 'no Mistral key in the metrics')
    t.notMatch(text, ws.id, 'no workspace id in the metrics')
  }
  t.notMatch(text, /key_id|keyId/, 'no key id label')
})

t.test('spend and cap per workspace and period come from the ledger and survive a restart', async (t) => {
  const first = await buildTestApp(t)
  const ws = await first.createWorkspace()
  const caps = await first.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { caps: { daily: '5.00', monthly: '10.00', lifetime: '100.00' } })
  t.equal(caps.statusCode, 200, caps.body)
  for (let i = 0; i < 3; i++) {
    t.equal(await chatStatus(first.app, ws.headers), 200)
  }
  await first.app.usage.flush()
  const billed = (await first.admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.totals.billedCostMicros
  t.ok(billed > 0, 'the calls were priced')

  const expect = (samples: ReturnType<typeof parseExposition>, label: string) => {
    const of = (name: string, period: string) => valueOf(samples, name, { workspace: ws.slug, period })
    for (const period of ['daily', 'monthly', 'lifetime']) {
      t.equal(of('tramontane_workspace_spend_micros', period), billed, `${label}: ${period} spend`)
    }
    t.equal(of('tramontane_workspace_cap_micros', 'daily'), 5_000_000, `${label}: daily cap`)
    t.equal(of('tramontane_workspace_cap_micros', 'monthly'), 10_000_000)
    t.equal(of('tramontane_workspace_cap_micros', 'lifetime'), 100_000_000)
  }
  expect(await scrape(first.app), 'the replica that served the calls')
  // a gateway started afterwards has served nothing, and knows the same
  const restarted = await buildTestApp(t, {}, { mistral: first.mistral })
  expect(await scrape(restarted.app), 'a fresh replica')

  const uncapped = await first.createWorkspace()
  t.equal(await chatStatus(first.app, uncapped.headers), 200)
  await first.app.usage.flush()
  await sleep(FACTS_AGE_MS)
  const later = await scrape(first.app)
  t.ok((valueOf(later, 'tramontane_workspace_spend_micros', { workspace: uncapped.slug, period: 'monthly' }) ?? 0) > 0,
    'spend without a cap is shown')
  const lifetime = valueOf(later, 'tramontane_workspace_spend_micros', { workspace: uncapped.slug, period: 'lifetime' })
  t.equal(lifetime, undefined,
    'lifetime spend only where a lifetime cap makes it matter')
  const uncappedCaps = later.filter((s) => s.name === 'tramontane_workspace_cap_micros' &&
    s.labels.workspace === uncapped.slug)
  t.equal(uncappedCaps.length, 0, 'no cap')
})

t.test('while PostgreSQL is away /metrics answers, with the last spend, the spool depth and its oldest record\'s age', async (t) => {
  const database = new URL(TEST_DATABASE_URL)
  const proxy = await startTcpProxy(Number(database.port || 5432), database.hostname)
  t.teardown(() => proxy.close())
  database.host = `127.0.0.1:${proxy.port}`
  const { app, admin, createWorkspace } = await buildTestApp(t, { DATABASE_URL: database.toString() })
  const ws = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { monthly: '10.00' } })).statusCode, 200)
  t.equal(await chatStatus(app, ws.headers), 200)
  await app.usage.flush()
  const spend = (samples: ReturnType<typeof parseExposition>) =>
    valueOf(samples, 'tramontane_workspace_spend_micros', { workspace: ws.slug, period: 'monthly' })
  const billed = spend(await scrape(app))
  t.ok((billed ?? 0) > 0, 'spend from the ledger')

  proxy.cut()
  t.equal(await chatStatus(app, ws.headers), 200,
    'calls go on while PostgreSQL is away')
  await sleep(FACTS_AGE_MS)
  const started = Date.now()
  const away = await scrape(app)
  t.ok(Date.now() - started < 3_000, `answered in ${Date.now() - started} ms`)
  t.equal(spend(away), billed, 'the last spend read stands')
  t.equal(valueOf(away, 'tramontane_usage_spool_depth'), 1, 'the record waiting for PostgreSQL shows')
  const waited = valueOf(away, 'tramontane_usage_spool_oldest_age_seconds') ?? 0
  t.ok(waited >= 1 && waited < 10, `and how long it has waited: ${waited} s, since the call a second ago`)

  proxy.restore()
  await app.usage.flush()
  await sleep(FACTS_AGE_MS)
  const back = await scrape(app)
  t.equal(valueOf(back, 'tramontane_usage_spool_depth'), 0, 'the spool drained')
  t.equal(valueOf(back, 'tramontane_usage_spool_oldest_age_seconds'), 0, 'none waits')
  t.ok((spend(back) ?? 0) > (billed ?? 0), 'the spend counts the call made while PostgreSQL was away')
})

t.test('METRICS_PORT serves /metrics on a port of its own, and not on the main one', async (t) => {
  const { app, createWorkspace } = await buildTestApp(t, { METRICS_PORT: '0' })
  const ws = await createWorkspace()
  t.equal(app.metricsServer, null, 'nothing listens before the app does')
  const main = await listen(app)
  t.equal(await chatStatus(app, ws.headers), 200)
  const address = app.metricsServer?.address()
  if (!address || typeof address === 'string') throw new Error('the metrics port is not open')
  const own = await request(`http://127.0.0.1:${address.port}/metrics`)
  t.equal(own.statusCode, 200)
  t.match(own.headers['content-type'], /^text\/plain/)
  const samples = parseExposition(await own.body.text())
  t.equal(valueOf(samples, 'tramontane_requests_total', { workspace: ws.slug, status_class: '2xx' }), 1)
  const other = await request(`http://127.0.0.1:${address.port}/v1/models`)
  t.equal(other.statusCode, 404, 'the metrics port serves nothing else')
  await other.body.dump()
  const onMain = await request(`${main}/metrics`)
  t.equal(onMain.statusCode, 404, 'no /metrics on the main port')
  await onMain.body.dump()
  await app.close()
  t.equal(app.metricsServer?.listening, false, 'closed with the app')
})

t.test('METRICS_HOST puts the metrics port on its own address, apart from HOST', async (t) => {
  const { app } = await buildTestApp(t, { METRICS_PORT: '0', HOST: '0.0.0.0', METRICS_HOST: '127.0.0.1' })
  await listen(app)
  // opened by the app's onListen hook
  for (let waited = 0; !app.metricsServer?.listening && waited < 2_000; waited += 20) await sleep(20)
  t.match(app.metricsServer?.address(), { address: '127.0.0.1' }, 'loopback only, though the app listens on every interface')
  await app.close()
})

t.test('an event stream that is not metered (workflows) is a stream too: its label, and how it ended', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const events = 'event: workflow.started\ndata: {"id":"w1"}\n\nevent: workflow.completed\ndata: {"id":"w1"}\n\n'
  mistral.enqueue(function workflowEvents (_req, res) {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.end(events)
  }, { path: '/v1/workflows/events/stream' })
  const res = await app.inject({ method: 'GET', url: '/v1/workflows/events/stream', headers: ws.headers })
  t.equal(res.statusCode, 200)
  t.equal(res.payload, events, 'relayed as it came')

  const samples = await scrape(app)
  const server = (stream: string) => valueOf(samples, 'gen_ai_server_request_duration_seconds_count',
    { gen_ai_operation_name: 'workflows', stream })
  t.equal(server('true'), 1, 'Mistral\'s part of it is a stream\'s')
  t.equal(server('false'), undefined, 'not an answer in one piece')
  t.equal(valueOf(samples, 'tramontane_stream_terminations_total', { reason: 'complete' }), 1, 'ended complete')
})

t.test('a call waiting for a connection to Mistral is counted while it waits', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t, { UPSTREAM_CONNECTIONS: '1' })
  const ws = await createWorkspace()
  const headers = { ...ws.headers, 'content-type': 'application/json' }
  const queued = async () => valueOf(await scrape(app), 'tramontane_upstream_queued_calls')
  t.equal(await queued(), 0, 'none at first')
  // a stream holds the only connection; the next call waits for it
  const gate = mistral.holdStreams()
  const stream = app.inject({ method: 'POST', url: '/v1/chat/completions', headers, payload: { ...chat, stream: true } })
  await sleep(200)
  const waiting = app.inject({ method: 'POST', url: '/v1/chat/completions', headers, payload: chat })
  await sleep(200)
  t.equal(await queued(), 1, 'the second call waits for the connection the stream holds')
  gate.release()
  t.same([(await stream).statusCode, (await waiting).statusCode], [200, 200])
  t.equal(await queued(), 0, 'and none once the stream ended')
})

t.test('spend and caps read from the ledger carry each workspace\'s currency', async (t) => {
  const { app, admin, createWorkspace } = await buildTestApp(t)
  const eur = await createWorkspace()
  const patched = await admin('PATCH', `/admin/v1/workspaces/${eur.slug}`,
    { currency: 'EUR', caps: { monthly: '10.00' } })
  t.equal(patched.statusCode, 200, patched.body)
  const usd = await createWorkspace()
  t.equal(await chatStatus(app, eur.headers), 200)
  t.equal(await chatStatus(app, usd.headers), 200)
  await app.usage.flush()
  const billed = async (slug: string) =>
    (await admin('GET', `/admin/v1/workspaces/${slug}/usage`)).json.totals.billedCostMicros as number
  await sleep(FACTS_AGE_MS)
  const samples = await scrape(app)
  const gauge = (name: string, slug: string, currency: string) =>
    valueOf(samples, name, { workspace: slug, currency, period: 'monthly' })
  t.equal(gauge('tramontane_workspace_spend_micros', eur.slug, 'EUR'), await billed(eur.slug), 'euros')
  t.equal(gauge('tramontane_workspace_cap_micros', eur.slug, 'EUR'), 10_000_000, 'a cap in euros')
  t.equal(gauge('tramontane_workspace_spend_micros', usd.slug, 'USD'), await billed(usd.slug), 'dollars')
})

t.test('a call\'s spend counts in its workspace\'s currency', async (t) => {
  const { app, admin, createWorkspace } = await buildTestApp(t)
  const eur = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${eur.slug}`, { currency: 'EUR' })).statusCode, 200)
  t.equal(await chatStatus(app, eur.headers), 200)
  await app.usage.flush()
  const billed = (await admin('GET', `/admin/v1/workspaces/${eur.slug}/usage`)).json.totals.billedCostMicros
  t.ok(billed > 0, 'the call was priced')
  t.equal(valueOf(await scrape(app), 'tramontane_spend_micros_total', { workspace: eur.slug, currency: 'EUR' }), billed)
})
