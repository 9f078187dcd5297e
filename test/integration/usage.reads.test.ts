import { randomUUID } from 'node:crypto'
import { eq, sql } from 'drizzle-orm'
import t from 'tap'
import { usageRecords, watchedJobs, type UsageRecord } from '../../src/db/schema.js'
import { selectRows } from '../../src/usage/sql-rows.js'
import { monthlyStatement } from '../../src/usage/statement.js'
import { parseMonth } from '../../src/usage/usage-query.js'
import { SCRAPE_HEADERS, buildTestApp, type TestApp, testConfig, type TestWorkspace } from '../helpers/app.js'

// Records are written straight into the ledger at chosen instants (the trigger keeps the rollup, as it does for the
// gateway's own writes), so that days, months and time zones can be pinned. Each test uses a month of its own.

interface Seed {
  at: string
  model?: string
  operation?: string
  prompt?: number
  completion?: number
  list?: number
  billed?: number
  tokenId?: string | null
}

async function seed (s: TestApp, ws: TestWorkspace, seeds: Seed[]) {
  const rows: UsageRecord[] = seeds.map((entry) => ({
    requestId: randomUUID(),
    workspaceId: ws.id,
    tokenId: entry.tokenId === undefined ? ws.tokenId : entry.tokenId,
    keyName: 'default',
    operation: entry.operation ?? 'chat',
    model: entry.model ?? 'mistral-small-latest',
    pricedModel: entry.model ?? 'mistral-small-2603',
    promptTokens: entry.prompt ?? 10,
    completionTokens: entry.completion ?? 5,
    totalTokens: (entry.prompt ?? 10) + (entry.completion ?? 5),
    listCostMicros: entry.list ?? 100,
    billedCostMicros: entry.billed ?? 120,
    status: 200,
    upstreamStatus: 200,
    latencyMs: 5,
    createdAt: new Date(entry.at)
  }))
  await s.app.database.db.insert(usageRecords).values(rows)
}

async function workspaceIn (s: TestApp, timezone: string, patch: Record<string, unknown> = {}) {
  const ws = await s.createWorkspace()
  const res = await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { timezone, ...patch })
  if (res.statusCode !== 200) throw new Error(res.body)
  return ws
}

