import { randomBytes } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { Mistral } from '@mistralai/mistralai'
import { HTTPClient } from '@mistralai/mistralai/lib/http.js'
import { Redis } from 'ioredis'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { TEST_ADMIN_TOKEN, TEST_REDIS_URL, type TestApp, type TestWorkspace, buildTestApp, gatewayEnv, listen } from '../helpers/app.js'
import { startFakeMistral, type FakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'

// Issue 4: a 429 from Mistral cools that Mistral key on every replica (nothing goes upstream on it), the client is told
// the truth about when to retry, real SDKs complete through a cooldown, backoff without hints grows, is jittered,
// capped and reset by a success, a spend-limit 429 is told apart, and failover stays inside the workspace.

const CHAT = '/v1/chat/completions'
const messages = (content: string) => [{ role: 'user', content }]

interface Reply {
  status: number
  headers: Headers
  json: any
  sentAt: number
  doneAt: number
}

/** One non-streamed chat call through a gateway over HTTP, read to its end. */
async function chat (url: string, token: string, content = 'Hello there', headers: Record<string, string> = {}): Promise<Reply> {
  const sentAt = Date.now()
  const res = await fetch(url + CHAT, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'mistral-small-latest', messages: messages(content) })
  })
  const text = await res.text()
  let json: any
  try { json = JSON.parse(text) } catch {}
  return { status: res.status, headers: res.headers, json, sentAt, doneAt: Date.now() }
}

/** The same through `inject` (no socket needed). */
async function injectChat ({ app }: TestApp, ws: TestWorkspace, content = 'Hello there', headers: Record<string, string> = {}) {
  const sentAt = Date.now()
  const res = await app.inject({
    method: 'POST',
    url: CHAT,
    headers: { ...ws.headers, 'content-type': 'application/json', ...headers },
    payload: JSON.stringify({ model: 'mistral-small-latest', messages: messages(content) })
  })
  return { status: res.statusCode, headers: res.headers, json: res.json(), sentAt, doneAt: Date.now() }
}

/** Upstream requests made with this Mistral key. */
const upstreamWith = (mistral: FakeMistral, key: string) => mistral.received.filter((request) => request.apiKey === key)

/** A 429 as no captured Mistral 429 contradicts: the edge's body, and no Retry-After nor any rate-limit header. */
function bare429 (_req: IncomingMessage, res: ServerResponse) {
  res.writeHead(429, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ message: 'Requests rate limit exceeded' }))
}

/** The gateway's 429 for a cooling key: the envelope, a Retry-After in seconds and in ms, and "do retry". */
function assertCooling (t: Test, reply: { status: number, json: any }, headers: (name: string) => string | null, what: string) {
  t.equal(reply.status, 429, `${what}: 429`)
  t.match(reply.json, {
    object: 'error', type: 'rate_limit_error', code: 'upstream_rate_limited', message: String,
    error: { type: 'rate_limit_error', code: 'upstream_rate_limited' }
  }, `${what}: the error envelope`)
  t.match(headers('retry-after'), /^\d+$/, `${what}: Retry-After in seconds`)
  t.match(headers('retry-after-ms'), /^\d+$/, `${what}: retry-after-ms`)
  t.equal(headers('x-should-retry'), 'true', `${what}: x-should-retry`)
}

/**
 * Two gateway processes sharing Redis and PostgreSQL in front of one fake, for the test that needs real replicas.
 * They start when the file loads, while the in-process tests run (their start-up is most of this file's time), and
 * are stopped when the file's tests are over.
 */
async function startReplicas () {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const env = {
    ...gatewayEnv(mistral.url),
    LOG_LEVEL: 'warn',
    // answered at once, not held until the cooldown ends
    UPSTREAM_COOLDOWN_HOLD_MS: '0'
  }
  const gateways = await Promise.all([startGatewayProcess(t, env), startGatewayProcess(t, env)])
  return { mistral, gateways }
}
const replicas = startReplicas()
replicas.catch(() => {}) // reported by the test that awaits it

/**
 * The cooldown a bare 429 set, from Redis' own record of its end: it was set between sending the call and receiving
 * its answer, so its length lies in [until - doneAt, until - sentAt] however loaded the machine is. (The
 * retry-after-ms header is what was left when the answer was written, a little less than the length.)
 */
