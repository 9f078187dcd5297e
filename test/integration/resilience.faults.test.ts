import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { request } from 'undici'
import type { MistralKeyInvalidEvent } from '../../src/events.js'
import { SCRAPE_HEADERS, buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'

// Issue 4: 5xx bursts are retried within bounds and a budget, a shared breaker opens and a probe closes it, faults
// in the middle of a stream end it with an SSE error event and still meter it, a Mistral key rejected with 401 is
// marked invalid for its workspace only, and Mistral's remaining-quota headers are kept per key.

const CHAT = '/v1/chat/completions'
const MISTRAL_503 = { object: 'error', message: 'Service unavailable', type: 'server_error', param: null, code: '3000' }

const chatBody = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Tell me a story' }], ...extra })

async function injectChat ({ app }: TestApp, ws: TestWorkspace, extra: Record<string, unknown> = {}) {
  const sentAt = Date.now()
  const res = await app.inject({
    method: 'POST', url: CHAT, headers: { ...ws.headers, 'content-type': 'application/json' }, payload: chatBody(extra)
  })
  let json: any
  try { json = res.json() } catch {}
  return { status: res.statusCode, headers: res.headers, json, elapsed: Date.now() - sentAt }
}

const keysOf = async ({ admin }: TestApp, ws: TestWorkspace) =>
  (await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data as any[]

async function until (check: () => boolean, timeoutMs = 2_000) {
  const deadline = Date.now() + timeoutMs
  while (!check() && Date.now() < deadline) await sleep(10)
  return check()
}

/** The workspace's usage records once there are `count` of them (the meter settles when the upstream body closes). */
async function usageRecords ({ app, admin }: TestApp, ws: TestWorkspace, count = 1) {
  const deadline = Date.now() + 3_000
  for (;;) {
    await app.usage.flush()
    const records = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records as any[]
    if (records.length >= count || Date.now() > deadline) return records
    await sleep(50)
  }
}

/** The `data:` events of an SSE text; `[DONE]` comes back as the string. */
function sseEvents (text: string): unknown[] {
  return text.split('\n\n').filter((event) => event.startsWith('data: '))
    .map((event) => event.slice(6) === '[DONE]' ? '[DONE]' : JSON.parse(event.slice(6)))
}

t.test('a 5xx burst: retries stay within UPSTREAM_RETRIES and the retry budget', async (t) => {
  // a breaker that never opens, to see the retry budget alone
  const testApp = await buildTestApp(t, { BREAKER_THRESHOLD: '1000', UPSTREAM_RETRIES: '2', UPSTREAM_RETRY_BUDGET_PERCENT: '10' })
  const ws = await testApp.createWorkspace()
  for (let i = 0; i < 150; i++) testApp.mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
  const calls = 30
  const statuses: number[] = []
  for (let i = 0; i < calls; i++) statuses.push((await injectChat(testApp, ws, { messages: [{ role: 'user', content: `call ${i}` }] })).status)
  t.ok(statuses.every((status) => status === 503), 'every call ends with Mistral\'s 503')
  const upstream = testApp.mistral.received
  const perCall = Array.from({ length: calls }, (_, i) =>
    upstream.filter((r) => (r.json as any)?.messages?.[0]?.content === `call ${i}`).length)
  t.comment(`${calls} calls → ${upstream.length} upstream calls; tries per call: ${perCall.join(' ')}`)
  t.ok(perCall.every((n) => n >= 1 && n <= 3), 'each call tried at most 1 + UPSTREAM_RETRIES times')
  t.equal(perCall[0], 3, 'the first call, on the up-front burst, used both retries')
  t.ok(upstream.length <= calls * 1.1 + 3, `${upstream.length} upstream calls ≤ ${calls} × 1.1 + 3 (budget and burst)`)
  t.ok(upstream.length < calls * 3, 'far from the unbudgeted worst case')
})

t.test('the breaker opens after BREAKER_THRESHOLD failures on every replica, and a successful probe closes it',
  async (t) => {
    const env = { BREAKER_THRESHOLD: '3', BREAKER_OPEN_MS: '1500', UPSTREAM_RETRIES: '2', UPSTREAM_COOLDOWN_HOLD_MS: '0' }
    const one = await buildTestApp(t, env)
    const two = await buildTestApp(t, env, { mistral: one.mistral })
    const { mistral } = one
    const ws = await one.createWorkspace()
    for (const app of [one, two]) t.equal((await injectChat(app, ws)).status, 200, 'both replicas serve the workspace')

    let mark = mistral.received.length
    for (let i = 0; i < 3; i++) mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
    const failing = await injectChat(one, ws)
    t.equal(failing.status, 503, 'the last try\'s 503 reached the client')
    t.same(mistral.received.slice(mark).map((r) => r.status), [503, 503, 503], 'one call and UPSTREAM_RETRIES retries')

    for (const app of [one, two]) {
      const [key] = await keysOf(app, ws)
      t.equal(key.cooldown?.reason, 'breaker_open', 'each replica shows the breaker open')
    }
    const [{ cooldown }] = await keysOf(one, ws)
    const openUntil = Date.parse(cooldown.until)

    mark = mistral.received.length
    const fast = []
    const askedFrom = Date.now()
    for (let i = 0; i < 10; i++) fast.push(await injectChat(i % 2 === 0 ? one : two, ws))
    t.ok(fast.every((reply) => reply.status === 503 && reply.json.code === 'upstream_unavailable'),
      'every call gets 503 upstream_unavailable')
    t.match(fast[0].json, { object: 'error', type: 'server_error', code: 'upstream_unavailable', error: { code: 'upstream_unavailable' } })
    t.ok(fast.every((reply) => Number(reply.headers['retry-after']) >= 1 && Number(reply.headers['retry-after']) <= 2),
      `with a Retry-After (${fast.map((reply) => reply.headers['retry-after']).join(',')})`)
    // what is left of the open time: no more than the breaker's end as shown, and Retry-After rounds it up
    t.ok(fast.every((reply) => {
      const ms = Number(reply.headers['retry-after-ms'])
      return ms >= 1 && ms <= openUntil - askedFrom + 50 && Number(reply.headers['retry-after']) === Math.ceil(ms / 1000)
    }), `and retry-after-ms (${fast.map((reply) => reply.headers['retry-after-ms']).join(',')})`)
    t.ok(fast.every((reply) => reply.elapsed < 500), `fast (slowest ${Math.max(...fast.map((reply) => reply.elapsed))} ms)`)
    t.equal(mistral.received.length - mark, 0, 'nothing went upstream while the breaker was open')

    // half-open: the probe is slow; while it is out, nothing else goes upstream
    await sleep(openUntil - Date.now() + 30)
    mark = mistral.received.length
    mistral.enqueueDelay(800, CHAT)
    const afterOpen = Promise.all([one, two, one, two].map((app) => injectChat(app, ws)))
    await sleep(400)
    t.equal(mistral.received.length - mark, 1, 'one probe went upstream, alone')
    const replies = await afterOpen
    t.ok(replies.some((reply) => reply.status === 200 && reply.elapsed >= 800), 'the probe succeeded')
    t.ok(replies.every((reply) => reply.status === 200 || reply.json?.code === 'upstream_unavailable'),
      `the others were held or refused (${replies.map((reply) => `${reply.status} in ${reply.elapsed} ms`).join(', ')})`)
    t.equal(replies.filter((reply) => reply.json?.code === 'upstream_unavailable' && reply.elapsed < 400).length, 3,
      'with UPSTREAM_COOLDOWN_HOLD_MS=0 the calls that lost the probe race are answered at once')
    for (const app of [one, two]) {
      const [key] = await keysOf(app, ws)
      t.equal(key.cooldown, null, 'the breaker is closed on each replica')
    }
    mark = mistral.received.length
    for (const app of [one, two, one, two]) t.equal((await injectChat(app, ws)).status, 200)
    t.equal(mistral.received.length - mark, 4, 'calls flow again')
  })

// Guards the fix of 4a24266 (key-health.ts): `failed()` used to count a failed probe as one failure among
// BREAKER_THRESHOLD instead of opening the breaker again; the block stayed half-open while the probe marker was held,
// so calls were held (a wait of 0 passes UPSTREAM_COOLDOWN_HOLD_MS=0), polled the marker, and probed again when it
// expired (observed before the fix: 2 upstream calls for the probe's call, the next call held 1.5 s then sent upstream)
t.test('a failed probe opens the breaker again: fast 503s, nothing upstream', async (t) => {
  const env = { BREAKER_THRESHOLD: '3', BREAKER_OPEN_MS: '1500', UPSTREAM_RETRIES: '2', UPSTREAM_COOLDOWN_HOLD_MS: '0' }
  const testApp = await buildTestApp(t, env)
  const { mistral } = testApp
  const ws = await testApp.createWorkspace()
  for (let i = 0; i < 3; i++) mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
  t.equal((await injectChat(testApp, ws)).status, 503)
  const [{ cooldown }] = await keysOf(testApp, ws)
  await sleep(Date.parse(cooldown.until) - Date.now() + 30)

  const mark = mistral.received.length
  for (let i = 0; i < 3; i++) mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
  const probe = await injectChat(testApp, ws)
  t.equal(probe.status, 503, 'the probe failed')
  t.equal(mistral.received.length - mark, 1, `only the probe went upstream (${mistral.received.length - mark} did)`)
  t.ok(probe.elapsed < 1_000, `answered at once (${probe.elapsed} ms)`)
  const next = await injectChat(testApp, ws)
  t.equal(next.json?.code, 'upstream_unavailable', 'the next call gets the fast 503')
  t.ok(next.elapsed < 500, `at once (${next.elapsed} ms)`)
  t.ok(Number(next.headers['retry-after']) >= 1, 'with a Retry-After')
  t.equal(mistral.received.length - mark, 1, `and nothing more went upstream (${mistral.received.length - mark} in all)`)
  mistral.reset()
})

t.test('mid-stream faults', async (t) => {
  const testApp = await buildTestApp(t, { UPSTREAM_IDLE_TIMEOUT_MS: '300' })
  const { app, mistral, admin, createWorkspace } = testApp
  const url = await listen(app)

  const stream = async (ws: TestWorkspace, extra: Record<string, unknown> = {}) => {
    const startedAt = Date.now()
    const res = await request(`${url}${CHAT}`, {
      method: 'POST', headers: { ...ws.headers, 'content-type': 'application/json' }, body: chatBody({ stream: true, ...extra })
    })
    let text = ''
    let failure: unknown
    try {
      for await (const chunk of res.body) text += chunk
    } catch (err) {
      failure = err
    }
    return { res, text, failure, elapsed: Date.now() - startedAt }
  }

  for (const mode of ['stall', 'cut'] as const) {
    t.test(`upstream ${mode === 'stall' ? 'stalls' : 'cuts the connection'} mid-stream`, async (t) => {
      const ws = await createWorkspace()
      mistral.faultNextStream({ after: 3, mode, path: CHAT })
      const { res, text, failure, elapsed } = await stream(ws)
      t.equal(res.statusCode, 200)
      const events = sseEvents(text)
      t.equal(events.length, 4, 'the three events sent before the fault, then one more')
      t.notOk(events.includes('[DONE]'), 'never a [DONE]')
      t.match(events[3], {
        object: 'error', type: 'upstream_error', code: mode === 'stall' ? 'upstream_stalled' : 'upstream_cut',
        request_id: res.headers['x-request-id'], error: { type: 'upstream_error' }
      }, 'an SSE error event')
      t.notOk(failure, 'the stream then closed cleanly')
      t.ok(elapsed < 3_000, `closed after ${elapsed} ms`)
      t.equal(mistral.received.at(-1)?.fault, mode)
      const [record] = await usageRecords(testApp, ws)
      t.match(record, {
        requestId: res.headers['x-request-id'], operation: 'chat', streamed: true, status: 200, upstreamStatus: 200,
        estimated: true // Mistral's count rides on the last event, which never came
      }, 'usage recorded, flagged estimated')
      t.ok(record.promptTokens > 0, `an estimated prompt (${record.promptTokens} tokens)`)
      t.equal(record.completionTokens, 2, 'and a token for each of the events Mistral sent after its first (the role)')
      t.ok(Number(record.billedCostMicros) > 0)
    })
  }

  t.test('a conversation stream cut mid-event: no half event reaches the client, then the gateway\'s', async (t) => {
    const ws = await createWorkspace()
    const whole = 'event: message.output.delta\ndata: {"type":"message.output.delta","content":"Hello","model":"mistral-small-latest"}\n\n'
    mistral.enqueue((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      res.write(whole + 'event: message.output.delta\ndata: {"type":"message.output.delta","cont')
      setTimeout(() => res.destroy(), 50)
    }, '/v1/conversations')
    const res = await request(`${url}/v1/conversations`, {
      method: 'POST',
      headers: { ...ws.headers, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mistral-small-latest', inputs: 'Hi', stream: true })
    })
    const text = await res.body.text()
    t.ok(text.startsWith(whole), 'the whole event as Mistral sent it')
    t.notMatch(text, '"cont\n', 'none of the half event')
    const last = text.slice(whole.length)
    t.match(JSON.parse(last.replace(/^data: /, '')), { object: 'error', code: 'upstream_cut' }, 'then the gateway\'s event, whole')
  })

  t.test('a cut after Mistral\'s usage event is metered from Mistral\'s count, not estimated', async (t) => {
    const ws = await createWorkspace()
    // role event, 3 words, the finish event carrying usage; the cut takes the [DONE]
    mistral.faultNextStream({ after: 5, mode: 'cut', path: CHAT })
    const { res, text } = await stream(ws, { max_tokens: 3 })
    const events = sseEvents(text)
    t.notOk(events.includes('[DONE]'))
    t.match(events.at(-1), { object: 'error', code: 'upstream_cut' })
    const reported = mistral.received.at(-1)?.usage
    t.ok(reported, 'Mistral sent its usage before the cut')
    const [record] = await usageRecords(testApp, ws)
    t.match(record, {
      requestId: res.headers['x-request-id'],
      estimated: false,
      promptTokens: reported?.prompt_tokens,
      completionTokens: reported?.completion_tokens
    })
  })

  t.test('the client hangs up: upstream aborted, concurrency slot released, usage recorded', async (t) => {
    const ws = await createWorkspace()
    const patched = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { limits: { concurrency: 1 } })
    t.equal(patched.statusCode, 200)
    const gate = mistral.holdStreams()
    t.teardown(() => gate.release())
    const controller = new AbortController()
    const res = await request(`${url}${CHAT}`, {
      method: 'POST', headers: { ...ws.headers, 'content-type': 'application/json' }, body: chatBody({ stream: true }), signal: controller.signal
    })
    const reader = res.body[Symbol.asyncIterator]()
    const first = await reader.next()
    t.match(String(first.value), /^data: \{/, 'the first event arrived')
    const upstream = mistral.received.at(-1)!
    const refused = await injectChat(testApp, ws)
    t.equal(refused.status, 429, 'while the stream is open the one slot is taken')
    t.equal(mistral.received.at(-1), upstream, 'and the refused call did not go upstream')

    controller.abort()
    t.ok(await until(() => upstream.aborted), 'the fake saw the upstream call aborted')
    gate.release()
    const releasedAt = Date.now()
    let next = await injectChat(testApp, ws)
    while (next.status === 429 && Date.now() - releasedAt < 2_000) {
      await sleep(20)
      next = await injectChat(testApp, ws)
    }
    t.equal(next.status, 200, `the slot was released: a next call is admitted (${Date.now() - releasedAt} ms after the abort)`)
    const records = await usageRecords(testApp, ws, 2)
    const aborted = records.find((record) => record.requestId === res.headers['x-request-id'])
    t.ok(aborted, 'the aborted call has its usage record')
    t.match(aborted, { streamed: true, estimated: true, upstreamStatus: 200 })
    t.ok(aborted?.promptTokens > 0, 'billed from an estimate')
    t.equal(aborted?.completionTokens, 0, 'the one event relayed before the client left (the role) has no output')
  })
})

t.test('a 401 for workspace A\'s key marks it invalid for A only; replacing it brings A back', async (t) => {
  const testApp = await buildTestApp(t)
  const { mistral, admin, createWorkspace } = testApp
  const a = await createWorkspace()
  const b = await createWorkspace()
  mistral.validKeys.add(b.mistralKey)
  const upstreamA = () => mistral.received.filter((r) => r.apiKey === a.mistralKey).length
  const invalid: MistralKeyInvalidEvent[] = []
  testApp.app.events.on('mistral_key.invalid', (event) => { invalid.push(event) })

  const rejected = await injectChat(testApp, a)
  t.equal(rejected.status, 502)
  t.match(rejected.json, {
    object: 'error', type: 'upstream_error', code: 'mistral_key_rejected', error: { code: 'mistral_key_rejected' }
  })
  t.equal(upstreamA(), 1, 'the 401 is not retried')
  const [keyA] = await keysOf(testApp, a)
  t.equal(keyA.status, 'invalid', 'A\'s key shows invalid')
  const audit = (await admin('GET', '/admin/v1/audit-log?limit=1000')).json.data as any[]
  t.match(audit.find((entry) => entry.action === 'mistral_key.invalid' && entry.workspaceId === a.id), {
    actor: 'gateway', targetType: 'mistral_key', targetId: keyA.id, details: { name: 'default' }
  }, 'an audit entry')
  t.match(invalid, [{ type: 'mistral_key.invalid', workspaceId: a.id, workspaceSlug: a.slug, keyId: keyA.id, keyName: 'default', at: String }],
    'one event, for A\'s key')
  t.notMatch(JSON.stringify(invalid), a.mistralKey, 'the event never carries the key itself')

  for (let i = 0; i < 3; i++) {
    const again = await injectChat(testApp, a)
    t.equal(again.json?.code, 'mistral_key_rejected')
    t.ok(again.elapsed < 500, `fails fast (${again.elapsed} ms)`)
  }
  t.equal(upstreamA(), 1, 'later calls of A do not reach the upstream')
  t.equal(invalid.length, 1, 'the key is reported invalid once')

  t.equal((await injectChat(testApp, b)).status, 200, 'B keeps working')
  t.equal((await keysOf(testApp, b))[0].status, 'active', 'B\'s key is untouched')

  const rotated = `${a.mistralKey}-rotated`
  mistral.validKeys.add(rotated)
  const replaced = await admin('PUT', `/admin/v1/workspaces/${a.slug}/mistral-keys/default`, { key: rotated })
  t.equal(replaced.statusCode, 200)
  t.equal(replaced.json.status, 'active')
  t.equal((await injectChat(testApp, a)).status, 200, 'A works again')
  t.equal(mistral.received.at(-1)?.apiKey, rotated, 'with the new key')
})

t.test('a key Mistral rejects is failed over to the next one, which is no retry', async (t) => {
  // no retries at all: the failover must not need one
  const testApp = await buildTestApp(t, { UPSTREAM_RETRIES: '0' })
  const { mistral, createWorkspace, app } = testApp
  const ws = await createWorkspace({ keys: ['default', 'backup'] })
  mistral.validKeys.add(`${ws.mistralKey}-backup`)
  const served = await injectChat(testApp, ws)
  t.equal(served.status, 200, 'the backup key served it')
  t.same(mistral.received.map((r) => r.apiKey), [ws.mistralKey, `${ws.mistralKey}-backup`], 'default (401), then backup')
  t.same((await keysOf(testApp, ws)).map((key: any) => [key.name, key.status]).sort(),
    [['backup', 'active'], ['default', 'invalid']])
  const metrics = await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  t.match(metrics.body, /^tramontane_upstream_retries_total 0$/m, 'not counted as a retry')
})

t.test('a replaced key starts anew: it gets a new id and none of the old key\'s cooldown', async (t) => {
  const testApp = await buildTestApp(t)
  const { mistral, createWorkspace, admin } = testApp
  const ws = await createWorkspace()
  const [before] = await keysOf(testApp, ws)
  // Mistral rate-limits the key for a minute: with one key and no short hold, calls get 429 until then
  mistral.enqueueRateLimit({ retryAfterSeconds: 60, filter: '/v1/chat/completions' })
  t.equal((await injectChat(testApp, ws)).json?.code, 'upstream_rate_limited')
  t.equal((await injectChat(testApp, ws)).json?.code, 'upstream_rate_limited', 'the cooldown holds')

  const replaced = await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key: `${ws.mistralKey}-new` })
  t.equal(replaced.statusCode, 200)
  t.not(replaced.json.id, before.id, 'a new id')
  const served = await injectChat(testApp, ws)
  t.equal(served.status, 200, 'the new key is not held by the old one\'s cooldown')
  t.equal(mistral.received.at(-1)?.apiKey, `${ws.mistralKey}-new`)
})

t.test('Mistral\'s remaining-quota headers on a success are kept per key and shown by the admin API', async (t) => {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const [before] = await keysOf(testApp, ws)
  t.equal(before.quota, null, 'nothing seen yet')
  const startedAt = Date.now()
  t.equal((await injectChat(testApp, ws)).status, 200)
  const usage = testApp.mistral.reportedUsage.at(-1)?.usage
  let key: any
  for (const deadline = Date.now() + 2_000; Date.now() < deadline;) {
    [key] = await keysOf(testApp, ws)
    if (key.quota) break
    await sleep(20)
  }
  t.match(key.quota, {
    observedAt: String,
    headers: {
      'x-ratelimit-limit-tokens-minute': '5000000',
      'x-ratelimit-remaining-tokens-minute': String(5_000_000 - (usage?.total_tokens as number)),
      'x-ratelimit-tokens-query-cost': String(usage?.total_tokens),
      'x-ratelimit-limit-req-minute': '720',
      'x-ratelimit-remaining-req-minute': '719'
    }
  })
  t.ok(Date.parse(key.quota.observedAt) >= startedAt - 1_000, 'observed just now')
  t.notOk(Object.keys(key.quota.headers).some((name) => !/ratelimit/.test(name)), 'only rate-limit headers')
})
