import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { SpendThresholdEvent } from '../../src/events.js'
import { calendarPeriods } from '../../src/limits/periods.js'
import { costOf } from '../../src/pricing/cost.js'
import { completePrices, DEFAULT_PRICES } from '../../src/pricing/default-prices.js'
import { formatMoney } from '../../src/pricing/money.js'
import { SCRAPE_HEADERS, buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { parseExposition, valueOf } from '../helpers/exposition.js'
import { countTokens, startFakeMistral } from '../helpers/fake-mistral.js'

// Issue 3: thresholds are recorded once per period and cap, and exposed as an event (app.events) that the webhooks
// issue will deliver: whose cap (the workspace's or a token's), which cap, which period, which percentage.

const COMPLETION = 100
const PROMPT = 'How far is the moon?'
const small = DEFAULT_PRICES.find((row) => row.aliases.includes('mistral-small-latest'))
if (!small) throw new Error('mistral-small-latest is not in the price book')
const ONE_CALL = costOf({ promptTokens: countTokens(PROMPT), completionTokens: COMPLETION, cachedTokens: 0, audioSeconds: 0, pages: 0, characters: 0 },
  completePrices(small.prices.USD), { family: 'chat', markupBps: 0 }).billedMicros

t.test('thresholds of a workspace cap and of a token cap: one event each, with scope, cap, period and percent', async (t) => {
  const mistral = await startFakeMistral({ completionTokens: COMPLETION })
  t.teardown(() => mistral.close())
  const { app, admin, createWorkspace } = await buildTestApp(t, {}, { mistral })
  const ws = await createWorkspace()
  // five calls' worth each: the workspace reports 40 and 80 % of its month, the token 60 % of its day
  const patched = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { caps: { monthly: formatMoney(5 * ONE_CALL), thresholds: [40, 80] } })
  t.equal(patched.statusCode, 200, 'workspace caps set')
  const token = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`,
    { caps: { daily: formatMoney(5 * ONE_CALL), thresholds: [60] } })
  t.equal(token.statusCode, 200, 'token caps set')

  const events: SpendThresholdEvent[] = []
  // a listener that throws (a broken webhook) breaks neither the call nor the listeners after it
  app.events.on('spend.threshold', () => { throw new Error('a broken webhook') })
  app.events.on('spend.threshold', (event) => { events.push(event) })
  for (let i = 0; i < 4; i++) {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: { ...ws.headers, 'content-type': 'application/json' },
      payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: PROMPT }], max_tokens: COMPLETION }
    })
    t.equal(res.statusCode, 200, `call ${i + 1} served`)
    // settlement follows the answer: wait for it, so the calls cross in order
    for (const deadline = Date.now() + 5_000; Date.now() < deadline; await sleep(20)) {
      const limits = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
      if (limits.workspace.caps.monthly.reserved === formatMoney(0)) break
    }
  }
  for (const deadline = Date.now() + 5_000; events.length < 3 && Date.now() < deadline;) await sleep(20)

  const { day, month } = calendarPeriods(Date.now(), 'UTC')
  const at = /^\d{4}-\d\d-\d\dT/
  t.match(events, [
    { type: 'spend.threshold', workspaceId: ws.id, workspaceSlug: ws.slug, scope: 'workspace', tokenId: null, cap: 'monthly', periodId: month.id, percent: 40, at },
    { type: 'spend.threshold', workspaceId: ws.id, workspaceSlug: ws.slug, scope: 'token', tokenId: ws.tokenId, cap: 'daily', periodId: day.id, percent: 60, at },
    { type: 'spend.threshold', workspaceId: ws.id, workspaceSlug: ws.slug, scope: 'workspace', tokenId: null, cap: 'monthly', periodId: month.id, percent: 80, at }
  ], 'the crossings, in order: 40 % of the month at call 2, 60 % of the token\'s day at call 3, 80 % at call 4')
  t.equal(events.length, 3, 'each once')
})

t.test('a batch charge reports a token cap\'s crossing by the token\'s own thresholds', async (t) => {
  const mistral = await startFakeMistral({ completionTokens: COMPLETION })
  t.teardown(() => mistral.close())
  const { app, admin, createWorkspace } = await buildTestApp(t, {}, { mistral })
  const ws = await createWorkspace()
  // the workspace has no caps: its thresholds are the default 50/80/100 %, which the token's [60] replaces
  const token = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`,
    { caps: { daily: formatMoney(5 * ONE_CALL), thresholds: [60] } })
  t.equal(token.statusCode, 200, 'token caps set')
  // one call (20 %) puts the token's day counter in the store, which a charge adds to
  const res = await app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: PROMPT }], max_tokens: COMPLETION }
  })
  t.equal(res.statusCode, 200, 'the call served')
  // settlement follows the answer: wait for it
  const daily = async () =>
    (await admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json.tokens[ws.tokenId].caps.daily
  for (const deadline = Date.now() + 5_000; Date.now() < deadline; await sleep(20)) {
    if ((await daily()).reserved === formatMoney(0)) break
  }
  t.equal((await daily()).settled, formatMoney(ONE_CALL), 'the call settled')

  const events: SpendThresholdEvent[] = []
  app.events.on('spend.threshold', (event) => { events.push(event) })
  // a batch job billed at two calls' cost brings the token's day to 60 %
  await app.admission.charge({
    id: `batch-${ws.id}`,
    workspace: { id: ws.id, timezone: 'UTC', caps: {} },
    token: { id: ws.tokenId, caps: { daily: 5 * ONE_CALL, thresholds: [60] } },
    cost: 2 * ONE_CALL,
    at: Date.now()
  })
  for (const deadline = Date.now() + 2_000; events.length < 1 && Date.now() < deadline;) await sleep(20)
  await sleep(100) // any second event would be emitted by now

  const { day } = calendarPeriods(Date.now(), 'UTC')
  t.match(events, [{ type: 'spend.threshold', workspaceId: ws.id, scope: 'token', tokenId: ws.tokenId, cap: 'daily',
    periodId: day.id, percent: 60 }], 'the token\'s 60 %, not the default 50 %')
  t.equal(events.length, 1, 'one event')
})

