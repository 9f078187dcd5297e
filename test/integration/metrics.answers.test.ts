import t from 'tap'
import { SCRAPE_HEADERS, TEST_DATABASE_URL, TEST_REDIS_URL, buildTestApp } from '../helpers/app.js'
import { parseExposition, valueOf, type Sample } from '../helpers/exposition.js'
import { proxiedDatabase, startTcpProxy } from '../helpers/tcp-proxy.js'

// tramontane_requests_total holds every answer of /v1 and /v2 once: the calls the meter settles, and those answered
// before it (no token, an unknown route, a broken body, admission refused or unable to check). With Redis or
// PostgreSQL away the gateway's own 503s are most of the answers: the error ratio must see them.

const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Count me' }] }

t.test('every answer of /v1 counts once in the requests counter, the gateway\'s own 503s included', async (t) => {
  const database = await proxiedDatabase(t, TEST_DATABASE_URL)
  const redisUrl = new URL(TEST_REDIS_URL)
  const redis = await startTcpProxy(Number(redisUrl.port || 6379), redisUrl.hostname)
  t.teardown(() => redis.close())
  const { app, admin, createWorkspace } = await buildTestApp(t, {
    DATABASE_URL: database.url, REDIS_URL: `redis://127.0.0.1:${redis.port}`, REDIS_COMMAND_TIMEOUT_MS: '200'
  })
  const ws = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { monthly: '100.00' } })).statusCode, 200)
  // a second token, never used: this replica has not read it
  const unread = await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'unread' })
  t.equal(unread.statusCode, 201)

  const answers: number[] = []
  const call = async (options: { method?: 'GET' | 'POST', url?: string, token?: string, payload?: unknown,
    headers?: Record<string, string> }) => {
    const res = await app.inject({
      method: options.method ?? 'POST',
      url: options.url ?? '/v1/chat/completions',
      headers: { authorization: `Bearer ${options.token ?? ws.token}`, ...options.headers },
      payload: (options.payload ?? chat) as object
    })
    answers.push(res.statusCode)
    return res
  }

  t.equal((await call({})).statusCode, 200, 'a metered call')
  t.equal((await call({ method: 'GET', url: '/v1/models', payload: '' })).statusCode, 200, 'an unmetered one')
  t.equal((await call({ token: 'tmt_not_a_token_of_this_gateway_at_all_000000' })).statusCode, 401, 'no such token')
  t.equal((await call({ method: 'GET', url: '/v1/no/such/route', payload: '' })).statusCode, 404, 'no such route')
  t.equal((await call({ payload: '{"model": ', headers: { 'content-type': 'application/json' } })).statusCode, 400,
    'a body that is not JSON')

  redis.cut()
  const refused = await call({})
  t.equal(refused.statusCode, 503)
  t.equal(refused.json().code, 'budget_unavailable', 'Redis away: the capped call is refused')
  redis.restore()

  database.proxy.cut()
  const unchecked = await call({ token: unread.json.token })
  t.equal(unchecked.statusCode, 503)
  t.equal(unchecked.json().code, 'authentication_unavailable', 'PostgreSQL away: the unread token cannot be checked')
  database.proxy.restore()

  const samples = parseExposition((await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body)
  const requests = samples.filter((s) => s.name === 'tramontane_requests_total')
  const count = (labels: Record<string, string>) => valueOf(requests, 'tramontane_requests_total', labels)
  t.equal(count({ workspace: ws.slug, operation: 'chat', model: 'mistral-small-2603', status_class: '2xx' }), 1,
    'the metered call, once')
  t.equal(count({ workspace: ws.slug, operation: 'models', model: 'other', status_class: '2xx' }), 1,
    'the unmetered call, once')
  t.equal(count({ workspace: '__none__', operation: 'unknown', model: 'other', status_class: '4xx' }), 2,
    'the unknown token and the unknown route: answered before the call was classified, no workspace')
  t.equal(count({ workspace: ws.slug, operation: 'chat', model: 'other', status_class: '4xx' }), 1, 'the broken body')
  t.equal(count({ workspace: ws.slug, operation: 'chat', model: 'other', status_class: '5xx' }), 1,
    'the 503 budget_unavailable')
  t.equal(count({ workspace: '__none__', operation: 'unknown', model: 'other', status_class: '5xx' }), 1,
    'the 503 authentication_unavailable')
  t.equal(sum(requests), answers.length, `${answers.length} answers, each counted once`)
  const fivexx = sum(requests.filter((s) => s.labels.status_class === '5xx'))
  t.equal(fivexx, answers.filter((status) => status >= 500).length, 'the error ratio\'s numerator: both 503s')
  t.equal(valueOf(samples, 'tramontane_rate_limit_denials_total', { workspace: ws.slug, limit: 'budget_unavailable' }), 1,
    'the refusal is a denial too')
})

function sum (samples: Sample[]): number {
  return samples.reduce((total, s) => total + s.value, 0)
}
