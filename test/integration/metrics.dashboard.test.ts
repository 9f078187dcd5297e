import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { stringify } from 'yaml'
import { SCRAPE_HEADERS, TEST_ADMIN_TOKEN, buildTestApp, listen, type TestApp } from '../helpers/app.js'
import { analyse, expressions, recordedNames, rulesFiles } from '../helpers/dashboards.js'
import { parseExposition } from '../helpers/exposition.js'

const chat = (extra: Record<string, unknown> = {}) =>
  ({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Chart me' }], ...extra })

/** Every kind of call the dashboard charts: plain, streamed, embeddings, Mistral's errors and 429, our denials. */
async function mixedTraffic (t: Test, { app, mistral, admin, createWorkspace }: TestApp) {
  const post = async (headers: Record<string, string>, url: string, payload: unknown) =>
    (await app.inject({ method: 'POST', url, headers, payload: payload as object })).statusCode
  const capped = await createWorkspace()
  // a cap one chat passes 1 % of: a threshold crossing, spend against a cap
  const patched = await admin('PATCH', `/admin/v1/workspaces/${capped.slug}`,
    { caps: { daily: '0.001000', thresholds: [1] } })
  t.equal(patched.statusCode, 200, patched.body)
  t.equal(await post(capped.headers, '/v1/chat/completions', chat()), 200)
  t.equal(await post(capped.headers, '/v1/chat/completions', chat({ stream: true })), 200)
  t.equal(await post(capped.headers, '/v1/embeddings', { model: 'mistral-embed', input: ['chart'] }), 200)
  mistral.enqueueError(503, { detail: 'Service Unavailable' })
  t.equal(await post(capped.headers, '/v1/chat/completions', chat()), 503)
  mistral.enqueueRateLimit()
  t.equal(await post(capped.headers, '/v1/chat/completions', chat()), 429)

  const limited = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${limited.slug}`, { limits: { rpm: 1 } })).statusCode, 200)
  t.equal(await post(limited.headers, '/v1/chat/completions', chat()), 200)
  t.equal(await post(limited.headers, '/v1/chat/completions', chat()), 429, 'denied by the gateway')
  await app.usage.flush()
}

t.test('the dashboard and the rules read only series a gateway emits once it has served traffic', async (t) => {
  const gateway = await buildTestApp(t, { UPSTREAM_RETRIES: '0' })
  await mixedTraffic(t, gateway)
  await sleep(1_100) // the scrape-time facts are read at most once a second
  const emitted = new Set(parseExposition((await gateway.app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body)
    .map((sample) => sample.name))
  const recorded = recordedNames()
  for (const { where, expr } of expressions()) {
    for (const metric of analyse(expr).metrics) {
      if (recorded.has(metric)) continue
      t.ok(emitted.has(metric), `${where}: ${metric} has samples`)
    }
  }
})

const prometheus = spawnSync('prometheus', ['--version']).status === 0
t.test('a real Prometheus scraping a gateway has data for every dashboard query and recording rule', {
  skip: prometheus ? false : 'prometheus is not installed (Debian: apt-get install prometheus; .ci/run does)'
}, async (t) => {
  const gateway = await buildTestApp(t, { UPSTREAM_RETRIES: '0' })
  await mixedTraffic(t, gateway)
  const target = new URL(await listen(gateway.app)).host
  const folder = mkdtempSync(join(tmpdir(), 'tmt-prometheus-'))
  t.teardown(() => rmSync(folder, { recursive: true, force: true }))
  writeFileSync(join(folder, 'prometheus.yml'), stringify({
    global: { scrape_interval: '1s', evaluation_interval: '1s' },
    rule_files: rulesFiles(),
    // on the app's own port /metrics takes the admin token, as docs/observability.md tells an operator to configure
    scrape_configs: [{
      job_name: 'tramontane',
      authorization: { type: 'Bearer', credentials: TEST_ADMIN_TOKEN },
      static_configs: [{ targets: [target] }]
    }]
  }))
  const port = await freePort()
  const server = spawn('prometheus', [`--config.file=${join(folder, 'prometheus.yml')}`,
    `--storage.tsdb.path=${join(folder, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' })
  t.teardown(() => { server.kill('SIGKILL') })
  const query = async (expr: string) => {
    const res = await request(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(expr)}`)
    if (res.statusCode !== 200) throw new Error(`${res.statusCode}: ${await res.body.text()}`)
    return ((await res.body.json()) as { data: { result: unknown[] } }).data.result
  }
  // rate() over 1m needs two scrapes of every series, the rules a few evaluations
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    const ready = await query('count_over_time(tramontane_build_info[1m]) >= 4').catch(() => [])
    if (ready.length > 0) break
    await sleep(500)
  }
  for (const { where, expr } of expressions().filter((e) => e.source === 'dashboard')) {
    t.ok((await query(expr)).length > 0, `${where} has data`)
  }
  for (const name of recordedNames()) t.ok((await query(name)).length > 0, `recording rule ${name} has data`)
  // the alerts do not fire on this traffic: Prometheus evaluates each of them without an error
  const res = await request(`http://127.0.0.1:${port}/api/v1/rules`)
  type Rule = { name: string, health: string, lastError?: string }
  const { data } = await res.body.json() as { data: { groups: Array<{ rules: Rule[] }> } }
  const rules = data.groups.flatMap((group) => group.rules)
  t.equal(rules.length, expressions().filter((e) => e.source === 'rules').length, 'every rule is loaded')
  for (const rule of rules) t.equal(rule.health, 'ok', `${rule.name} evaluates ${rule.lastError ?? ''}`)
})

async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}