async function bareCooldown (testApp: TestApp, ws: TestWorkspace, redis: Redis) {
  testApp.mistral.enqueue(bare429, CHAT)
  const reply = await injectChat(testApp, ws)
  if (reply.status !== 429) throw new Error(`expected a 429, got ${reply.status}`)
  const [key] = (await testApp.admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data
  const until = Number(await redis.hget(`tmt:{ws:${ws.id}}:key:${key.id}:block`, 'until'))
  const header = Number(reply.headers['retry-after-ms'])
  return {
    reply,
    header,
    shownUntil: Date.parse(key.cooldown.until),
    until,
    min: until - reply.doneAt,
    max: until - reply.sentAt,
    /** for the record: the middle of what it can have been */
    ms: Math.round(until - (reply.sentAt + reply.doneAt) / 2)
  }
}

/** Waits until this replica no longer has the key cooling (its copy may end a little after Redis'). */
const waitOut = (cooldown: { until: number, shownUntil: number }) =>
  sleep(Math.max(cooldown.until, cooldown.shownUntil) - Date.now() + 30)

/** Cooldowns after bare 429s in a row (each once the previous one is over), then after a success, then a 429 again. */
async function backoffRun (testApp: TestApp, steps: number, redis: Redis) {
  const ws = await testApp.createWorkspace()
  const streak = []
  for (let i = 0; i < steps; i++) {
    streak.push(await bareCooldown(testApp, ws, redis))
    await waitOut(streak[i])
  }
  const success = await injectChat(testApp, ws)
  const afterSuccess = await bareCooldown(testApp, ws, redis)
  return { ws, streak, success, afterSuccess }
}

/** A cooldown length known to lie in [min, max] falls within [low, high]. */
const within = (cooldown: { min: number, max: number }, low: number, high: number) =>
  cooldown.max >= low - 2 && cooldown.min <= high + 2

t.test('a 429 without any header: the cooldown grows, is jittered, is capped, and a success resets it', async (t) => {
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => redis.quit())
  const env = { UPSTREAM_COOLDOWN_HOLD_MS: '0', UPSTREAM_BACKOFF_MAX_MS: '2000' }
  // two runs side by side, each on its own gateway and fake (the fake's scripts are one queue)
  const apps = await Promise.all([buildTestApp(t, env), buildTestApp(t, env)])
  const runs = await Promise.all(apps.map((testApp) => backoffRun(testApp, 3, redis)))
  // equal jitter on 1 s × 2^(n-1), capped at 2 s: [0.5, 1], [1, 2], then [1, 2] again (uncapped: [2, 4])
  const ranges = [[500, 1_000], [1_000, 2_000], [1_000, 2_000]]
  for (const [index, run] of runs.entries()) {
    t.comment(`run ${index + 1}: cooldowns ${run.streak.map((step) => step.ms).join(', ')} ms; ` +
      `after a success ${run.afterSuccess.ms} ms`)
    for (const [step, cooldown] of run.streak.entries()) {
      const [low, high] = ranges[step]
      t.ok(within(cooldown, low, high),
        `run ${index + 1}, 429 #${step + 1}: ${cooldown.min}…${cooldown.max} ms, within [${low}, ${high}]`)
      t.ok(cooldown.header <= cooldown.max + 5 && cooldown.header >= cooldown.until - cooldown.reply.doneAt - 5,
        `retry-after-ms (${cooldown.header}) is what was left when the answer was written`)
      t.equal(Number(cooldown.reply.headers['retry-after']), Math.ceil(cooldown.header / 1000), 'Retry-After is the same, in seconds')
      t.equal(cooldown.reply.json.code, 'upstream_rate_limited')
      // never before Redis' end; later by the time the replica took to hear its own bus message again (it comes back
      // through Redis and extends the local copy: a few ms, more on a loaded machine)
      t.ok(cooldown.shownUntil >= cooldown.until - 5 && cooldown.shownUntil <= cooldown.until + 1_000,
        `the admin API shows the cooldown (${cooldown.shownUntil - cooldown.until} ms after Redis' end)`)
    }
    t.ok(run.streak[1].max >= 1_000 - 2 && run.streak[0].min <= 1_000 + 2, 'it grows')
    t.ok(run.streak[2].min <= 2_000 + 2, 'it is capped by UPSTREAM_BACKOFF_MAX_MS')
    t.equal(run.success.status, 200, 'a call succeeds once the last cooldown is over')
    t.ok(within(run.afterSuccess, 500, 1_000),
      `after the success the next bare 429 gets the first step again (${run.afterSuccess.min}…${run.afterSuccess.max} ms)`)
    t.same(apps[index].mistral.received.map((r) => r.status), [429, 429, 429, 200, 429],
      'nothing went upstream during a cooldown')
  }
  const [one, two] = runs.map((run) => [...run.streak, run.afterSuccess].map((step) => step.until - step.reply.sentAt))
  t.notSame(one, two, 'jittered: two runs do not cool down alike')
})