t.test('grouped by day: partial days from the ledger, whole days from the rollup, in the workspace zone', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'Europe/Paris')
  await seed(s, ws, [
    { at: '2012-03-01T09:00:00Z', prompt: 1 }, // 10:00 Paris: before the window
    { at: '2012-03-01T12:00:00Z', prompt: 2 }, // 13:00 Paris, 1 March
    { at: '2012-03-01T23:30:00Z', prompt: 4 }, // 00:30 Paris, 2 March
    { at: '2012-03-02T22:59:59Z', prompt: 8 }, // 23:59:59 Paris, 2 March
    { at: '2012-03-03T10:59:59Z', prompt: 16 }, // 11:59:59 Paris, 3 March
    { at: '2012-03-03T11:00:00Z', prompt: 32 } // 12:00 Paris: the window's exclusive end
  ])
  const url = `/admin/v1/workspaces/${ws.slug}/usage?from=2012-03-01T12:00:00%2B01:00&to=2012-03-03T12:00:00%2B01:00`
  const byDay = await s.admin('GET', `${url}&groupBy=day`)
  t.equal(byDay.statusCode, 200, byDay.body)
  t.match(byDay.json, { from: '2012-03-01T11:00:00.000Z', to: '2012-03-03T11:00:00.000Z', timezone: 'Europe/Paris' })
  t.same(byDay.json.groups.map((g: any) => [g.day, g.calls, g.promptTokens]),
    [['2012-03-01', 1, 2], ['2012-03-02', 2, 12], ['2012-03-03', 1, 16]])
  t.match(byDay.json.totals, { calls: 4, promptTokens: 30, listCostMicros: 400, listCost: '0.000400', billedCost: '0.000480' })

  // the whole day (2 March) is read from the rollup: a rollup that disagreed would show
  await s.app.database.db.execute(sql`UPDATE usage_daily SET calls = calls + 100
    WHERE workspace_id = ${ws.id} AND day = '2012-03-02'`)
  const tampered = await s.admin('GET', `${url}&groupBy=day`)
  t.same(tampered.json.groups.map((g: any) => g.calls), [1, 102, 1], 'whole days come from usage_daily')
  await s.app.database.db.execute(sql`UPDATE usage_daily SET calls = calls - 100
    WHERE workspace_id = ${ws.id} AND day = '2012-03-02'`)

  // with no groupBy the shape is the one it always was: totals of the window and its records
  const plain = await s.admin('GET', url)
  t.equal(plain.statusCode, 200)
  t.equal(plain.json.totals.calls, 4)
  t.same(plain.json.records.map((r: any) => r.promptTokens), [16, 8, 4, 2], 'newest first')
  t.notOk('groups' in plain.json)

  // days as bounds: from midnight to midnight in Paris
  const days = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/usage?from=2012-03-02&to=2012-03-03`)
  t.match(days.json, { from: '2012-03-01T23:00:00.000Z', to: '2012-03-02T23:00:00.000Z' })
  t.equal(days.json.totals.promptTokens, 12)

  // a window inside one day is summed from the ledger alone
  const inside = (from: string, to: string) => s.admin('GET', `/admin/v1/workspaces/${ws.slug}/usage?from=${from}&to=${to}`)
  t.equal((await inside('2012-03-01T23:00:00Z', '2012-03-02T00:00:00Z')).json.totals.promptTokens, 4)
  t.equal((await inside('2012-03-02T12:00:00Z', '2012-03-02T23:00:00Z')).json.totals.promptTokens, 8)
  t.equal((await inside('2012-03-01T11:00:00Z', '2012-03-02T23:00:00Z')).json.totals.promptTokens, 14,
    'a partial day then a whole day')
})

t.test('grouped by model, operation and token; several dimensions at once', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'UTC')
  const other = await s.admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'batch jobs' })
  await seed(s, ws, [
    { at: '2013-05-01T10:00:00Z', model: 'mistral-large-2512', billed: 1000 },
    { at: '2013-05-01T11:00:00Z', model: 'mistral-small-2603', billed: 10 },
    { at: '2013-05-02T11:00:00Z', model: 'mistral-small-2603', operation: 'embeddings', billed: 1, tokenId: other.json.id },
    { at: '2013-05-02T12:00:00Z', model: 'mistral-small-2603', operation: 'embeddings', billed: 1, tokenId: null }
  ])
  const base = `/admin/v1/workspaces/${ws.slug}/usage?from=2013-05-01&to=2013-06-01`
  const byModel = (await s.admin('GET', `${base}&groupBy=model`)).json
  t.same(byModel.groups.map((g: any) => [g.model, g.calls, g.billedCostMicros]),
    [['mistral-large-2512', 1, 1000], ['mistral-small-2603', 3, 12]])
  const byOperation = (await s.admin('GET', `${base}&groupBy=operation`)).json
  t.same(byOperation.groups.map((g: any) => [g.operation, g.calls]), [['chat', 2], ['embeddings', 2]])
  const byToken = (await s.admin('GET', `${base}&groupBy=token`)).json
  t.same(byToken.groups.map((g: any) => [g.tokenName, g.calls]).sort(),
    [['batch jobs', 1], ['test', 2], [null, 1]].sort())
  const both = (await s.admin('GET', `${base}&groupBy=day,operation`)).json
  t.same(both.groupBy, ['day', 'operation'])
  t.same(both.groups.map((g: any) => [g.day, g.operation, g.calls]),
    [['2013-05-01', 'chat', 2], ['2013-05-02', 'embeddings', 2]])
  t.equal(both.totals.billedCostMicros, 1012)
})

t.test('CSV by format=csv or Accept: text/csv', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'UTC')
  await seed(s, ws, [{ at: '2014-07-01T10:00:00Z', model: '=HYPERLINK("x")' }, { at: '2014-07-02T10:00:00Z' }])
  const base = `/admin/v1/workspaces/${ws.slug}/usage?from=2014-07-01&to=2014-08-01`
  const byAccept = await s.app.inject({
    method: 'GET', url: `${base}&groupBy=model`, headers: { ...s.adminHeaders, accept: 'text/csv' }
  })
  t.equal(byAccept.statusCode, 200)
  t.match(byAccept.headers['content-type'], /^text\/csv/)
  t.match(byAccept.headers['content-disposition'], `usage-${ws.slug}.csv`)
  const lines = byAccept.body.trimEnd().split('\r\n')
  t.equal(lines[0], 'model,calls,estimatedCalls,promptTokens,cachedTokens,completionTokens,totalTokens,' +
    'connectorTokens,pages,audioSeconds,characters,listCostMicros,listCost,billedCostMicros,billedCost')
  t.same(lines.slice(1), [
    '"\'=HYPERLINK(""x"")",1,0,10,0,5,15,0,0,0,0,100,0.000100,120,0.000120',
    'mistral-small-2603,1,0,10,0,5,15,0,0,0,0,100,0.000100,120,0.000120'
  ], 'a formula-looking model is defused and quoted')
  const records = await s.admin('GET', `${base}&format=csv`)
  t.equal(records.statusCode, 200)
  const [header, ...rows] = records.body.trimEnd().split('\r\n')
  t.match(header, /^createdAt,requestId,tokenId,keyName,operation,model,pricedModel,serviceTier,/)
  t.equal(rows.length, 2)
  t.match(rows[0], /^2014-07-02T10:00:00.000Z,/)
  const column = (name: string) => rows[0].split(',')[header.split(',').indexOf(name)]
  t.same(['listCostMicros', 'listCost', 'billedCostMicros', 'billedCost'].map(column),
    ['100', '0.000100', '120', '0.000120'], 'each amount of a record also as a decimal string')
  const json = await s.admin('GET', base)
  t.match(json.json.records[0],
    { listCostMicros: 100, listCost: '0.000100', billedCostMicros: 120, billedCost: '0.000120' }, 'in JSON too')
})

t.test('bad input is a 400 that says what is wrong', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'UTC')
  const cases: Array<[string, string, RegExp]> = [
    [`/admin/v1/workspaces/${ws.slug}/usage?groupBy=colour`, 'groupBy', /groupBy must be one or more of day, model/],
    [`/admin/v1/workspaces/${ws.slug}/usage?groupBy=day,`, 'groupBy', /not ''/],
    [`/admin/v1/workspaces/${ws.slug}/usage?from=2014-07-02&to=2014-07-01`, 'from', /from must be before to/],
    [`/admin/v1/workspaces/${ws.slug}/usage?from=2014-07-01&to=2014-07-01`, 'from', /from must be before to/],
    [`/admin/v1/workspaces/${ws.slug}/usage?from=yesterday`, 'from', /from must be a day/],
    [`/admin/v1/workspaces/${ws.slug}/usage?to=2014-02-30`, 'to', /to must be a day/],
    [`/admin/v1/workspaces/${ws.slug}/usage?to=2014-02-03T10:00:00`, 'to', /with its offset/],
    [`/admin/v1/workspaces/${ws.slug}/usage?format=xml`, 'format', /format must be json or csv/],
    [`/admin/v1/workspaces/${ws.slug}/statements/2014-13`, 'month', /is not a month: use yyyy-mm/],
    [`/admin/v1/workspaces/${ws.slug}/statements/march`, 'month', /is not a month/],
    ['/admin/v1/usage?month=2014-7', 'month', /is not a month/]
  ]
  for (const [url, param, message] of cases) {
    const res = await s.admin('GET', url)
    t.equal(res.statusCode, 400, url)
    t.match(res.json, { object: 'error', code: 'invalid_request', param, message, error: { message } }, url)
  }
  t.equal((await s.admin('GET', '/admin/v1/workspaces/nope/statements/2014-07')).statusCode, 404)
})

t.test('a monthly statement: lines per model and operation in the workspace zone and currency', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'Europe/Paris', { currency: 'EUR', markupBps: 2000 })
  await seed(s, ws, [
    { at: '2015-02-28T22:59:59Z', list: 7, billed: 7 }, // 23:59:59 Paris, February
    { at: '2015-02-28T23:00:00Z', list: 1_000_000, billed: 1_200_000, prompt: 100 }, // midnight Paris, 1 March
    { at: '2015-03-15T12:00:00Z', list: 2_500_000, billed: 3_000_000, prompt: 200 },
    { at: '2015-03-20T12:00:00Z', model: 'mistral-embed-2312', operation: 'embeddings', list: 333, billed: 400 },
    // a discount given later shows as what was applied then
    { at: '2015-03-21T12:00:00Z', model: 'mistral-embed-2312', operation: 'embeddings', list: 1000, billed: 850 },
    { at: '2015-03-31T21:59:59Z', list: 10, billed: 12 }, // 23:59:59 Paris (summer time), 31 March
    { at: '2015-03-31T22:00:00Z', list: 99, billed: 99 } // midnight Paris, April
  ])
  const res = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/statements/2015-03`)
  t.equal(res.statusCode, 200, res.body)
  const statement = res.json
  t.match(statement, {
    workspace: { id: ws.id, slug: ws.slug },
    month: '2015-03',
    timezone: 'Europe/Paris',
    currency: 'EUR',
    periodStart: '2015-02-28T23:00:00.000Z',
    periodEnd: '2015-03-31T22:00:00.000Z',
    status: 'closed',
    pendingBatchJobs: 0,
    currentMarkupBps: 2000
  })
  t.same(statement.lines.map((line: any) => [line.model, line.operation, line.calls, line.listCostMicros,
    line.markupMicros, line.billedCostMicros, line.billedCost]), [
    ['mistral-embed-2312', 'embeddings', 2, 1333, -83, 1250, '0.001250'],
    ['mistral-small-2603', 'chat', 3, 3_500_010, 700_002, 4_200_012, '4.200012']
  ])
  t.equal(statement.lines[1].promptTokens, 310)
  t.same(statement.totals, {
    calls: 5,
    estimatedCalls: 0,
    listCostMicros: 3_501_343,
    listCost: '3.501343',
    markupMicros: 699_919,
    markup: '0.699919',
    billedCostMicros: 4_201_262,
    billedCost: '4.201262'
  })
  const csv = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/statements/2015-03?format=csv`)
  t.equal(csv.statusCode, 200)
  const lines = csv.body.trimEnd().split('\r\n')
  t.equal(lines[0], 'model,operation,calls,estimatedCalls,promptTokens,cachedTokens,completionTokens,connectorTokens,' +
    'pages,audioSeconds,characters,listCostMicros,listCost,markupMicros,markup,billedCostMicros,billedCost')
  t.equal(lines[1], 'mistral-embed-2312,embeddings,2,0,20,0,10,0,0,0,0,1333,0.001333,-83,-0.000083,1250,0.001250')
  t.equal(lines[3], 'TOTAL,,5,0,,,,,,,,3501343,3.501343,699919,0.699919,4201262,4.201262')

  const current = new Date().toISOString().slice(0, 7)
  const open = await s.admin('GET', `/admin/v1/workspaces/${ws.id}/statements/${current}`)
  t.match(open.json, { status: 'open', lines: [], totals: { calls: 0, billedCost: '0.000000' } })
})

t.test('a batch job still running keeps open every month it may end in, whenever it was created', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'Europe/Paris')
  const other = await workspaceIn(s, 'Europe/Paris')
  const watch = (workspaceId: string, createdAt: string, status: 'pending' | 'recorded' | 'failed' = 'pending') => ({
    jobId: randomUUID(), workspaceId, keyName: 'default', requestId: randomUUID(), status,
    createdAt: new Date(createdAt)
  })
  const running = watch(ws.id, '2018-04-30T21:00:00Z') // 23:00 Paris, 30 April: billed in the month it ends
  await s.app.database.db.insert(watchedJobs).values([
    running,
    watch(ws.id, '2018-04-29T12:00:00Z', 'recorded'),
    watch(ws.id, '2018-04-29T12:00:00Z', 'failed'),
    watch(other.id, '2018-04-29T12:00:00Z')
  ])
  const statusOf = async (month: string) => {
    const res = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/statements/${month}`)
    if (res.statusCode !== 200) throw new Error(res.body)
    return { status: res.json.status, pendingBatchJobs: res.json.pendingBatchJobs, calls: res.json.totals.calls }
  }
  const open = { status: 'open', pendingBatchJobs: 1, calls: 0 }
  const closed = { status: 'closed', pendingBatchJobs: 0, calls: 0 }
  t.same(await statusOf('2018-03'), closed, 'it cannot end before it began')
  t.same(await statusOf('2018-04'), open, 'it may end in April')
  t.same(await statusOf('2018-05'), open, 'or in May, though it began in April')

  // the job ends on 2 May: its record is in the ledger, then its watch leaves pending, as the watcher does it
  await seed(s, ws, [{ at: '2018-05-02T08:00:00Z', operation: 'batch' }])
  await s.app.database.db.update(watchedJobs).set({ status: 'recorded' }).where(eq(watchedJobs.jobId, running.jobId))
  t.same(await statusOf('2018-04'), closed)
  t.same(await statusOf('2018-05'), { ...closed, calls: 1 }, 'closed, with the job in it')
})

