import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { createMetrics, type CallFacts } from '../../src/metrics.js'
import { DASHBOARD } from '../helpers/dashboards.js'
import { parseExposition } from '../helpers/exposition.js'
import { restingMetrics } from '../helpers/metrics-options.js'

// The "Gateway overhead" panel's mean, run by Prometheus' own engine (promtool) on the series a gateway exposes after
// known calls: it must be the gateway's part of the calls Mistral answered, whatever else the gateway answered.

const promtool = spawnSync('promtool', ['--version']).status === 0
const skip = promtool ? false : 'promtool is not installed (Debian: apt-get install prometheus; .ci/run does)'

// durations in binary fractions of a second: each sum is exact, so the mean is too
const chat = { workspace: 'acme', operation: 'chat', model: 'm' }
const answered: CallFacts = { ...chat, status: 200, durationMs: 1000, upstreamMs: 992.1875 }
const OVERHEAD = 0.0078125
// the gateway answered these without Mistral's: all keys cooling (429 at once), or Mistral never answered (timeouts)
const refused: CallFacts = { ...chat, status: 429, durationMs: 2 }
const timedOut: CallFacts = { ...chat, status: 504, durationMs: 30_000 }

function overheadMeanQuery (): string {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8'))
  const panel = dashboard.panels.find((p: { title: string }) => p.title.startsWith('Gateway overhead'))
  if (!panel) throw new Error('no Gateway overhead panel')
  return (panel.targets[0].expr as string)
    .replace(/\$__rate_interval/g, '5m')
    .replace(/\$(workspace|model)\b/g, '.*')
}

t.test('the overhead panel\'s mean is the gateway\'s part of the calls Mistral answered', { skip }, async (t) => {
  const metrics = createMetrics({ ...restingMetrics, facts: { read: async () => { throw new Error('not read') } } })
  for (let i = 0; i < 10; i++) {
    metrics.call(answered)
    metrics.call(refused)
  }
  metrics.call(timedOut)
  metrics.call(timedOut)
  // the same calls every minute for ten minutes
  const families = metrics.registry.getMetricsAsArray().filter((m) => /^(gen_ai|tramontane)_/.test(m.name))
  const text = (await Promise.all(families.map((m) => metrics.registry.getSingleMetricAsString(m.name)))).join('\n')
  const inputSeries = parseExposition(text).map(({ name, labels, value }) => ({
    series: `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',')}}`,
    values: `0+${value}x10`
  }))

  const folder = mkdtempSync(join(tmpdir(), 'tmt-overhead-'))
  t.teardown(() => rmSync(folder, { recursive: true, force: true }))
  const file = join(folder, 'overhead.test.yml')
  writeFileSync(file, stringify({
    rule_files: [],
    evaluation_interval: '1m',
    tests: [{
      interval: '1m',
      input_series: inputSeries,
      promql_expr_test: [
        { expr: overheadMeanQuery(), eval_time: '10m', exp_samples: [{ labels: '{}', value: OVERHEAD }] }
      ]
    }]
  }))
  const run = spawnSync('promtool', ['test', 'rules', file], { encoding: 'utf8' })
  t.equal(run.status, 0, run.stdout + run.stderr)
})
