import t from 'tap'
import { SCRAPE_HEADERS, buildTestApp, type TestWorkspace } from '../helpers/app.js'
import { parseExposition, valueOf } from '../helpers/exposition.js'

// src/metrics.ts: the workspace label takes the first METRICS_WORKSPACE_LABEL_LIMIT slugs a replica sees, then says
// `__other__`; a small limit, so that reaching it takes a few workspaces rather than the default 1,000
const LABEL_CAP = 20
const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Overflow' }] }

t.test('past METRICS_WORKSPACE_LABEL_LIMIT workspaces the label says __other__ and the overflow is counted', async (t) => {
  const { app, admin, createWorkspace } = await buildTestApp(t, { METRICS_WORKSPACE_LABEL_LIMIT: String(LABEL_CAP) })
  const workspaces: TestWorkspace[] = []
  // soft-deleted afterwards, so that the scrape-time spend of later runs does not list them
  t.teardown(async () => {
    for (let i = 0; i < workspaces.length; i += 50) {
      await Promise.all(workspaces.slice(i, i + 50).map((ws) => admin('DELETE', `/admin/v1/workspaces/${ws.slug}`)))
    }
  })
  const call = async (ws: TestWorkspace) => {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat })
    if (res.statusCode !== 200) throw new Error(`chat for ${ws.slug}: ${res.statusCode} ${res.body}`)
  }
  const scrape = async () => parseExposition((await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body)

  // one call each (listing models: the cheapest call that is counted): the first LABEL_CAP slugs take the labels
  for (let i = 0; i < LABEL_CAP; i += 10) {
    const batch = await Promise.all(Array.from({ length: 10 }, () => createWorkspace()))
    workspaces.push(...batch)
    await Promise.all(batch.map(async (ws) => {
      const res = await app.inject({ method: 'GET', url: '/v1/models', headers: ws.headers })
      if (res.statusCode !== 200) throw new Error(`models for ${ws.slug}: ${res.statusCode} ${res.body}`)
    }))
  }
  let samples = await scrape()
  const labelled = new Set(samples.filter((s) => s.name === 'tramontane_requests_total').map((s) => s.labels.workspace))
  t.equal(labelled.size, LABEL_CAP, 'every workspace so far has its own label')
  t.equal(valueOf(samples, 'tramontane_metric_label_overflow_total'), 0, 'no overflow yet')

  const late = [await createWorkspace(), await createWorkspace()]
  workspaces.push(...late)
  await call(late[0])
  await call(late[1])
  await call(late[1])
  await call(workspaces[0])
  samples = await scrape()
  const requests = (workspace: string) =>
    valueOf(samples, 'tramontane_requests_total', { workspace, operation: 'chat', status_class: '2xx' })
  t.equal(requests('__other__'), 3, 'the calls of workspaces past the cap are counted under __other__')
  t.equal(valueOf(samples, 'tramontane_metric_label_overflow_total'), 3, 'each of them counted as overflow')
  t.equal(requests(late[0].slug), undefined, 'no label for a workspace past the cap')
  t.equal(requests(workspaces[0].slug), 1, 'a workspace seen before the cap keeps its label')
  t.ok((valueOf(samples, 'tramontane_spend_micros_total', { workspace: '__other__' }) ?? 0) > 0, 'spend past the cap is kept')
  const series = new Set(samples.filter((s) => s.name === 'tramontane_requests_total').map((s) => s.labels.workspace))
  t.equal(series.size, LABEL_CAP + 1, `the label has at most ${LABEL_CAP + 1} values`)
})

t.test('METRICS_WORKSPACE_LABEL=false: the per-call families name no workspace; the scrape-time gauges still do', async (t) => {
  const { app, createWorkspace, admin } = await buildTestApp(t, { METRICS_WORKSPACE_LABEL: 'false' })
  const one = await createWorkspace()
  const two = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${two.slug}`, { caps: { monthly: '100' } })).statusCode, 200)
  for (const ws of [one, two, two]) {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat })
    t.equal(res.statusCode, 200)
  }
  await app.usage.flush()
  const text = (await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body
  const samples = parseExposition(text)
  t.equal(valueOf(samples, 'tramontane_requests_total', { workspace: '', operation: 'chat', status_class: '2xx' }), 3,
    'the calls of both workspaces, in one series')
  const SCRAPED = /^tramontane_(mistral_quota_|workspace_spend_|workspace_cap_)/
  const named = samples.filter((s) => s.labels.workspace && !SCRAPED.test(s.name))
  t.same(named.map((s) => `${s.name} ${s.labels.workspace}`), [], 'no per-call series names a workspace')
  t.equal(valueOf(samples, 'tramontane_mistral_quota_limit', { workspace: two.slug, key: 'default', resource: 'tokens', window: 'minute' }),
    5_000_000, 'a key\'s quota still says whose key it is')
  // other test files' workspaces share this database: theirs may be listed too
  const capped = samples.filter((s) => s.name === 'tramontane_workspace_cap_micros').map((s) => s.labels.workspace)
  t.ok(capped.includes(two.slug), 'a cap keeps its workspace, for the cap alerts')
  t.notOk(capped.includes(''), 'none without it')
  t.equal(valueOf(samples, 'tramontane_metric_label_overflow_total'), 0)
})