// Guards the fix of 4a24266 (key-health.ts): `succeeded()` used to delete the Redis streak only on the replica whose
// `streaks` map had the key, i.e. the one that saw the 429s; a success served by another replica left the streak in
// Redis and the next bare 429 continued it (observed before the fix: the 3rd 429 got the 2nd step, 1.1–1.8 s)
t.test('a success on another replica resets the backoff too', async (t) => {
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => redis.quit())
  const env = { UPSTREAM_COOLDOWN_HOLD_MS: '0', UPSTREAM_BACKOFF_MAX_MS: '2000' }
  // two replicas (apps sharing Redis and the bus) in front of one fake
  const one = await buildTestApp(t, env)
  const two = await buildTestApp(t, env, { mistral: one.mistral })
  const ws = await one.createWorkspace()
  const first = await bareCooldown(one, ws, redis)
  await waitOut(first)
  const second = await bareCooldown(one, ws, redis)
  await waitOut(second)
  await sleep(30) // replica two's copy of the cooldown ends within a few ms of replica one's
  t.equal((await injectChat(two, ws)).status, 200, 'the other replica serves a call once the cooldown is over')
  const third = await bareCooldown(one, ws, redis)
  t.comment(`cooldowns on replica one: ${first.ms}, ${second.ms}, ${third.ms} ms, the last after replica two's success`)
  t.ok(within(first, 500, 1_000), 'the first bare 429 got the first step')
  t.ok(within(second, 1_000, 2_000), 'the second in a row got the second step')
  t.ok(within(third, 500, 1_000), `after the success the next bare 429 gets the first step again (${third.min}…${third.max} ms)`)
})

t.test('with the default hold, a call made during a short cooldown waits for it and succeeds in one upstream call',
  async (t) => {
    const testApp = await buildTestApp(t)
    const { mistral, admin, createWorkspace } = testApp
    const ws = await createWorkspace()
    mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
    const held = injectChat(testApp, ws, 'first caller')
    let until = 0
    const deadline = Date.now() + 2_000
    while (until === 0 && Date.now() < deadline) {
      const [key] = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data
      if (key.cooldown) until = Date.parse(key.cooldown.until)
      else await sleep(10)
    }
    t.ok(until > Date.now(), 'the key is cooling down')
    const during = await injectChat(testApp, ws, 'second caller')
    t.equal(during.status, 200, 'the call made during the cooldown succeeded')
    t.ok(during.doneAt >= until, `it was held ${during.doneAt - during.sentAt} ms, until the cooldown ended`)
    const first = await held
    t.equal(first.status, 200, 'the call that met the 429 was held too, then succeeded')
    const upstream = (content: string) => mistral.received.filter((r) => JSON.stringify(r.json).includes(content))
    t.equal(upstream('second caller').length, 1, 'one upstream call for the held call')
    t.same(upstream('first caller').map((r) => r.status), [429, 200], 'the 429, then the success after the cooldown')
  })

