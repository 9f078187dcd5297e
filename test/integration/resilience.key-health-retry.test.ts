import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { SCRAPE_HEADERS, buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'

// After a 5xx the gateway sends a call again only if a key could take it (src/proxy/attempts.ts, anyKeyLeft): it asks
// the very choice the retry makes (pickKey), so the two never disagree. Where they did, the retry was spent and ended
// in the gateway's own 429 or 503 instead of Mistral's answer (docs/resilience.md, Retries).

const CHAT = '/v1/chat/completions'
const MISTRAL_503 = { object: 'error', message: 'Service unavailable', type: 'server_error', param: null, code: '3000' }

async function chat ({ app }: TestApp, ws: TestWorkspace, headers: Record<string, string> = {}) {
  const res = await app.inject({
    method: 'POST',
    url: CHAT,
    headers: { ...ws.headers, 'content-type': 'application/json', ...headers },
    payload: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] })
  })
  return { status: res.statusCode, json: res.json() }
}

async function retries ({ app }: TestApp): Promise<number> {
  const body = (await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body
  return Number(/^tramontane_upstream_retries_total (\d+)$/m.exec(body)?.[1])
}

t.test('["hold", "failover"]: a backup cooling within the hold takes no retry, which holds for the preferred key only',
  async (t) => {
    const s = await buildTestApp(t, { BREAKER_THRESHOLD: '1', BREAKER_OPEN_MS: '20000' })
    const ws = await s.createWorkspace({ keys: ['default', 'backup'] })
    const order = async (cooldown: unknown) =>
      t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { cooldown })).statusCode, 200)
    // `backup` cools for 3 s (no hold, no failover: the 429 comes back at once)
    await order({ order: [] })
    s.mistral.enqueueRateLimit({ retryAfterSeconds: 3, filter: CHAT })
    t.equal((await chat(s, ws, { 'x-tramontane-key': 'backup' })).json.code, 'upstream_rate_limited')
    await order({ order: ['hold', 'failover'], holdMs: 5000 })

    // `default` answers 503 and its breaker opens for 20 s: past the hold, and failover takes only a usable key
    const mark = s.mistral.received.length
    const before = await retries(s)
    s.mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
    const reply = await chat(s, ws)
    t.equal(reply.status, 503)
    t.match(reply.json, MISTRAL_503, 'Mistral\'s answer, as it was: no key could take a retry')
    t.equal(await retries(s) - before, 0, 'no retry spent')
    t.equal(s.mistral.received.length - mark, 1, 'one call upstream')
  })

t.test('a half-open breaker whose probe another call holds takes no retry', async (t) => {
  const s = await buildTestApp(t, { BREAKER_THRESHOLD: '1', BREAKER_OPEN_MS: '500', UPSTREAM_COOLDOWN_HOLD_MS: '0' })
  const ws = await s.createWorkspace({ keys: ['default', 'backup'] })
  // `backup`'s breaker opens, and its open time passes: half-open, one probe may go
  s.mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
  t.equal((await chat(s, ws, { 'x-tramontane-key': 'backup' })).status, 503)
  await sleep(600)
  // the probe: a slow success, under way while `default` fails
  s.mistral.enqueueDelay(1500, CHAT)
  s.mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
  const mark = s.mistral.received.length
  const probe = chat(s, ws, { 'x-tramontane-key': 'backup' })
  const deadline = Date.now() + 2000
  while (s.mistral.received.length === mark && Date.now() < deadline) await sleep(5)
  t.equal(s.mistral.received.length - mark, 1, 'the probe is out')

  const before = await retries(s)
  const reply = await chat(s, ws)
  t.equal(reply.status, 503)
  t.match(reply.json, MISTRAL_503, 'Mistral\'s answer: `default`\'s breaker just opened, `backup`\'s probe is taken')
  t.equal(await retries(s) - before, 0, 'no retry spent')
  t.equal(s.mistral.received.length - mark, 2, 'the probe and this call, nothing more')
  t.equal((await probe).status, 200, 'the probe succeeded')
})
