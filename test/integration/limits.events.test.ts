import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { SpendThresholdEvent } from '../../src/events.js'
import { calendarPeriods } from '../../src/limits/periods.js'
import { costOf } from '../../src/pricing/cost.js'
import { completePrices, DEFAULT_PRICES } from '../../src/pricing/default-prices.js'
import { formatMoney } from '../../src/pricing/money.js'
import { SCRAPE_HEADERS, buildTestApp } from '../helpers/app.js'
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

t.test('a cap\'s first refusal is its 100 % crossing, which settled spend never reaches', async (t) => {
  const mistral = await startFakeMistral({ completionTokens: COMPLETION })
  t.teardown(() => mistral.close())
  const { app, admin, createWorkspace } = await buildTestApp(t, {}, { mistral })
  // two and a half calls' worth: the third is clamped to what is left, the next refused
  const ws = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { caps: { daily: formatMoney(Math.floor(2.5 * ONE_CALL)), thresholds: [80, 100] } })).statusCode, 200)
  // the same, with no 100 % among its thresholds: its refusals report nothing
  const quiet = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${quiet.slug}`,
    { caps: { daily: formatMoney(Math.floor(2.5 * ONE_CALL)), thresholds: [80] } })).statusCode, 200)

  const events: SpendThresholdEvent[] = []
  app.events.on('spend.threshold', (event) => { events.push(event) })
  const daily = async (slug: string) =>
    (await admin('GET', `/admin/v1/workspaces/${slug}/limits`)).json.workspace.caps.daily
  /** calls one at a time, each settled before the next, until the cap refuses one; the statuses */
  async function callUntilRefused (headers: Record<string, string>, slug: string) {
    const statuses: number[] = []
    while (statuses.length < 10 && statuses.at(-1) !== 429) {
      const res = await app.inject({
        method: 'POST',
        url: '/v1/chat/completions',
        headers: { ...headers, 'content-type': 'application/json' },
        payload: {
          model: 'mistral-small-latest', messages: [{ role: 'user', content: PROMPT }], max_tokens: COMPLETION
        }
      })
      statuses.push(res.statusCode)
      if (res.statusCode === 429) t.equal(res.json().code, 'daily_spend_cap_reached')
      for (const deadline = Date.now() + 5_000; Date.now() < deadline; await sleep(20)) {
        if ((await daily(slug)).reserved === formatMoney(0)) break
      }
    }
    return statuses
  }
  const statuses = await callUntilRefused(ws.headers, ws.slug)
  t.equal(statuses.at(-1), 429, `refused at last: ${statuses.join(', ')}`)
  const { settled, cap } = await daily(ws.slug)
  t.ok(Number(settled) < Number(cap), `settled spend stays under the cap: ${settled} of ${cap}`)
  t.equal((await callUntilRefused(ws.headers, ws.slug)).length, 1, 'refused again')
  t.same(await callUntilRefused(quiet.headers, quiet.slug), statuses, 'the other workspace, refused the same way')
  for (const deadline = Date.now() + 2_000; events.length < 4 && Date.now() < deadline;) await sleep(20)
  await sleep(100) // any further event would be emitted by now

  const { day } = calendarPeriods(Date.now(), 'UTC')
  const of = (slug: string) => events.filter((event) => event.workspaceSlug === slug).map((event) => event.percent)
  t.same(of(ws.slug), [80, 100], '100 % once, at the first refusal')
  t.match(events.find((event) => event.percent === 100),
    { type: 'spend.threshold', workspaceId: ws.id, scope: 'workspace', tokenId: null, cap: 'daily', periodId: day.id })
  t.same(of(quiet.slug), [80], 'no 100 % where the thresholds have none')
  const scraped = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  const crossings = parseExposition(scraped.body)
  t.equal(valueOf(crossings, 'tramontane_spend_threshold_crossings_total', { period: 'daily', percent: '100' }), 1,
    'counted once in the metric')
})