t.test('the openai SDK (default retries) completes a call that first meets the cooldown, with no extra upstream call',
  async (t) => {
    const testApp = await buildTestApp(t, { UPSTREAM_COOLDOWN_HOLD_MS: '0' })
    const ws = await testApp.createWorkspace()
    const url = await listen(testApp.app)
    const statuses: number[] = []
    const client = new OpenAI({
      apiKey: ws.token,
      baseURL: url + '/v1',
      fetch: async (input, init) => {
        const res = await fetch(input, init)
        statuses.push(res.status)
        return res
      }
    })
    testApp.mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
    const startedAt = Date.now()
    const completion = await client.chat.completions.create({
      model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello through a cooldown' }]
    })
    const elapsed = Date.now() - startedAt
    t.equal(completion.object, 'chat.completion')
    t.ok(completion.choices[0].message.content, 'with an answer')
    t.same(statuses, [429, 200], 'the SDK met the gateway\'s 429 once, waited, and succeeded')
    t.ok(elapsed >= 900 && elapsed < 15_000, `it waited out the cooldown (${elapsed} ms)`)
    t.same(testApp.mistral.received.map((r) => [r.apiKey, r.status]), [[ws.mistralKey, 429], [ws.mistralKey, 200]],
      'exactly two upstream calls: the 429 and the success')
  })

t.test('the Mistral SDK (backoff retries) completes a call that first meets the cooldown, with no extra upstream call',
  async (t) => {
    const testApp = await buildTestApp(t, { UPSTREAM_COOLDOWN_HOLD_MS: '0' })
    const ws = await testApp.createWorkspace()
    const url = await listen(testApp.app)
    const statuses: number[] = []
    const httpClient = new HTTPClient()
    httpClient.addHook('response', (res) => { statuses.push(res.status) })
    const sdk = new Mistral({
      apiKey: ws.token,
      serverURL: url,
      httpClient,
      retryConfig: {
        strategy: 'backoff',
        backoff: { initialInterval: 100, maxInterval: 3000, exponent: 1.5, maxElapsedTime: 20000 },
        retryConnectionErrors: false
      }
    })
    testApp.mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
    const startedAt = Date.now()
    const completion = await sdk.chat.complete({
      model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello through a cooldown' }]
    })
    const elapsed = Date.now() - startedAt
    t.equal(completion.object, 'chat.completion')
    t.ok(completion.choices?.[0]?.message?.content, 'with an answer')
    t.same(statuses, [429, 200], 'the SDK met the gateway\'s 429 once, waited its Retry-After, and succeeded')
    t.ok(elapsed >= 900 && elapsed < 15_000, `it waited out the cooldown (${elapsed} ms)`)
    t.same(testApp.mistral.received.map((r) => [r.apiKey, r.status]), [[ws.mistralKey, 429], [ws.mistralKey, 200]],
      'exactly two upstream calls: the 429 and the success')
  })

t.test('a spend-limit 429 is reported as insufficient_quota, and clients are told not to retry', async (t) => {
  const testApp = await buildTestApp(t, { UPSTREAM_COOLDOWN_HOLD_MS: '0' })
  const { mistral, admin, createWorkspace } = testApp
  const ws = await createWorkspace()
  const url = await listen(testApp.app)
  mistral.enqueueError(429, { message: 'You have reached your monthly usage limit' }, {}, CHAT)
  const statuses: number[] = []
  const client = new OpenAI({
    apiKey: ws.token,
    baseURL: url + '/v1',
    fetch: async (input, init) => {
      const res = await fetch(input, init)
      statuses.push(res.status)
      return res
    }
  })
  const failure = await client.chat.completions.create({
    model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }]
  }).catch((err: unknown) => err)
  t.type(failure, OpenAI.APIError)
  const error = failure as InstanceType<typeof OpenAI.APIError>
  t.equal(error.status, 429)
  t.equal(error.type, 'insufficient_quota')
  t.equal(error.code, 'mistral_spend_limit_reached')
  t.equal(error.headers?.get('x-should-retry'), 'false')
  t.same(statuses, [429], 'the openai SDK did not retry')
  t.equal(mistral.received.length, 1)

  const again = await injectChat(testApp, ws)
  t.equal(again.status, 429)
  t.match(again.json, {
    object: 'error', type: 'insufficient_quota', code: 'mistral_spend_limit_reached',
    error: { type: 'insufficient_quota', code: 'mistral_spend_limit_reached' }
  })
  t.equal(again.headers['x-should-retry'], 'false')
  t.ok(Number(again.headers['retry-after']) >= 60, `Retry-After ${again.headers['retry-after']} s`)
  t.equal(mistral.received.length, 1, 'the key stays away from the upstream')
  const [key] = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data
  t.equal(key.cooldown?.reason, 'spend_limit')
})