/** one chat call of the workspace (max_tokens COMPLETION unless given), once its settlement has reached the store */
async function chat (app: TestApp['app'], admin: TestApp['admin'], ws: TestWorkspace, maxTokens = COMPLETION) {
  const res = await app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: PROMPT }], max_tokens: maxTokens }
  })
  for (const deadline = Date.now() + 5_000; Date.now() < deadline; await sleep(20)) {
    const daily = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json.workspace.caps.daily
    if (daily.reserved === formatMoney(0)) break
  }
  return res
}

t.test('a call too large for what a cap has left is no 100 %, reported when spend gets there', async (t) => {
  const mistral = await startFakeMistral({ completionTokens: COMPLETION })
  t.teardown(() => mistral.close())
  const { app, admin, createWorkspace } = await buildTestApp(t, {}, { mistral })
  // ten calls' worth a day, max_tokens never clamped: a call may ask for more than the whole cap
  const ws = await createWorkspace()
  const caps = { daily: 10 * ONE_CALL, thresholds: [50, 100] }
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { caps: { daily: formatMoney(caps.daily), thresholds: caps.thresholds, clampMaxTokens: false } })).statusCode, 200)
  const events: SpendThresholdEvent[] = []
  app.events.on('spend.threshold', (event) => { events.push(event) })

  t.equal((await chat(app, admin, ws)).statusCode, 200, 'a call: 10 % of the cap')
  const large = await chat(app, admin, ws, 100 * COMPLETION)
  t.equal(large.statusCode, 429, 'a call whose worst case is larger than the whole cap is refused')
  t.equal(large.json().code, 'daily_spend_cap_reached')
  t.equal((await chat(app, admin, ws)).statusCode, 200, 'the next ordinary call is served: the cap has room')
  await sleep(100) // an event would be emitted by now
  t.same(events, [], 'no 100 % at 20 %')

  // a batch job billed at eight calls' cost takes settled spend to the cap
  await app.admission.charge({
    id: `batch-${ws.id}`,
    workspace: { id: ws.id, timezone: 'UTC', caps },
    token: undefined,
    cost: 8 * ONE_CALL,
    at: Date.now()
  })
  for (const deadline = Date.now() + 2_000; events.length < 2 && Date.now() < deadline;) await sleep(20)
  t.same(events.map((event) => event.percent), [50, 100], 'the charge crosses 50 and 100 %')
  t.equal((await chat(app, admin, ws)).statusCode, 429, 'refused at the cap')
  await sleep(100)
  t.equal(events.length, 2, 'no other event')
  const scraped = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  t.equal(valueOf(parseExposition(scraped.body), 'tramontane_spend_threshold_crossings_total',
    { period: 'daily', percent: '100' }), 1, 'counted once in the metric')
})

t.test('a cap lowered below its spend: its first refusal reports the thresholds its spend is past, once', async (t) => {
  const mistral = await startFakeMistral({ completionTokens: COMPLETION })
  t.teardown(() => mistral.close())
  const { app, admin, createWorkspace } = await buildTestApp(t, {}, { mistral })
  const ws = await createWorkspace()
  // the same, with no 100 % among its thresholds: its refusals report its 80 % alone
  const quiet = await createWorkspace()
  const setDaily = (slug: string, micros: number, thresholds: number[]) =>
    admin('PATCH', `/admin/v1/workspaces/${slug}`, { caps: { daily: formatMoney(micros), thresholds } })
  t.equal((await setDaily(ws.slug, 10 * ONE_CALL, [80, 100])).statusCode, 200)
  t.equal((await setDaily(quiet.slug, 10 * ONE_CALL, [80])).statusCode, 200)
  const events: SpendThresholdEvent[] = []
  app.events.on('spend.threshold', (event) => { events.push(event) })
  for (const each of [ws, quiet]) t.equal((await chat(app, admin, each)).statusCode, 200, 'a call: 10 %')

  // the operator lowers both caps below what each has spent: no settlement crosses them
  t.equal((await setDaily(ws.slug, Math.floor(ONE_CALL / 2), [80, 100])).statusCode, 200)
  t.equal((await setDaily(quiet.slug, Math.floor(ONE_CALL / 2), [80])).statusCode, 200)
  for (const each of [ws, quiet, ws, quiet]) {
    const res = await chat(app, admin, each)
    t.same([res.statusCode, res.json().code], [429, 'daily_spend_cap_reached'], 'refused')
  }
  for (const deadline = Date.now() + 2_000; events.length < 3 && Date.now() < deadline;) await sleep(20)
  await sleep(100) // any further event would be emitted by now

  const { day } = calendarPeriods(Date.now(), 'UTC')
  const crossing = (each: typeof ws, percent: number) => ({ type: 'spend.threshold', workspaceId: each.id,
    workspaceSlug: each.slug, scope: 'workspace', tokenId: null, cap: 'daily', periodId: day.id, percent })
  t.match(events, [crossing(ws, 80), crossing(ws, 100), crossing(quiet, 80)],
    '80 and 100 % at the first refusal; the workspace whose thresholds have no 100 %, its 80 %')
  t.equal(events.length, 3, 'each once: the second refusals report nothing')
  const scraped = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  t.equal(valueOf(parseExposition(scraped.body), 'tramontane_spend_threshold_crossings_total',
    { period: 'daily', percent: '100' }), 1, 'counted once in the metric')
})
