import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import t from 'tap'
import { createKeyHealth, type KeyHealth } from '../../src/resilience/key-health.js'
import { createLocalBus, createRedisBus } from '../../src/tenancy/invalidation-bus.js'
import { TEST_REDIS_URL } from '../helpers/app.js'
import { freePort } from '../helpers/gateway-process.js'

// The backoff of 429s without a hint counts 429s in a row, not 429s at once: the calls a burst had in flight when
// Mistral began refusing all come back refused, and none of them is a new step. And while Redis cannot answer, key
// health decides alone on each replica instead of failing the call it decides for.

const BASE_MS = 1_000

/** Eight calls in flight meet a 429 together, spread over two replicas when there are two. */
async function burst (replicas: KeyHealth[], workspaceId: string, keyId: string) {
  return Promise.all(Array.from({ length: 8 }, (_, i) =>
    replicas[i % replicas.length].rateLimited(workspaceId, keyId, undefined, false)))
}

t.test('one burst of refusals is one step of the backoff, on one Redis shared by two replicas', async (t) => {
  const connections = [new Redis(TEST_REDIS_URL), new Redis(TEST_REDIS_URL), new Redis(TEST_REDIS_URL),
    new Redis(TEST_REDIS_URL)]
  t.teardown(() => { for (const connection of connections) connection.disconnect() })
  await Promise.all(connections.map((connection) => once(connection, 'ready')))
  const replicas = [
    createKeyHealth({ redis: connections[0], bus: createRedisBus(connections[0], connections[1]), backoffBaseMs: BASE_MS }),
    createKeyHealth({ redis: connections[2], bus: createRedisBus(connections[2], connections[3]), backoffBaseMs: BASE_MS })
  ]
  const workspaceId = randomUUID()
  const keyId = `burst-${randomUUID()}`
  const startedAt = Date.now()
  const blocks = await burst(replicas, workspaceId, keyId)
  const longest = Math.max(...blocks.map((block) => block.until)) - startedAt
  t.ok(longest <= BASE_MS + 50, `the cooldown is the first step (${longest} ms), not the eighth`)
  t.equal(await connections[0].get(`tmt:{ws:${workspaceId}}:key:${keyId}:streak`), '1', 'one 429 in a row')
  t.ok(blocks.every((block) => block.until === blocks[0].until || Math.abs(block.until - blocks[0].until) <= 50),
    'every call of the burst was told the same end')

  // a call sent after the cooldown and refused again is the next step
  await new Promise((resolve) => setTimeout(resolve, Math.max(...blocks.map((block) => block.until)) - Date.now() + 20))
  const again = await replicas[1].rateLimited(workspaceId, keyId, undefined, false)
  t.equal(await connections[0].get(`tmt:{ws:${workspaceId}}:key:${keyId}:streak`), '2', 'two in a row')
  const second = again.until - Date.now()
  t.ok(second >= BASE_MS - 50 && second <= 2 * BASE_MS + 50, `the second step: 1 to 2 s (${second} ms)`)
})

t.test('one burst of refusals is one step of the backoff, in one process without Redis', async (t) => {
  const health = createKeyHealth({ redis: null, bus: createLocalBus(), backoffBaseMs: BASE_MS })
  const startedAt = Date.now()
  const blocks = await burst([health], 'ws', 'key')
  const longest = Math.max(...blocks.map((block) => block.until)) - startedAt
  t.ok(longest <= BASE_MS + 50, `the cooldown is the first step (${longest} ms), not the eighth`)
})

t.test('Redis cannot answer: a 429 still cools the key, failures still open the breaker, one probe goes', async (t) => {
  const redis = new Redis({
    host: '127.0.0.1', port: await freePort(), lazyConnect: true, enableOfflineQueue: false, retryStrategy: () => null
  })
  redis.on('error', () => {})
  t.teardown(() => redis.disconnect())
  const health = createKeyHealth({
    redis, bus: createLocalBus(), backoffBaseMs: BASE_MS, breakerThreshold: 3, breakerOpenMs: 200
  })

  const cooled = await health.rateLimited('ws', 'cooled', 30_000, false)
  t.equal(cooled.reason, 'rate_limited')
  t.ok(Math.abs(cooled.until - Date.now() - 30_000) <= 100, 'Mistral\'s wait, kept on this replica')
  t.same(health.blocked('cooled')?.reason, 'rate_limited', 'calls stay away from the key')
  const hintless = await health.rateLimited('ws', 'bare', undefined, false)
  t.ok(hintless.until - Date.now() <= BASE_MS, 'a 429 without a hint: the first step of the backoff')
  const spent = await health.rateLimited('ws', 'spent', undefined, true)
  t.equal(spent.reason, 'spend_limit', 'a spend limit is told apart')

  for (let i = 0; i < 3; i++) await health.failed('ws', 'broken')
  t.same(health.blocked('broken')?.reason, 'breaker_open', 'three failures open the breaker')
  await new Promise((resolve) => setTimeout(resolve, 250))
  t.equal(await health.claimProbe('ws', 'broken'), true, 'its open time over, one call may probe')
  t.equal(await health.claimProbe('ws', 'broken'), false, 'and only one')
})