t.test('failover to the workspace\'s next Mistral key, never to another workspace\'s, never from a pinned key',
  async (t) => {
    const testApp = await buildTestApp(t, { UPSTREAM_COOLDOWN_HOLD_MS: '0' })
    const { mistral, createWorkspace } = testApp
    const a = await createWorkspace({ keys: ['default', 'backup'] })
    const b = await createWorkspace({ keys: ['default', 'backup'] })
    const aKeys = [a.mistralKey, `${a.mistralKey}-backup`]
    const bKeys = [b.mistralKey, `${b.mistralKey}-backup`]
    const since = (mark: number) => mistral.received.slice(mark).map((r) => r.apiKey)

    let mark = mistral.received.length
    mistral.enqueueRateLimit({ retryAfterSeconds: 10, filter: CHAT })
    const failedOver = await injectChat(testApp, a)
    t.equal(failedOver.status, 200, 'the call succeeded')
    t.same(since(mark), aKeys, 'upstream saw `default` (429), then `backup`')

    mark = mistral.received.length
    t.equal((await injectChat(testApp, a)).status, 200)
    t.same(since(mark), [aKeys[1]], 'while `default` cools, calls go to `backup` straight away')

    // both of A's keys cooling: A is told to wait; B's keys are never tried
    mark = mistral.received.length
    mistral.enqueueRateLimit({ retryAfterSeconds: 10, filter: CHAT })
    const bothCooling = await injectChat(testApp, a)
    assertCooling(t, bothCooling, (name) => bothCooling.headers[name] as string ?? null, 'A with both keys cooling')
    t.same(since(mark), [aKeys[1]], 'only A\'s `backup` was tried (and answered 429)')
    for (let i = 0; i < 5; i++) t.equal((await injectChat(testApp, a)).status, 429)
    t.same(since(mark), [aKeys[1]], 'nothing more went upstream for A')
    t.notOk(mistral.received.some((r) => bKeys.includes(r.apiKey as string)), 'no call of A used one of B\'s keys')
    mark = mistral.received.length
    t.equal((await injectChat(testApp, b)).status, 200, 'B is unaffected')
    t.same(since(mark), [bKeys[0]])

    // pinned by header: no failover
    const c = await createWorkspace({ keys: ['default', 'backup'] })
    mark = mistral.received.length
    mistral.enqueueRateLimit({ retryAfterSeconds: 10, filter: CHAT })
    const pinned = await injectChat(testApp, c, 'Hello', { 'x-tramontane-key': 'backup' })
    assertCooling(t, pinned, (name) => pinned.headers[name] as string ?? null, 'pinned by x-tramontane-key')
    t.same(since(mark), [`${c.mistralKey}-backup`], 'the pinned key only, no failover to `default`')
    t.equal((await injectChat(testApp, c)).status, 200, 'unpinned, C still has `default`')

    // bound token: no failover
    const d = await createWorkspace({ keys: ['default', 'backup'], tokenBody: { mistralKey: 'default' } })
    mark = mistral.received.length
    mistral.enqueueRateLimit({ retryAfterSeconds: 10, filter: CHAT })
    const bound = await injectChat(testApp, d)
    assertCooling(t, bound, (name) => bound.headers[name] as string ?? null, 'a token bound to `default`')
    t.same(since(mark), [d.mistralKey], 'the bound key only, no failover to `backup`')
    t.equal((await injectChat(testApp, d)).status, 429, 'and the next call waits too')
    t.same(since(mark), [d.mistralKey])
  })

