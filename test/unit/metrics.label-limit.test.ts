import t from 'tap'
import { createMetrics } from '../../src/metrics.js'
import type { ObservedQuota } from '../../src/resilience/key-health.js'
import type { WorkspaceSpend } from '../../src/scrape-facts.js'
import { parseExposition, valueOf } from '../helpers/exposition.js'
import { restingMetrics } from '../helpers/metrics-options.js'

// METRICS_WORKSPACE_LABEL_LIMIT bounds every family that names a workspace: the per-call ones, the refusals, the
// scrape-time spend and caps, and how many keys have their Mistral quota charted

const keyId = (i: number) => `3f0c1d2e-0000-4000-8000-00000000000${i}`
const spend = (workspace: string): WorkspaceSpend =>
  ({ workspace, currency: 'EUR', spent: { monthly: 10 }, caps: { monthly: 100 } })
const call = { workspace: 'a', operation: 'chat', model: 'm', status: 200, durationMs: 1 }
const noFacts = { spend: [], keysByStatus: { active: 0, invalid: 0 }, keyNames: new Map() }
const observed: ObservedQuota[] = [1, 2, 3].map((i) => ({
  workspaceId: `w${i}`,
  keyId: keyId(i),
  observedAt: Date.now(),
  headers: { 'x-ratelimit-remaining-tokens-minute': '4000' }
}))

t.test('a limit of 2: the third workspace, its spend and its key are past it', async (t) => {
  const m = createMetrics({
    ...restingMetrics,
    workspaceLabelLimit: 2,
    quotas: () => observed,
    facts: {
      read: async () => ({
        ...noFacts,
        spend: ['a', 'b', 'c'].map(spend),
        keyNames: new Map([1, 2, 3].map((i) => [keyId(i), { workspace: `w${i}`, key: 'default' }]))
      })
    }
  })
  for (const workspace of ['a', 'b', 'c', 'a']) m.call({ ...call, workspace })
  m.denied('c', 'rpm')
  const samples = parseExposition(await m.scrape())
  const labels = (name: string) => samples.filter((s) => s.name === name).map((s) => s.labels.workspace).sort()

  t.same(labels('tramontane_requests_total'), ['__other__', 'a', 'b'], 'two slugs, then __other__')
  t.equal(valueOf(samples, 'tramontane_requests_total', { workspace: 'a' }), 2)
  t.equal(valueOf(samples, 'tramontane_requests_total', { workspace: '__other__' }), 1)
  t.equal(valueOf(samples, 'tramontane_rate_limit_denials_total', { workspace: '__other__', limit: 'rpm' }), 1,
    'a refusal past the limit too')
  t.equal(valueOf(samples, 'tramontane_metric_label_overflow_total'), 2, 'the call and the refusal overflowed')
  t.same(labels('tramontane_workspace_spend_micros'), ['__other__', 'a', 'b'], 'scrape-time spend alike')
  t.same(labels('tramontane_workspace_cap_micros'), ['a', 'b'], 'a cap past the limit is not summed')
  t.same(labels('tramontane_mistral_quota_remaining'), ['w1', 'w2'], 'as many keys charted as the limit')
})

t.test('unset, the limit is 1,000', async (t) => {
  const m = createMetrics({ ...restingMetrics, facts: { read: async () => ({ ...noFacts, spend: [] }) } })
  for (let i = 0; i <= 1000; i++) m.call({ ...call, workspace: `w${i}` })
  const samples = parseExposition(await m.scrape())
  t.equal(samples.filter((s) => s.name === 'tramontane_requests_total').length, 1001, '1,000 slugs and __other__')
  t.equal(valueOf(samples, 'tramontane_metric_label_overflow_total'), 1)
})
