import { randomBytes } from 'node:crypto'
import t from 'tap'
import { SCRAPE_HEADERS, buildTestApp } from '../helpers/app.js'

const SHARED = /^tramontane_workspace_(spend|cap)_micros\b/
const chat = (model: string) => ({ model, messages: [{ role: 'user', content: 'Count the series' }] })

/** `name{labels} value` lines of one metric family, for one workspace. */
function samples (text: string, name: string, workspace: string) {
  return text.split('\n').filter((line) => line.startsWith(`${name}{`) && line.includes(`workspace="${workspace}"`))
}

t.test('GET /metrics counts calls, tokens and spend as the ledger does', async (t) => {
  const { app, mistral, admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  for (let i = 0; i < 3; i++) {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat('mistral-small-latest') })
    t.equal(res.statusCode, 200)
  }
  await app.usage.flush()
  const usage = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json
  const res = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain/)
  const text = res.body
  t.match(samples(text, 'tramontane_requests_total', ws.slug),
    [`tramontane_requests_total{workspace="${ws.slug}",operation="chat",model="mistral-small-2603",status_class="2xx"} 3`])
  const reported = mistral.reportedUsage.reduce((sum, entry) => sum + Number(entry.usage.prompt_tokens), 0)
  t.match(samples(text, 'tramontane_tokens_total', ws.slug).find((line) => line.includes('type="input"')), new RegExp(` ${reported}$`))
  t.match(samples(text, 'tramontane_spend_micros_total', ws.slug)[0], new RegExp(` ${usage.totals.billedCostMicros}$`))
  t.ok(usage.totals.billedCostMicros > 0, 'the calls were priced')
  for (const family of ['gen_ai_client_token_usage_bucket', 'gen_ai_client_operation_duration_seconds_bucket',
    'tramontane_in_flight_calls', 'tramontane_usage_spool_depth', 'tramontane_build_info', 'process_cpu_seconds_total']) {
    t.match(text, new RegExp(`^${family}`, 'm'), family)
  }
  t.notMatch(text, ws.token.slice(4, 20), 'no token in the metrics')
})

t.test('10,000 random model names and paths do not grow the series', async (t) => {
  const { app, admin, createWorkspace } = await buildTestApp(t)
  // a fallback price in a currency of its own (XXX: ISO's "no currency"), so random models are served, not refused
  const fallback = await admin('PUT', '/admin/v1/prices/*', { currency: 'XXX', family: 'chat', inputPerMTok: '0.1', outputPerMTok: '0.1' })
  t.equal(fallback.statusCode, 200, fallback.body)
  t.teardown(() => admin('DELETE', '/admin/v1/prices/*?currency=XXX&family=chat'))
  const ws = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { currency: 'XXX' })).statusCode, 200)
  const seriesCount = async () => (await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body
    // the gateway's own families: Node's default metrics add series of their own as the GC runs, and what the scrape
    // reads from the shared database (spend and caps of every workspace) moves with the other test files
    .split('\n').filter((line) => (line.startsWith('gen_ai_') || line.startsWith('tramontane_')) && !SHARED.test(line)).length
  const call = (i: number) => i % 2 === 0
    ? app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat(`m-${randomBytes(6).toString('hex')}`) })
    : app.inject({ method: 'GET', url: `/v1/${randomBytes(6).toString('hex')}/${i}`, headers: ws.headers })
  const burst = async (from: number, count: number) => {
    for (let batch = 0; batch < count / 100; batch++) {
      await Promise.all(Array.from({ length: 100 }, (_, i) => call(from + batch * 100 + i)))
    }
  }
  // the first calls create the bounded set of series (histogram buckets, status classes); then nothing grows
  await burst(0, 2_000)
  const before = await seriesCount()
  await burst(2_000, 8_000)
  const after = await seriesCount()
  t.equal(after, before, `series after 2,000 random calls ${before}, after 10,000 ${after}`)
  const text = (await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body
  t.notMatch(text, /model="m-[0-9a-f]{12}"/, 'no request model name became a label')
  t.notMatch(text, /path=/, 'no path label at all')
})

t.test('on the port clients reach, /metrics answers only the admin token: it names every workspace and its spend',
  async (t) => {
    const { app, createWorkspace } = await buildTestApp(t)
    const ws = await createWorkspace()
    for (const [who, headers] of [['no token', {}], ['a workspace token', ws.headers],
      ['a wrong admin token', { authorization: 'Bearer adm_wrong' }]] as const) {
      const res = await app.inject({ method: 'GET', url: '/metrics', headers })
      t.equal(res.statusCode, 401, `${who}: 401`)
      t.match(res.json(), { code: 'invalid_admin_token', request_id: String }, `${who}: in the envelope`)
      t.notMatch(res.body, /tramontane_/, `${who}: no series`)
    }
    const scraped = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
    t.equal(scraped.statusCode, 200, 'the admin token scrapes')
    t.match(scraped.body, /^tramontane_usage_spool_depth /m)
  })
