import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parser } from '@prometheus-io/lezer-promql'
import { parse as parseYaml, stringify } from 'yaml'
import { createMetrics } from '../../src/metrics.js'
import { DEPLOY, analyse, expressions, recordedNames, rulesFiles } from '../helpers/dashboards.js'
import { restingMetrics } from '../helpers/metrics-options.js'

// the families this app defines, from its own registry (nothing is scraped here: no I/O)
const defined = createMetrics({
  ...restingMetrics,
  facts: { read: async () => { throw new Error('not scraped') } }
}).registry.getMetricsAsArray().map((metric) => ({ name: metric.name, type: String(metric.type) }))

/** The series names a family exposes: a histogram's _bucket, _sum and _count. */
function seriesOf ({ name, type }: { name: string, type: string }): string[] {
  return type === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name]
}

const all = expressions()
const promtool = spawnSync('promtool', ['--version']).status === 0

t.test('every expression of the dashboard and the rules parses as PromQL', async (t) => {
  t.ok(all.filter((e) => e.source === 'dashboard').length >= 30, 'the dashboard has its panels')
  t.ok(all.filter((e) => e.source === 'rules').length >= 10, 'the rules are there')
  for (const { where, expr } of all) t.same(analyse(expr).errors, [], where)
})

t.test('every expression names only series the app defines (or the recording rules)', async (t) => {
  const known = new Set([...defined.flatMap(seriesOf), ...recordedNames()])
  for (const { where, expr, source } of all) {
    const metrics = [...analyse(expr).metrics]
    t.ok(metrics.length > 0, `${where} reads a metric`)
    for (const metric of metrics) {
      t.ok(known.has(metric), `${where}: ${metric} is a series of the app`)
      // the dashboard charts what the app emits; the rules' own names are for the alerts
      if (source === 'dashboard') t.notOk(recordedNames().has(metric), `${where}: no recording rule in the dashboard`)
    }
  }
})

// money is in each workspace's own currency: an amount of euros added to one of dollars means nothing
const MONEY = new Set(
  ['tramontane_spend_micros_total', 'tramontane_workspace_spend_micros', 'tramontane_workspace_cap_micros'])

/** The aggregations that add amounts up (sum, avg) over a money series, and the labels each groups by. */
function moneyAdded (expr: string): Array<{ text: string, by: string[] }> {
  const found: Array<{ text: string, by: string[] }> = []
  parser.parse(expr).iterate({
    enter (node) {
      if (node.name !== 'AggregateExpr') return
      const op = node.node.getChild('AggregateOp')
      if (!op || !['sum', 'avg'].includes(expr.slice(op.from, op.to))) return
      if (![...analyse(expr.slice(node.from, node.to)).metrics].some((metric) => MONEY.has(metric))) return
      const modifier = node.node.getChild('AggregateModifier')
      const by = modifier?.getChild('By') ? modifier.getChild('GroupingLabels')?.getChildren('LabelName') ?? [] : []
      found.push({ text: expr.slice(node.from, node.to), by: by.map((label) => expr.slice(label.from, label.to)) })
    }
  })
  return found
}

t.test('money is added up per currency, never across currencies', async (t) => {
  const sums = all.flatMap(({ where, expr }) => moneyAdded(expr).map((sum) => ({ where, ...sum })))
  t.ok(sums.length >= 3, `${sums.length} sums of money`)
  for (const { where, text, by } of sums) t.ok(by.includes('currency'), `${where}: ${text} is by currency`)
})

const histograms = defined.filter((family) => family.type === 'histogram').map((family) => family.name)

/**
 * Why a query reading a histogram's `_sum` is not that histogram's mean, or undefined when it is: the whole query
 * divides the sum by the `_count` of the same family, selectors and window. Any other count, or a difference of two
 * means, divides one set of calls by another (the overhead panel once took the client's mean duration minus
 * Mistral's, whose calls are not the same: the client's include those Mistral never answered).
 */
