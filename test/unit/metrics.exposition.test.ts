import t from 'tap'
import { createMetrics, type MetricsOptions } from '../../src/metrics.js'
import type { ObservedQuota } from '../../src/resilience/key-health.js'
import { parseExposition, valueOf } from '../helpers/exposition.js'
import { restingMetrics } from '../helpers/metrics-options.js'

// What src/metrics.ts prints for given facts, without a gateway: the labels and values the dashboard and alerts read.

const KEY = '3f0c1d2e-0000-4000-8000-000000000001'

function metrics (overrides: Partial<MetricsOptions> = {}) {
  return createMetrics({
    ...restingMetrics,
    facts: {
      read: async () => ({
        spend: [], keysByStatus: { active: 1, invalid: 0 }, keyNames: new Map([[KEY, { workspace: 'acme', key: 'default' }]])
      })
    },
    ...overrides
  })
}

const chat = { workspace: 'acme', operation: 'chat', status: 200, durationMs: 1500, upstreamMs: 1400 }

t.test('a model priced by the operator\'s catch-all row (`*`) is labelled other', async (t) => {
  const m = metrics()
  m.call({ ...chat, model: '*', inputTokens: 10, outputTokens: 5, billedMicros: 7 })
  m.call({ ...chat, model: undefined })
  m.call({ ...chat, model: 'mistral-small-2603' })
  const samples = parseExposition(await m.scrape())
  t.equal(valueOf(samples, 'tramontane_requests_total', { model: 'other' }), 2, 'both unknown models are other')
  t.equal(valueOf(samples, 'tramontane_requests_total', { model: 'mistral-small-2603' }), 1)
  t.equal(valueOf(samples, 'tramontane_spend_micros_total', { model: 'other' }), 7)
  t.equal(valueOf(samples, 'gen_ai_client_operation_duration_seconds_count', { gen_ai_request_model: 'other' }), 2)
  t.notOk(samples.some((s) => Object.values(s.labels).includes('*')), 'no label says *')
})

t.test('Mistral\'s part of a call says whether it streamed; the time to first token is a stream\'s only', async (t) => {
  const m = metrics()
  m.call({ ...chat, model: 'm', upstreamMs: 240_000, ttftMs: 450 })
  m.call({ ...chat, model: 'm', upstreamMs: 900 })
  m.call({ ...chat, model: 'm', upstreamMs: 700, ttftMs: null })
  const samples = parseExposition(await m.scrape())
  const server = (stream: string, le: string) => valueOf(samples, 'gen_ai_server_request_duration_seconds_bucket',
    { gen_ai_operation_name: 'chat', gen_ai_request_model: 'm', stream, le })
  t.equal(server('true', '81.92'), 0, 'the four-minute stream is past every bucket')
  t.equal(server('true', '+Inf'), 1)
  t.equal(server('false', '1.28'), 2, 'the two answers in one piece')
  t.equal(server('false', '+Inf'), 2)
  t.equal(valueOf(samples, 'gen_ai_server_time_to_first_token_seconds_count', { gen_ai_request_model: 'm' }), 1)
  t.equal(valueOf(samples, 'gen_ai_server_time_to_first_token_seconds_sum', { gen_ai_request_model: 'm' }), 0.45)
})

t.test('a call answered before the meter counts once, with what is known of it', async (t) => {
  const m = metrics()
  m.unmetered(undefined, undefined, 401)
  m.unmetered(undefined, undefined, 503)
  m.unmetered('acme', 'chat', 503)
  m.unmetered('acme', 'models', 400)
  const samples = parseExposition(await m.scrape())
  const requests = (labels: Record<string, string>) => valueOf(samples, 'tramontane_requests_total', labels)
  t.equal(requests({ workspace: '__none__', operation: 'unknown', model: 'other', status_class: '4xx' }), 1)
  t.equal(requests({ workspace: '__none__', operation: 'unknown', model: 'other', status_class: '5xx' }), 1)
  t.equal(requests({ workspace: 'acme', operation: 'chat', model: 'other', status_class: '5xx' }), 1)
  t.equal(requests({ workspace: 'acme', operation: 'models', model: 'other', status_class: '4xx' }), 1)
  t.notOk(samples.some((s) => s.name.startsWith('gen_ai_')), 'in no histogram')
  t.equal(valueOf(samples, 'tramontane_metric_label_overflow_total'), 0)

  const unlabelled = metrics({ workspaceLabel: false })
  unlabelled.unmetered(undefined, undefined, 503)
  unlabelled.unmetered('acme', 'chat', 503)
  t.equal(valueOf(parseExposition(await unlabelled.scrape()), 'tramontane_requests_total',
    { workspace: '', operation: 'unknown', status_class: '5xx' }), 1, 'METRICS_WORKSPACE_LABEL=false: no workspace, known or not')
  unlabelled.denied('acme', 'daily_spend_cap_reached')
  t.equal(valueOf(parseExposition(await unlabelled.scrape()), 'tramontane_rate_limit_denials_total',
    { workspace: 'acme', limit: 'daily_spend_cap_reached' }), 1,
    'a refusal still names its workspace: the cap alert says which client is blocked')
})

t.test('the spool\'s oldest record\'s age is read at scrape time', async (t) => {
  let age = 0
  const m = metrics({ spoolDepth: () => 3, spoolOldestAge: () => age })
  t.equal(valueOf(parseExposition(await m.scrape()), 'tramontane_usage_spool_oldest_age_seconds'), 0)
  age = 93.5
  const samples = parseExposition(await m.scrape())
  t.equal(valueOf(samples, 'tramontane_usage_spool_oldest_age_seconds'), 93.5)
  t.equal(valueOf(samples, 'tramontane_usage_spool_depth'), 3, 'the depth stays, for the charts')
})

