import t from 'tap'
import { loadConfig } from '../../src/config.js'

t.test('defaults', async (t) => {
  const config = loadConfig({})
  t.equal(config.PORT, 8080)
  t.equal(config.MISTRAL_BASE_URL, 'https://api.mistral.ai')
  t.equal(config.DATA_DIR, './data')
  t.equal(config.DATABASE_URL, undefined)
  t.equal(config.REDIS_URL, undefined)
  t.equal(config.BODY_LIMIT_BYTES, 64 * 1024 * 1024)
  t.equal(config.METRICS_WORKSPACE_LABEL_LIMIT, 1000, 'the workspace label takes 1,000 slugs unless told otherwise')
  t.ok(Object.isFrozen(config))
})

t.test('values come from the environment, typed; empty means unset', async (t) => {
  const config = loadConfig({ PORT: '9090', REDIS_URL: '', UPSTREAM_IDLE_TIMEOUT_MS: '1500', UNRELATED: 'x' })
  t.equal(config.PORT, 9090)
  t.equal(config.REDIS_URL, undefined)
  t.equal(config.UPSTREAM_IDLE_TIMEOUT_MS, 1500)
  t.notOk('UNRELATED' in config)
})

t.test('bad values fail at boot', async (t) => {
  t.throws(() => loadConfig({ PORT: 'eighty' }), /PORT/)
  t.throws(() => loadConfig({ TRAMONTANE_ADMIN_TOKEN: 'short' }), /TRAMONTANE_ADMIN_TOKEN/)
  // a Node timer longer than 2^31 - 1 ms fires after 1 ms: "no limit" written as a huge timeout would abort every call
  for (const name of ['UPSTREAM_TOTAL_TIMEOUT_MS', 'SHUTDOWN_GRACE_MS', 'BATCH_POLL_INTERVAL_MS']) {
    t.throws(() => loadConfig({ [name]: '3000000000' }), new RegExp(name), `${name} past a timer's reach`)
    t.equal(loadConfig({ [name]: '2147483647' })[name as 'SHUTDOWN_GRACE_MS'], 2_147_483_647, `${name} at the most`)
  }
  t.throws(() => loadConfig({ METRICS_WORKSPACE_LABEL_LIMIT: '0' }), /METRICS_WORKSPACE_LABEL_LIMIT/, 'no label at all')
  t.throws(() => loadConfig({ METRICS_WORKSPACE_LABEL_LIMIT: '100001' }), /METRICS_WORKSPACE_LABEL_LIMIT/,
    'more series than a Prometheus holds for one family')
  t.equal(loadConfig({ METRICS_WORKSPACE_LABEL_LIMIT: '5000' }).METRICS_WORKSPACE_LABEL_LIMIT, 5000)
})
