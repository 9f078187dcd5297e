import { Counter, Histogram, Registry } from 'prom-client'
import t from 'tap'
import { CounterCells, HistogramCells } from '../../src/metric-cells.js'

// The gateway's own cells for the per-call families must scrape exactly as prom-client's metrics did: the same
// observations into both, the same exposition text out (what Prometheus and the dashboards read).

const BOUNDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28]
const LABELS = ['gen_ai_operation_name', 'gen_ai_request_model', 'status_class', 'workspace'] as const

function pair () {
  const theirs = new Registry()
  const ours = new Registry()
  return {
    theirs,
    ours,
    histogram: {
      theirs: new Histogram({ name: 'demo_seconds', help: 'A demo', labelNames: LABELS, buckets: BOUNDS, registers: [theirs] }),
      ours: new HistogramCells('demo_seconds', 'A demo', LABELS, BOUNDS, ours)
    },
    counter: {
      theirs: new Counter({ name: 'demo_total', help: 'Counted', labelNames: ['workspace', 'code'], registers: [theirs] }),
      ours: new CounterCells('demo_total', 'Counted', ['workspace', 'code'], ours)
    }
  }
}

t.test('the same observations scrape to the same text as prom-client\'s histogram and counter', async (t) => {
  const { theirs, ours, histogram, counter } = pair()
  // every bound exactly (le counts it), between bounds, below the first, above the last, zero; several label sets
  const values = [...BOUNDS, 0, 0.005, 0.015, 0.3, 1.28, 1.2800001, 7, 250, 0.64, 0.02]
  let i = 0
  for (const value of values) {
    for (const [operation, model, status, workspace] of [
      ['chat', 'mistral-small-latest', '2xx', 'acme'], ['chat', 'other', '4xx', 'acme'], ['embeddings', 'mistral-embed', '2xx', 'beta']
    ]) {
      if ((i++ % 3) === 2 && value > 1) continue // label sets with different counts
      histogram.theirs.observe({ gen_ai_operation_name: operation, gen_ai_request_model: model, status_class: status, workspace }, value)
      histogram.ours.observe(value, operation, model, status, workspace)
    }
  }
  for (const [workspace, code, n] of [['acme', '200', 3], ['acme', '429', 1], ['beta', '200', 12.5], ['acme', '200', 0]] as const) {
    counter.theirs.inc({ workspace, code }, n)
    counter.ours.inc(n, workspace, code)
  }
  const [expected, got] = await Promise.all([theirs.metrics(), ours.metrics()])
  t.ok(expected.includes('demo_seconds_bucket{le="0.01",gen_ai_operation_name="chat"'), 'the comparison holds buckets')
  t.equal(got, expected, 'the exposition text, line for line')
  const json = await ours.getMetricsAsJSON()
  const sum = json[0].values.find((v: any) => v.metricName === 'demo_seconds_sum' && v.labels.workspace === 'beta')
  t.match(sum, { labels: { gen_ai_operation_name: 'embeddings', status_class: '2xx' } }, 'JSON: every label on its value')
})

t.test('a value that is not a count or a number is not counted, where prom-client would throw', async (t) => {
  const { ours, histogram, counter } = pair()
  histogram.ours.observe(Number.NaN, 'chat', 'm', '2xx', 'acme')
  histogram.ours.observe(Infinity, 'chat', 'm', '2xx', 'acme')
  counter.ours.inc(-1, 'acme', '200')
  counter.ours.inc(Number.NaN, 'acme', '200')
  counter.ours.inc(2, 'acme', '200')
  const text = await ours.metrics()
  t.notMatch(text, /demo_seconds_count/, 'no histogram series')
  t.match(text, /^demo_total\{workspace="acme",code="200"\} 2$/m, 'the counter has the one count')
  counter.ours.reset()
  t.notMatch(await ours.metrics(), /demo_total\{/, 'reset empties the family')
})