function notOwnMean (expr: string): string | undefined {
  const read = [...analyse(expr).metrics].filter((metric) => histograms.some((name) => metric === `${name}_sum`))
  if (read.length === 0) return undefined
  if (read.length > 1) return `it reads the sums of ${read.join(' and ')}`
  const [sum] = read
  const count = sum.replace(/_sum$/, '_count')
  const division = parser.parse(expr).topNode.firstChild
  const numerator = division?.firstChild
  const operator = numerator?.nextSibling
  const denominator = division?.lastChild
  if (division?.name !== 'BinaryExpr' || operator?.name !== 'Div' || !numerator || !denominator) {
    return `${sum} is not divided by a count as the whole query`
  }
  const own = expr.slice(numerator.from, numerator.to).replaceAll(sum, count)
  const by = expr.slice(denominator.from, denominator.to)
  return own === by ? undefined : `${sum} is divided by ${by}, not by ${own}`
}

t.test('a histogram\'s mean divides its sum by the count of the same calls', async (t) => {
  const means = all.filter(({ expr }) => [...analyse(expr).metrics].some((metric) => metric.endsWith('_sum')))
  t.ok(means.length >= 1, `${means.length} queries read a histogram's sum`)
  for (const { where, expr } of means) t.equal(notOwnMean(expr), undefined, where)
  // the ways a mean has mixed or could mix call sets, each refused
  const mean = (family: string, selector = '') =>
    `sum(rate(${family}_sum${selector}[1m])) / sum(rate(${family}_count${selector}[1m]))`
  const client = 'gen_ai_client_operation_duration_seconds'
  const server = 'gen_ai_server_request_duration_seconds'
  const overhead = 'tramontane_gateway_overhead_seconds'
  t.ok(notOwnMean(`${mean(client)} - ${mean(server)}`), 'a difference of two histograms\' means')
  t.ok(notOwnMean(`sum(rate(${overhead}_sum[1m])) / sum(rate(${client}_count[1m]))`), 'another family\'s count')
  t.ok(notOwnMean(`sum(rate(${overhead}_sum[1m])) / sum(rate(tramontane_requests_total[1m]))`), 'a counter of calls')
  t.ok(notOwnMean(`sum(rate(${overhead}_sum{operation="chat"}[1m])) / sum(rate(${overhead}_count[1m]))`),
    'the count of more calls than the sum')
  t.ok(notOwnMean(`sum(rate(${overhead}_sum[1m])) / sum(rate(${overhead}_count[5m]))`), 'another window')
  t.equal(notOwnMean(mean(overhead, '{operation="chat"}')), undefined, 'its own count, as filtered')
})

t.test('every gateway family is charted on the dashboard', async (t) => {
  const charted = new Set(all.filter((e) => e.source === 'dashboard').flatMap((e) => [...analyse(e.expr).metrics]))
  const own = defined.filter((family) => /^(tramontane|gen_ai)_/.test(family.name))
  t.ok(own.length >= 20, `${own.length} families`)
  for (const family of own) {
    t.ok(seriesOf(family).some((series) => charted.has(series)), `${family.name} is charted`)
  }
})

t.test('the dashboard takes its data source and filters from variables', async (t) => {
  const dashboard = JSON.parse(readFileSync(join(DEPLOY, 'grafana', 'dashboards', 'tramontane.json'), 'utf8'))
  const variables = Object.fromEntries(dashboard.templating.list.map((v: { name: string }) => [v.name, v]))
  t.equal(variables.DS_PROMETHEUS?.type, 'datasource')
  t.equal(variables.DS_PROMETHEUS?.query, 'prometheus')
  t.equal(variables.workspace?.type, 'query')
  t.equal(variables.model?.type, 'query')
  const ids = new Set()
  for (const panel of dashboard.panels) {
    t.notOk(ids.has(panel.id), `panel id ${panel.id} is unique`)
    ids.add(panel.id)
    if (panel.type === 'row') continue
    t.equal(panel.datasource?.uid, '${DS_PROMETHEUS}', `${panel.title} uses the DS_PROMETHEUS variable`)
    for (const target of panel.targets) t.equal(target.datasource?.uid, '${DS_PROMETHEUS}')
  }
  for (const title of ['Overview', 'Usage by workspace and model', 'Spend vs cap', 'Rate limiting: ours vs Mistral\'s',
    'Latency, time to first token, gateway overhead', 'Errors and stream terminations', 'Runtime']) {
    const rows = dashboard.panels.filter((panel: { type: string }) => panel.type === 'row')
    t.ok(rows.some((row: { title: string }) => row.title === title), title)
  }
})