t.test('a month stays open until a call admitted at its end has ended and its record has landed', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'Europe/Paris')
  const workspace = await s.app.tenancy.workspaces.find(ws.slug)
  if (!workspace) throw new Error('no workspace')
  const month = parseMonth('2020-01')
  const periodEnd = Date.parse('2020-01-31T23:00:00Z') // midnight in Paris
  // a stream admitted at 23:59:50 is dated then, and its record reaches the ledger when it ends: up to
  // UPSTREAM_TOTAL_TIMEOUT_MS later, then a minute for a dead replica's spool to be claimed and written
  const longestCallMs = testConfig().UPSTREAM_TOTAL_TIMEOUT_MS
  const closesAt = periodEnd + longestCallMs + 60_000
  const read = async (now: number) => {
    const statement = await monthlyStatement(s.app.database.db, workspace, month, { longestCallMs, now: new Date(now) })
    return { status: statement.status, closesAt: statement.closesAt }
  }
  const expected = (status: string) => ({ status, closesAt: new Date(closesAt).toISOString() })
  t.same(await read(periodEnd - 1_000), expected('open'), 'before the month ends')
  t.same(await read(periodEnd + 5_000), expected('open'), '5 s after: a call of its last seconds still runs')
  t.same(await read(closesAt - 1), expected('open'))
  t.same(await read(closesAt), expected('closed'), 'once the longest call and the margin are past')
  t.same(await read(periodEnd + 2 * longestCallMs), expected('closed'))

  const res = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/statements/2020-01`)
  t.match(res.json, { status: 'closed', closesAt: new Date(closesAt).toISOString() }, 'the admin API says when')
})

t.test('the operator sees every workspace\'s month, totals per currency', async (t) => {
  const s = await buildTestApp(t)
  const usd = await workspaceIn(s, 'America/New_York')
  const eur = await workspaceIn(s, 'Europe/Paris', { currency: 'EUR' })
  await seed(s, usd, [
    { at: '2016-04-01T03:59:59Z', billed: 1 }, // still March in New York
    { at: '2016-04-01T04:00:00Z', billed: 500 },
    { at: '2016-04-30T12:00:00Z', billed: 250 }
  ])
  await seed(s, eur, [{ at: '2016-03-31T22:00:00Z', billed: 70 }]) // midnight in Paris: April
  const res = await s.admin('GET', '/admin/v1/usage?month=2016-04')
  t.equal(res.statusCode, 200, res.body)
  const mine = res.json.workspaces.filter((w: any) => w.id === usd.id || w.id === eur.id)
  t.same(mine.map((w: any) => [w.slug, w.currency, w.calls, w.billedCostMicros, w.billedCost]).sort(), [
    [usd.slug, 'USD', 2, 750, '0.000750'],
    [eur.slug, 'EUR', 1, 70, '0.000070']
  ].sort())
  const eurTotal = res.json.totals.find((total: any) => total.currency === 'EUR')
  t.ok(eurTotal.billedCostMicros >= 70)
  const csv = await s.app.inject({ method: 'GET', url: '/admin/v1/usage?month=2016-04', headers: { ...s.adminHeaders, accept: 'text/csv' } })
  t.match(csv.body, new RegExp(`\\r\\n${usd.slug},Test ${usd.slug},USD,America/New_York,false,2,30,200,0.000200,750,0.000750\\r\\n`))
  t.equal((await s.app.inject({ method: 'GET', url: '/admin/v1/usage', headers: usd.headers })).statusCode, 401,
    'a workspace token does not open it')
})

t.test('a busy month reads fast: 100,000 records of one workspace, the statement read once', async (t) => {
  const s = await buildTestApp(t)
  const ws = await workspaceIn(s, 'UTC')
  // one insert, 100,000 rows across March 2017 and 3 models, as the gateway would have written them one by one
  await selectRows(s.app.database.db, sql`INSERT INTO usage_records (request_id, workspace_id, token_id, key_name,
      operation, model, priced_model, prompt_tokens, completion_tokens, total_tokens, list_cost_micros,
      billed_cost_micros, status, upstream_status, latency_ms, created_at)
    SELECT gen_random_uuid()::text, ${ws.id}, ${ws.tokenId}, 'default', 'chat', 'm', 'model-' || (i % 3), 100, 20, 120,
      30, 36, 200, 200, 5, timestamptz '2017-03-01 00:00:00Z' + (i * interval '26 seconds')
    FROM generate_series(0, 99999) AS i`)
  const started = process.hrtime.bigint()
  const res = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/statements/2017-03`)
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  t.equal(res.statusCode, 200)
  t.equal(res.json.totals.calls, 100_000)
  t.equal(res.json.totals.billedCostMicros, 3_600_000)
  t.same(res.json.lines.map((line: any) => line.calls), [33_334, 33_333, 33_333])
  t.comment(`statement of a month of 100,000 records read in ${ms.toFixed(1)} ms`)
})