t.test('a replica that starts after the 429, or whose pub/sub was away, knows the cooldown: nothing goes upstream',
  async (t) => {
    const first = await buildTestApp(t, { UPSTREAM_COOLDOWN_HOLD_MS: '0' })
    const [ws, other] = [await first.createWorkspace(), await first.createWorkspace()]
    for (const each of [ws, other]) t.equal((await injectChat(first, each)).status, 200, 'served before the 429')
    first.mistral.enqueueRateLimit({ retryAfterSeconds: 6, filter: CHAT })
    const met = await injectChat(first, ws)
    t.equal(met.status, 429, 'Mistral\'s 429, with Retry-After: 6')
    const cooledAt = met.doneAt

    // a replica started now never heard the pub/sub message: it reads the cooldowns in force from Redis at start
    const late = await buildTestApp(t, { UPSTREAM_COOLDOWN_HOLD_MS: '0' }, { mistral: first.mistral })
    const upstreamBefore = upstreamWith(first.mistral, ws.mistralKey).length
    const reply = await injectChat(late, ws)
    assertCooling(t, reply, (name) => reply.headers[name] as string ?? null, 'the replica started after the 429')
    const ms = Number(reply.headers['retry-after-ms'])
    // what was left of the 6 s when the call was answered, give or take the time the 429 took to arrive
    t.ok(ms <= 6_000 - (reply.sentAt - met.doneAt) + 5 && ms >= 6_000 - (reply.doneAt - met.sentAt) - 5,
      `retry-after-ms ${ms}: the cooldown left (${6_000 - (reply.doneAt - cooledAt)} ms)`)
    t.equal(upstreamWith(first.mistral, ws.mistralKey).length - upstreamBefore, 0, 'nothing went upstream')

    // its pub/sub connection drops; a 429 meanwhile is announced to no one; it reconnects and reads Redis again
    const subscriber = late.app.redis!.subscriber
    const reconnected = new Promise((resolve) => subscriber.once('ready', resolve))
    subscriber.disconnect()
    first.mistral.enqueueRateLimit({ retryAfterSeconds: 6, filter: CHAT })
    t.equal((await injectChat(first, other)).status, 429, 'the other workspace\'s key meets a 429 while it is away')
    await subscriber.connect()
    await reconnected
    await sleep(100) // the reload runs on the reconnect
    const otherBefore = upstreamWith(first.mistral, other.mistralKey).length
    const after = await injectChat(late, other)
    assertCooling(t, after, (name) => after.headers[name] as string ?? null, 'after the reconnect')
    t.equal(upstreamWith(first.mistral, other.mistralKey).length - otherBefore, 0, 'nothing went upstream')
  })