t.test('a quota is shown while its window holds: a minute\'s for a minute, a month\'s within its month', async (t) => {
  const headers = {
    'x-ratelimit-remaining-tokens-minute': '4000', 'x-ratelimit-limit-tokens-minute': '5000',
    'x-ratelimitbysize-remaining-month': '900', 'x-ratelimitbysize-limit-month': '1000',
    'ratelimitbysize-remaining': '40', 'ratelimitbysize-limit': '50'
  }
  let observed: ObservedQuota[] = []
  const m = metrics({ quotas: () => observed })
  const windows = async () => {
    const samples = parseExposition(await m.scrape()).filter((s) => s.name === 'tramontane_mistral_quota_remaining')
    return Object.fromEntries(samples.map((s) => [s.labels.window, s.value]))
  }
  const now = Date.now()
  observed = [{ workspaceId: 'w', keyId: KEY, observedAt: now - 5_000, headers }]
  t.same(await windows(), { minute: 4000, month: 900, unspecified: 40 }, 'seen 5 s ago: every window')
  observed = [{ workspaceId: 'w', keyId: KEY, observedAt: now - 61_000, headers }]
  const month = new Date(now - 61_000).getUTCMonth() === new Date(now).getUTCMonth()
  t.same(await windows(), month ? { month: 900 } : {}, 'seen 61 s ago: the minute windows have reset since')
  const lastMonth = new Date(now)
  lastMonth.setUTCDate(0) // the last day of the month before
  observed = [{ workspaceId: 'w', keyId: KEY, observedAt: lastMonth.getTime(), headers }]
  t.same(await windows(), {}, 'seen last month: nothing')
  const limits = parseExposition(await m.scrape()).filter((s) => s.name === 'tramontane_mistral_quota_limit')
  t.same(limits, [], 'nor its limits')
})

t.test('spend is labelled with its workspace\'s currency, with the workspace label on or off', async (t) => {
  const m = metrics()
  m.call({ ...chat, model: 'm', billedMicros: 5, currency: 'EUR' })
  m.call({ ...chat, workspace: 'beta', model: 'm', billedMicros: 7, currency: 'USD' })
  m.billed({ workspace: 'acme', operation: 'batch', model: 'm', status: 200, inputTokens: 1, outputTokens: 1,
    billedMicros: 11, currency: 'EUR' })
  const text = await m.scrape()
  t.match(text, /tramontane_spend_micros_total\{[^}]*currency="EUR"[^}]*\} 5\n/, 'the text names the currency')
  const samples = parseExposition(text)
  const spend = (labels: Record<string, string>) => valueOf(samples, 'tramontane_spend_micros_total', labels)
  t.equal(spend({ workspace: 'acme', operation: 'chat', currency: 'EUR' }), 5)
  t.equal(spend({ workspace: 'beta', operation: 'chat', currency: 'USD' }), 7)
  t.equal(spend({ workspace: 'acme', operation: 'batch', currency: 'EUR' }), 11, 'a batch job\'s too')

  // METRICS_WORKSPACE_LABEL=false: the workspaces share one series per currency, never one for all money
  const unlabelled = metrics({ workspaceLabel: false })
  unlabelled.call({ ...chat, model: 'm', billedMicros: 5, currency: 'EUR' })
  unlabelled.call({ ...chat, workspace: 'beta', model: 'm', billedMicros: 7, currency: 'USD' })
  unlabelled.call({ ...chat, workspace: 'gamma', model: 'm', billedMicros: 2, currency: 'EUR' })
  const bare = parseExposition(await unlabelled.scrape())
  t.equal(valueOf(bare, 'tramontane_spend_micros_total', { workspace: '', currency: 'EUR' }), 7)
  t.equal(valueOf(bare, 'tramontane_spend_micros_total', { workspace: '', currency: 'USD' }), 7)
})

t.test('spend and caps read at scrape time carry the currency, and so does `__other__`', async (t) => {
  // 1,000 workspaces keep their label; the two after them are `__other__`, one series per currency
  const spend = Array.from({ length: 1_002 }, (_, i) => ({
    workspace: `w${i}`,
    currency: i % 2 === 0 ? 'EUR' : 'USD',
    spent: { daily: 10, monthly: 100 },
    caps: { daily: 1_000 }
  }))
  for (const workspaceLabel of [true, false]) {
    const m = metrics({
      workspaceLabel,
      facts: { read: async () => ({ spend, keysByStatus: { active: 0, invalid: 0 }, keyNames: new Map() }) }
    })
    const text = await m.scrape()
    t.match(text, /tramontane_workspace_spend_micros\{workspace="w1",currency="USD",period="daily"\} 10\n/,
      `workspace label ${workspaceLabel}: the exposition text names the currency`)
    const samples = parseExposition(text)
    t.equal(valueOf(samples, 'tramontane_workspace_cap_micros', { workspace: 'w0', currency: 'EUR', period: 'daily' }),
      1_000)
    t.equal(valueOf(samples, 'tramontane_workspace_spend_micros',
      { workspace: '__other__', currency: 'EUR', period: 'monthly' }), 100, 'w1000 alone')
    t.equal(valueOf(samples, 'tramontane_workspace_spend_micros',
      { workspace: '__other__', currency: 'USD', period: 'monthly' }), 100, 'w1001 alone')
  }
})