t.test('the OpenAPI document at /docs shows the usage routes, and not the self-service ones', async (t) => {
  const { app } = await buildTestApp(t)
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  for (const path of ['/admin/v1/workspaces/{ws}/usage', '/admin/v1/workspaces/{ws}/statements/{month}',
    '/admin/v1/usage']) {
    t.ok(doc.paths[path]?.get, path)
    t.same(doc.paths[path].get.tags, ['usage'], path)
  }
  t.ok(doc.paths['/admin/v1/workspaces/{ws}/usage'].get.parameters.some((p: any) => p.name === 'groupBy'))
  t.notOk(Object.keys(doc.paths).some((path) => path.startsWith('/tramontane')), 'workspace-token routes are not here')
})

t.test('a deleted workspace\'s usage and statements are read by its id; its slug no longer finds it', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  await seed(s, ws, [{ at: '2019-04-10T12:00:00Z', billed: 777 }])
  t.equal((await s.admin('DELETE', `/admin/v1/workspaces/${ws.slug}`)).statusCode, 204)

  const statement = await s.admin('GET', `/admin/v1/workspaces/${ws.id}/statements/2019-04`)
  t.equal(statement.statusCode, 200, 'the statement of a deleted workspace, by id')
  t.equal(statement.json.lines.length, 1)
  t.equal(Number(statement.json.lines[0].billedCostMicros), 777, 'with what it was billed')
  const usage = await s.admin('GET', `/admin/v1/workspaces/${ws.id}/usage?from=2019-04-01&to=2019-05-01`)
  t.equal(usage.statusCode, 200, 'its usage too')
  t.equal(usage.json.records.length, 1)
  t.equal((await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/statements/2019-04`)).statusCode, 404,
    'by slug: no live workspace has it')
})

t.test('a workspace whose zone PostgreSQL does not know reads its usage in UTC days, as its rollup counts them', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  // stored before the admin API asked PostgreSQL: a name later tzdata dropped, which ICU keeps
  await s.app.database.db.execute(sql`update workspaces set timezone = 'US/Pacific-New' where id = ${ws.id}`)
  await seed(s, ws, [{ at: '2019-06-10T23:30:00Z', billed: 500 }, { at: '2019-06-11T00:30:00Z', billed: 700 }])
  const byDay = await s.admin('GET', `/admin/v1/workspaces/${ws.id}/usage?from=2019-06-01&to=2019-07-01&groupBy=day`)
  t.equal(byDay.statusCode, 200, byDay.body.slice(0, 200))
  t.same(byDay.json.groups.map((group: { day: string }) => group.day), ['2019-06-10', '2019-06-11'], 'UTC days')
  const statement = await s.admin('GET', `/admin/v1/workspaces/${ws.id}/statements/2019-06`)
  t.equal(statement.statusCode, 200)
  t.equal(Number(statement.json.lines[0].billedCostMicros), 1200)
  const metrics = await s.app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  t.equal(metrics.statusCode, 200, 'the scrape reads its spend too')
})