t.test('the alerts cover caps at 80 % and 100 %, Mistral 429s, errors, p99 latency and the spool', async (t) => {
  const alerts = rulesFiles().flatMap((file) => parseYaml(readFileSync(file, 'utf8')).groups)
    .flatMap((group: { rules: Array<{ alert?: string, expr: string }> }) => group.rules).filter((rule) => rule.alert)
  const expr = (name: string) => alerts.find((rule) => rule.alert === name)?.expr ?? ''
  t.match(expr('TramontaneWorkspaceCapNear'), />= 0\.8/)
  t.match(expr('TramontaneWorkspaceCapReached'), /_spend_cap_reached/)
  t.match(expr('TramontaneUpstreamRateLimited'), /upstream_429/)
  t.match(expr('TramontaneErrorRatio'), /error_ratio/)
  t.match(expr('TramontaneSlowCalls'), /unstreamed_call_duration_seconds:p99/)
  t.match(expr('TramontaneSlowFirstToken'), /time_to_first_token_seconds:p99/)
  t.match(expr('TramontaneUsageSpoolNotDraining'), /tramontane_usage_spool_oldest_age_seconds/)
})

t.test('docker-compose scrapes the port the gateway serves its metrics on', async (t) => {
  const compose = parseYaml(readFileSync(join(DEPLOY, '..', 'docker-compose.yml'), 'utf8'))
  const prometheus = parseYaml(readFileSync(join(DEPLOY, 'prometheus', 'prometheus.yml'), 'utf8'))
  const port = compose.services.tramontane.environment.METRICS_PORT
  t.same(prometheus.scrape_configs[0].static_configs[0].targets, [`tramontane:${port}`])
  const published = compose.services.tramontane.ports as string[]
  t.notOk(published.some((p) => p.includes(String(port))), 'the metrics port is not published')
  t.match(compose.services.tramontane.environment.TRAMONTANE_ADMIN_TOKEN, /:-\}$/, 'a bare `docker compose up` starts')
  t.ok(compose.services.prometheus.volumes.includes('./deploy/prometheus:/etc/prometheus:ro'))
  t.ok(compose.services.grafana.volumes.includes('./deploy/grafana/provisioning:/etc/grafana/provisioning:ro'))
})

const skipPromtool = promtool ? false : 'promtool is not installed (Debian: apt-get install prometheus; .ci/run does)'
t.test('promtool accepts the config, the rules and every dashboard expression', { skip: skipPromtool }, async (t) => {
  execFileSync('promtool', ['check', 'config', join(DEPLOY, 'prometheus', 'prometheus.yml')], { stdio: 'pipe' })
  t.pass('promtool check config')
  execFileSync('promtool', ['check', 'rules', ...rulesFiles()], { stdio: 'pipe' })
  t.pass('promtool check rules')
  // Prometheus' own parser on the dashboard's queries too: each one as a recording rule
  const folder = mkdtempSync(join(tmpdir(), 'tmt-dashboard-'))
  t.teardown(() => rmSync(folder, { recursive: true, force: true }))
  const rules = all.filter((e) => e.source === 'dashboard')
    .map((e, i) => ({ record: `dashboard:query_${i}`, expr: e.expr }))
  writeFileSync(join(folder, 'dashboard.yml'), stringify({ groups: [{ name: 'dashboard', rules }] }))
  const check = spawnSync('promtool', ['check', 'rules', join(folder, 'dashboard.yml')], { encoding: 'utf8' })
  t.equal(check.status, 0, check.stderr || check.stdout)
})
