import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { ownRedis } from '../helpers/own-redis.js'

// A Mistral key replaced or deleted never comes back under its id (a replacement gets a new one): what key health
// knew of it — a cooldown, an open breaker, Mistral's quota headers — goes at once, on every replica and in Redis,
// instead of lingering until it ends (an open breaker's never does: it stays half-open, waiting for a probe that no
// call will ever make, and the breakers gauge counts it for good).

const CHAT = '/v1/chat/completions'
const MISTRAL_503 = { object: 'error', message: 'Service unavailable', type: 'server_error', param: null, code: '3000' }
// one failure opens a breaker, for longer than any of these tests
const ENV = { BREAKER_THRESHOLD: '1', BREAKER_OPEN_MS: '60000', UPSTREAM_RETRIES: '0' }

async function chat ({ app }: TestApp, ws: TestWorkspace, headers: Record<string, string> = {}) {
  const res = await app.inject({
    method: 'POST',
    url: CHAT,
    headers: { ...ws.headers, 'content-type': 'application/json', ...headers },
    payload: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] })
  })
  return { status: res.statusCode, json: res.json() }
}

async function keyId (s: TestApp, ws: TestWorkspace, name: string): Promise<string> {
  const keys = (await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data as any[]
  return keys.find((key) => key.name === name).id
}

/** What Redis holds of a key's health: its block, and its entry in the registry a starting replica reads. */
async function inRedis (s: TestApp, ws: TestWorkspace, id: string) {
  const redis = s.app.redis!.client
  return {
    block: await redis.exists(`tmt:{ws:${ws.id}}:key:${id}:block`),
    registered: await redis.zscore('tmt:key-blocks', `${ws.id}:${id}`) !== null
  }
}

async function until (check: () => boolean, timeoutMs = 2_000) {
  const deadline = Date.now() + timeoutMs
  while (!check() && Date.now() < deadline) await sleep(10)
  return check()
}

t.test('a replaced key\'s open breaker is dropped on every replica and in Redis, not only kept off the new key',
  async (t) => {
    const { one, two, ws, oldId } = await twoReplicasWithOpenBreaker(t)
    for (const s of [one, two]) t.equal(s.app.keyHealth.blocked(oldId)?.reason, 'breaker_open')
    t.same(await inRedis(one, ws, oldId), { block: 1, registered: true })

    const replaced = await one.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
      { key: `${ws.mistralKey}-new` })
    t.equal(replaced.statusCode, 200)
    t.not(replaced.json.id, oldId)
    t.equal((await chat(one, ws)).status, 200, 'the new key serves at once')
    t.equal((await chat(two, ws)).status, 200, 'on the other replica too')

    t.equal(one.app.keyHealth.blocked(oldId), undefined, 'the replica that replaced it forgot the old key')
    t.ok(await until(() => two.app.keyHealth.blocked(oldId) === undefined), 'so did the other replica')
    t.same(await inRedis(one, ws, oldId), { block: 0, registered: false }, 'nor Redis: a replica starting reads none')
    const three = await buildTestApp(t, ENV, { mistral: one.mistral })
    t.equal(three.app.keyHealth.blocked(oldId), undefined, 'a replica started since knows nothing of it')
  })

