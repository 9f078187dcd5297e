import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { Redis } from 'ioredis'
import { createRedisBus, type Invalidation } from '../../src/tenancy/invalidation-bus.js'
import { TEST_REDIS_URL } from '../helpers/app.js'

t.test('the Redis bus: every replica hears each message once, its publisher included', async (t) => {
  const connections = Array.from({ length: 4 }, () => new Redis(TEST_REDIS_URL))
  t.teardown(() => { for (const connection of connections) connection.disconnect() })
  const a = createRedisBus(connections[0], connections[1])
  const b = createRedisBus(connections[2], connections[3])
  // the channel is every gateway's: other test files' gateways publish on it too, so only this test's keys count
  const marker = `bus-${randomUUID()}`
  const ours = (message: Invalidation | null) => message?.type === 'key-health' && message.keyId.startsWith(marker)
  const heard: Record<'a' | 'b', Invalidation[]> = { a: [], b: [] }
  a.subscribe((message) => { if (ours(message)) heard.a.push(message as Invalidation) })
  b.subscribe((message) => { if (ours(message)) heard.b.push(message as Invalidation) })
  // pub/sub drops what is published before a replica subscribes: a SUBSCRIBE answered on each bus's connection comes
  // after the bus's own
  await connections[1].subscribe('tmt:invalidations')
  await connections[3].subscribe('tmt:invalidations')

  const fromA: Invalidation = { type: 'key-health', keyId: `${marker}-a`, reason: 'rate_limited', remainingMs: 400 }
  const fromB: Invalidation = { type: 'key-health', keyId: `${marker}-b`, reason: 'breaker_open', remainingMs: 0 }
  await a.publish(fromA)
  t.same(heard.a, [fromA], 'the publisher hears its message at once, before Redis has it')
  await b.publish(fromB)
  await sleep(300)
  t.same(heard.a, [fromA, fromB], 'and never its echo: a cooldown is not extended by the round trip')
  const byKey = (list: Invalidation[]) => [...list].sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)))
  t.same(byKey(heard.b), byKey([fromA, fromB]), 'the other replica hears both, once each, without the echo tag')
})
