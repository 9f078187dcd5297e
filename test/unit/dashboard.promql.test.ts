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