t.test('a deleted key\'s cooldown and quota go too', async (t) => {
  const one = await buildTestApp(t, ENV)
  const two = await buildTestApp(t, ENV, { mistral: one.mistral })
  const ws = await one.createWorkspace({ keys: ['default', 'backup'] })
  const backupId = await keyId(one, ws, 'backup')
  t.equal((await chat(one, ws, { 'x-tramontane-key': 'backup' })).status, 200, 'a success: its quota headers are kept')
  t.ok(await until(() => one.app.keyHealth.observedQuotas().some((quota) => quota.keyId === backupId)))
  one.mistral.enqueueRateLimit({ retryAfterSeconds: 60, filter: CHAT })
  t.equal((await chat(one, ws, { 'x-tramontane-key': 'backup' })).json.code, 'upstream_rate_limited')
  t.ok(await until(() => two.app.keyHealth.blocked(backupId) !== undefined), 'a minute\'s cooldown, on both replicas')

  t.equal((await one.admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/backup`)).statusCode, 204)
  t.equal(one.app.keyHealth.blocked(backupId), undefined, 'its cooldown is gone')
  t.ok(await until(() => two.app.keyHealth.blocked(backupId) === undefined), 'on the other replica too')
  t.notOk(one.app.keyHealth.observedQuotas().some((quota) => quota.keyId === backupId), 'its quota headers are gone')
  t.equal(await one.app.keyHealth.quota(ws.id, backupId), null)
  t.same(await inRedis(one, ws, backupId), { block: 0, registered: false })
})

t.test('a deleted workspace\'s keys are forgotten', async (t) => {
  const one = await buildTestApp(t, ENV)
  const ws = await one.createWorkspace()
  const id = await keyId(one, ws, 'default')
  one.mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
  t.equal((await chat(one, ws)).status, 503)
  t.equal(one.app.keyHealth.blocked(id)?.reason, 'breaker_open')
  t.equal((await one.admin('DELETE', `/admin/v1/workspaces/${ws.slug}`)).statusCode, 204)
  t.equal(one.app.keyHealth.blocked(id), undefined, 'its breaker is gone')
  t.same(await inRedis(one, ws, id), { block: 0, registered: false })
})

// Calls that took the old key before it was replaced are still in flight; what Mistral answers them comes after the
// forgetting, and must not bring the old id back: a late 503 would reopen its breaker (half-open for good), a late 429
// cool it, a late success keep its quota headers.

/** What Redis holds of a key's health, all of it. */
async function allInRedis (s: TestApp, ws: TestWorkspace, id: string) {
  const redis = s.app.redis!.client
  const prefix = `tmt:{ws:${ws.id}}:key:${id}:`
  return {
    ...await inRedis(s, ws, id),
    others: await redis.exists(`${prefix}failures`, `${prefix}streak`, `${prefix}probe`, `${prefix}quota`)
  }
}

const FORGOTTEN_IN_REDIS = { block: 0, registered: false, others: 0 }

/** A scripted answer Mistral sends once `gate` opens: the test decides when a call in flight ends. */
function heldAnswer (s: TestApp, gate: Promise<void>, status: number, body: unknown, headers: Record<string, string>) {
  s.mistral.enqueue(async (_req, res) => {
    await gate
    res.writeHead(status, { 'content-type': 'application/json', ...headers })
    res.end(JSON.stringify(body))
  }, CHAT)
}

const COMPLETION = {
  id: 'cmpl-late',
  object: 'chat.completion',
  created: 1_765_000_000,
  model: 'mistral-small-latest',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop', logprobs: null }],
  usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 }
}

/** Two replicas sharing Redis and one fake Mistral, whose 503 opened the breaker of the workspace's `default` key. */
async function twoReplicasWithOpenBreaker (t: Test, env: Record<string, string> = {}) {
  const one = await buildTestApp(t, { ...ENV, ...env })
  const two = await buildTestApp(t, { ...ENV, ...env }, { mistral: one.mistral })
  const ws = await one.createWorkspace()
  const oldId = await keyId(one, ws, 'default')
  one.mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
  t.equal((await chat(one, ws)).status, 503, 'Mistral\'s 503 opened the breaker')
  t.ok(await until(() => two.app.keyHealth.blocked(oldId) !== undefined), 'the other replica heard of it')
  return { one, two, ws, oldId }
}

/** Sends a call that Mistral holds; resolves once Mistral has it, to the call's own answer (a promise). */
async function inFlight (s: TestApp, ws: TestWorkspace): Promise<{ answer: ReturnType<typeof chat> }> {
  const before = s.mistral.requestsTo(CHAT).length
  const reply = chat(s, ws)
  if (!await until(() => s.mistral.requestsTo(CHAT).length > before)) throw new Error('the call never reached Mistral')
  return { answer: reply }
}

t.test('a 503, a 429 and a success that come back after the key was replaced leave nothing of the old key anywhere',
  async (t) => {
    const one = await buildTestApp(t, ENV)
    const two = await buildTestApp(t, ENV, { mistral: one.mistral })
    const ws = await one.createWorkspace()
    const oldId = await keyId(one, ws, 'default')
    let open!: () => void
    const gate = new Promise<void>((resolve) => { open = resolve })
    heldAnswer(one, gate, 503, MISTRAL_503, {})
    heldAnswer(one, gate, 429, { object: 'error', message: 'Rate limit exceeded', type: 'rate_limited', code: '1300' },
      { 'retry-after': '60' })
    heldAnswer(one, gate, 200, COMPLETION, { 'x-ratelimit-remaining-tokens-minute': '4999996' })
    const failing = (await inFlight(two, ws)).answer
    const limited = (await inFlight(one, ws)).answer
    const served = (await inFlight(two, ws)).answer

    t.equal((await one.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
      { key: `${ws.mistralKey}-new` })).statusCode, 200, 'replaced while the three calls wait for Mistral')
    await sleep(100) // the other replica has heard of it
    open()
    t.equal((await failing).status, 503, 'the late 503 reaches its client')
    t.equal((await limited).status, 429, 'the late 429 too')
    t.equal((await served).status, 200, 'and the late success')
    await sleep(100) // whatever they announced has reached both replicas

    for (const [name, s] of [['one', one], ['two', two]] as const) {
      t.equal(s.app.keyHealth.blocked(oldId), undefined, `no breaker or cooldown of the old key on replica ${name}`)
      t.notOk(s.app.keyHealth.observedQuotas().some((quota) => quota.keyId === oldId), `nor its quota, on ${name}`)
    }
    t.same(await allInRedis(one, ws, oldId), FORGOTTEN_IN_REDIS, 'nor anything in Redis')
    const three = await buildTestApp(t, ENV, { mistral: one.mistral })
    t.equal(three.app.keyHealth.blocked(oldId), undefined, 'a replica started since knows nothing of it')
    t.equal((await chat(two, ws)).status, 200, 'the new key serves')
  })

t.test('a replica that missed the news of the replacement writes nothing of the old key when its call fails late',
  async (t) => {
    const one = await buildTestApp(t, ENV)
    const two = await buildTestApp(t, ENV, { mistral: one.mistral })
    const ws = await one.createWorkspace()
    const oldId = await keyId(one, ws, 'default')
    let open!: () => void
    heldAnswer(one, new Promise<void>((resolve) => { open = resolve }), 503, MISTRAL_503, {})
    const failing = (await inFlight(two, ws)).answer

    const subscriber = two.app.redis!.subscriber
    const reconnected = new Promise((resolve) => subscriber.once('ready', resolve))
    subscriber.disconnect()
    t.equal((await one.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
      { key: `${ws.mistralKey}-new` })).statusCode, 200, 'replaced while replica two\'s pub/sub is away')
    open()
    t.equal((await failing).status, 503)
    await sleep(100)
    for (const [name, s] of [['one', one], ['two', two]] as const) {
      t.equal(s.app.keyHealth.blocked(oldId), undefined, `no breaker of the old key on replica ${name}`)
    }
    t.same(await allInRedis(one, ws, oldId), FORGOTTEN_IN_REDIS, 'nothing in Redis')
    await subscriber.connect()
    await reconnected
  })

t.test('a replica whose pub/sub was away when the key was replaced drops the old key\'s breaker once it is back',
  async (t) => {
    const { one, two, ws, oldId } = await twoReplicasWithOpenBreaker(t)

    const subscriber = two.app.redis!.subscriber
    const reconnected = new Promise((resolve) => subscriber.once('ready', resolve))
    subscriber.disconnect()
    t.equal((await one.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
      { key: `${ws.mistralKey}-new` })).statusCode, 200)
    await sleep(100)
    t.equal(two.app.keyHealth.blocked(oldId)?.reason, 'breaker_open', 'replica two did not hear of it')
    await subscriber.connect()
    await reconnected
    t.ok(await until(() => two.app.keyHealth.blocked(oldId) === undefined), 'back, it forgets the old key too')
    t.same(await allInRedis(one, ws, oldId), FORGOTTEN_IN_REDIS)
  })

t.test('a replacement made while Redis does not answer the replica is forgotten everywhere once Redis is back',
  async (t) => {
    const { one, two, ws, oldId } = await twoReplicasWithOpenBreaker(t)

    const client = one.app.redis!.client
    const back = new Promise((resolve) => client.once('ready', resolve))
    client.disconnect()
    t.equal((await one.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
      { key: `${ws.mistralKey}-new` })).statusCode, 200, 'replaced while replica one cannot reach Redis')
    t.equal(one.app.keyHealth.blocked(oldId), undefined, 'replica one forgot the old key at once')
    await sleep(100)
    t.equal(two.app.keyHealth.blocked(oldId)?.reason, 'breaker_open', 'replica two did not hear of it')
    t.same(await inRedis(two, ws, oldId), { block: 1, registered: true }, 'nor did Redis')

    await client.connect()
    await back
    t.ok(await until(() => two.app.keyHealth.blocked(oldId) === undefined), 'once Redis is back, replica two forgets it')
    t.same(await allInRedis(one, ws, oldId), FORGOTTEN_IN_REDIS, 'and so does Redis')
  })

t.test('a forgetting Redis refuses on a connection that stays up is written again on a timer, with no reload',
  async (t) => {
    // a Redis of this test's own: its ACL is changed for every connection
    const redis = await ownRedis(t)
    const { one, two, ws, oldId } = await twoReplicasWithOpenBreaker(t, { REDIS_URL: redis.url })
    const operator = new Redis(redis.url)
    t.teardown(() => operator.quit())
    // the scripts are refused (NOPERM) while every connection stays up: no reconnect, no reload follows
    await operator.call('ACL', 'SETUSER', 'default', '-eval', '-evalsha')
    t.equal((await one.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
      { key: `${ws.mistralKey}-new` })).statusCode, 200, 'replaced while Redis refuses scripts')
    t.ok(await until(() => two.app.keyHealth.blocked(oldId) === undefined), 'the replicas heard of it over pub/sub')
    t.same(await inRedis(one, ws, oldId), { block: 1, registered: true }, 'Redis refused the forgetting')

    await operator.call('ACL', 'SETUSER', 'default', '+eval', '+evalsha')
    const forgotten = async () =>
      JSON.stringify(await allInRedis(one, ws, oldId)) === JSON.stringify(FORGOTTEN_IN_REDIS)
    const deadline = Date.now() + 3_000
    while (!await forgotten() && Date.now() < deadline) await sleep(50)
    t.same(await allInRedis(one, ws, oldId), FORGOTTEN_IN_REDIS, 'once Redis takes scripts again, it is written there')
    t.equal(one.app.redis!.client.status, 'ready', 'on the same connection, never lost')
  })

t.test('a forgetting Redis takes again brings those still waiting forward, whatever backoff their failures grew',
  async (t) => {
    const redis = await ownRedis(t)
    const { one, ws, oldId } = await twoReplicasWithOpenBreaker(t, { REDIS_URL: redis.url })
    const later = await one.createWorkspace()
    const operator = new Redis(redis.url)
    t.teardown(() => operator.quit())
    await operator.call('ACL', 'SETUSER', 'default', '-eval', '-evalsha')
    t.equal((await one.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
      { key: `${ws.mistralKey}-new` })).statusCode, 200, 'replaced while Redis refuses scripts')
    // refused again 1 s and 3 s later: the next try waits until 7 s
    await sleep(3_500)
    t.same(await inRedis(one, ws, oldId), { block: 1, registered: true }, 'Redis refused the forgetting each time')

    await operator.call('ACL', 'SETUSER', 'default', '+eval', '+evalsha')
    t.equal((await one.admin('PUT', `/admin/v1/workspaces/${later.slug}/mistral-keys/default`,
      { key: `${later.mistralKey}-new` })).statusCode, 200, 'another key replaced: Redis takes its forgetting')
    const taken = Date.now()
    const forgotten = async () =>
      JSON.stringify(await allInRedis(one, ws, oldId)) === JSON.stringify(FORGOTTEN_IN_REDIS)
    while (!await forgotten() && Date.now() - taken < 2_000) await sleep(50)
    t.same(await allInRedis(one, ws, oldId), FORGOTTEN_IN_REDIS,
      'the forgetting that waited is written a first step later, not when its grown backoff ends')
  })