t.test('a 429 with Retry-After: 2 cools the key on both replicas: 50 calls, none upstream, a truthful Retry-After',
  async (t) => {
    const { mistral, gateways } = await replicas
    const redis = new Redis(TEST_REDIS_URL)
    t.teardown(() => redis.quit())
    const urls = gateways.map((gateway) => gateway.url)
    const admin = async (url: string, method: string, path: string, body?: unknown) => {
      const res = await fetch(url + '/admin/v1' + path, {
        method,
        headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body)
      })
      return res.json() as Promise<any>
    }
    const slug = `cool-${randomBytes(5).toString('hex')}`
    const mistralKey = `mk-${slug}-${randomBytes(6).toString('hex')}`
    const workspace = await admin(urls[0], 'POST', '/workspaces', { slug, name: 'Cooldown' })
    const key = await admin(urls[0], 'POST', `/workspaces/${slug}/mistral-keys`, { name: 'default', key: mistralKey })
    const { token } = await admin(urls[0], 'POST', `/workspaces/${slug}/tokens`, { name: 'app' })

    for (const url of urls) t.equal((await chat(url, token)).status, 200, 'both replicas serve the workspace')
    t.equal(upstreamWith(mistral, mistralKey).length, 2)

    mistral.enqueueRateLimit({ retryAfterSeconds: 2, filter: CHAT })
    const first = await chat(urls[0], token)
    assertCooling(t, first, (name) => first.headers.get(name), 'the call that met the 429')
    t.equal(first.headers.get('retry-after'), '2', 'Mistral\'s Retry-After passed on')
    t.equal(upstreamWith(mistral, mistralKey).length, 3, 'the 429 itself reached upstream, and no retry followed')

    // the cooldown as Redis holds it (Redis' clock, same host), and as each replica's admin API shows it
    const blockKey = `tmt:{ws:${workspace.id}}:key:${key.id}:block`
    const [untilRaw, reason] = await redis.hmget(blockKey, 'until', 'reason')
    const until = Number(untilRaw)
    t.equal(reason, 'rate_limited')
    // set when the 429 arrived, somewhere between sending the call and its answer, for Retry-After's 2 s
    t.ok(until >= first.sentAt + 2_000 - 5 && until <= first.doneAt + 2_000 + 5,
      `the cooldown is Retry-After's 2 s (it ends ${until - first.doneAt} ms after the client got the 429)`)
    let replicaUntil = 0
    for (const url of urls) {
      const [shown] = (await admin(url, 'GET', `/workspaces/${slug}/mistral-keys`)).data
      t.equal(shown.cooldown?.reason, 'rate_limited', 'each replica shows the cooldown')
      // Redis' end on every replica, however long it took to hear of it: off only by how well the replica measured
      // its offset to Redis' clock (half a round trip to TIME)
      const lag = Date.parse(shown.cooldown.until) - until
      replicaUntil = Math.max(replicaUntil, Date.parse(shown.cooldown.until))
      t.ok(Math.abs(lag) <= 50, `at the time Redis holds (${lag} ms apart)`)
    }

    // 50 calls spread over both replicas and over the cooldown's first second
    const upstreamBefore = upstreamWith(mistral, mistralKey).length
    const waves: Array<Promise<Reply[]>> = []
    for (let wave = 0; wave < 5; wave++) {
      waves.push(Promise.all(Array.from({ length: 10 }, (_, i) => chat(urls[i % 2], token, `wave ${wave} call ${i}`))))
      await sleep(150)
    }
    const replies = (await Promise.all(waves)).flat()
    t.equal(replies.length, 50)
    const lastSent = Math.max(...replies.map((reply) => reply.sentAt))
    t.ok(lastSent < until - 500, `every call was made during the cooldown (the last ${until - lastSent} ms before its end)`)
    t.equal(upstreamWith(mistral, mistralKey).length - upstreamBefore, 0, 'zero calls reached the upstream')
    let shortest = Infinity
    let longest = 0
    const wrong: string[] = []
    for (const [i, reply] of replies.entries()) {
      if (reply.status !== 429 || reply.json?.code !== 'upstream_rate_limited') {
        wrong.push(`#${i}: ${reply.status} ${reply.json?.code}`)
        continue
      }
      const ms = Number(reply.headers.get('retry-after-ms'))
      const seconds = Number(reply.headers.get('retry-after'))
      // no shorter than what was left when the answer arrived
      if (ms < until - reply.doneAt || seconds * 1000 < until - reply.doneAt) {
        wrong.push(`#${i}: ${seconds} s, ${ms} ms < ${until - reply.doneAt} ms left`)
      }
      // and not made up: about what was left when it was asked (a replica may hear of the cooldown a little late)
      if (ms > until - reply.sentAt + 500 || seconds !== Math.ceil(ms / 1000)) {
        wrong.push(`#${i}: ${seconds} s, ${ms} ms > ${until - reply.sentAt} ms left when asked`)
      }
      shortest = Math.min(shortest, ms)
      longest = Math.max(longest, ms)
    }
    const margin = Math.min(...replies.map((reply) => Number(reply.headers.get('retry-after-ms')) - (until - reply.doneAt)))
    t.comment(`50 calls (${replies.filter((_, i) => i % 2 === 0).length} per replica), retry-after-ms ${shortest}…${longest}, ` +
      `never less than the cooldown left (smallest margin ${margin} ms)`)
    t.same(wrong, [], `every answer is a 429 upstream_rate_limited with a truthful Retry-After (retry-after-ms ${shortest}…${longest})`)
    assertCooling(t, replies[49], (name) => replies[49].headers.get(name), 'the last call')

    // once the cooldown is over (as each replica has it), calls flow again on both replicas
    await sleep(replicaUntil - Date.now() + 20)
    for (const url of urls) t.equal((await chat(url, token)).status, 200, 'served after the cooldown')
    t.equal(upstreamWith(mistral, mistralKey).length - upstreamBefore, 2, 'and they reached the upstream')
  })
