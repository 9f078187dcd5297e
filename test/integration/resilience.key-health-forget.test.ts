import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'

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
    const one = await buildTestApp(t, ENV)
    const two = await buildTestApp(t, ENV, { mistral: one.mistral })
    const ws = await one.createWorkspace()
    const oldId = await keyId(one, ws, 'default')
    one.mistral.enqueueError(503, MISTRAL_503, {}, CHAT)
    t.equal((await chat(one, ws)).status, 503, 'Mistral\'s 503 opened the breaker')
    t.ok(await until(() => two.app.keyHealth.blocked(oldId) !== undefined), 'the other replica heard of it')
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
