import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { createKeyHealth, type KeyHealth } from '../../src/resilience/key-health.js'
import { createRedisBus } from '../../src/tenancy/invalidation-bus.js'
import { TEST_REDIS_URL } from '../helpers/app.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

// A key's cooldown ends at one instant on every replica: Redis' end, whatever pub/sub's delay to each replica and
// whatever each replica's clock says. Two replicas of key health share the real Redis; the second hears pub/sub
// through a link that holds every byte DELAY_MS, and its clock runs SKEW_MS ahead.

const CHANNEL = 'tmt:invalidations'
const DELAY_MS = 250
const SKEW_MS = 3_000
// what converting between clocks may cost: half a loopback round trip to TIME, plus a busy machine's late event loop
// (CI runs the test files two at a time on two cores); still well below DELAY_MS, which counting from the arrival
// would add
const TOLERANCE_MS = 100

async function replicas (t: Test) {
  const redisUrl = new URL(TEST_REDIS_URL)
  const proxy = await startTcpProxy(Number(redisUrl.port || 6379), redisUrl.hostname, { delayMs: DELAY_MS })
  const connections = [
    new Redis(TEST_REDIS_URL), new Redis(TEST_REDIS_URL), // A: client, subscriber
    new Redis(TEST_REDIS_URL), new Redis({ host: '127.0.0.1', port: proxy.port }) // B: client, late subscriber
  ]
  t.teardown(async () => {
    for (const connection of connections) connection.disconnect()
    await proxy.close()
  })
  await Promise.all(connections.map((connection) => once(connection, 'ready')))
  const aBus = createRedisBus(connections[0], connections[1])
  const bBus = createRedisBus(connections[2], connections[3])
  const a = createKeyHealth({ redis: connections[0], bus: aBus })
  const b = createKeyHealth({ redis: connections[2], bus: bBus, clock: () => Date.now() + SKEW_MS })
  // pub/sub drops what is published before a replica subscribes: a SUBSCRIBE answered on each bus's connection comes
  // after the bus's own
  await connections[1].subscribe(CHANNEL)
  await connections[3].subscribe(CHANNEL)
  // what each replica does when it starts: among others, it measures its offset to Redis' clock
  await Promise.all([a.load(), b.load()])
  return { a, b, aBus, redis: connections[0] }
}

/** Polls until the replica has the key cooling; returns when (test clock). */
async function heard (health: KeyHealth, keyId: string, timeoutMs = 3_000) {
  const deadline = Date.now() + timeoutMs
  while (health.blocked(keyId) === undefined) {
    if (Date.now() > deadline) throw new Error(`${keyId} never cooled`)
    await sleep(2)
  }
  return Date.now()
}

t.test('a cooldown ends at Redis\' instant on every replica, however late pub/sub brings it, whatever its clock',
  async (t) => {
    const { a, b, redis } = await replicas(t)
    const workspaceId = randomUUID()
    const keyId = `clock-${randomUUID()}`

    // before the call: the proxy holds the message DELAY_MS from when it reads it, later than this whatever the
    // event loop does (a time taken after the call could be late by a busy loop's delay)
    const askedAt = Date.now()
    const block = await a.rateLimited(workspaceId, keyId, 1_000, false)
    // Redis and this test share the host's clock: Redis' end reads as an instant of Date.now
    const redisUntil = Number(await redis.hget(`tmt:{ws:${workspaceId}}:key:${keyId}:block`, 'until'))
    t.ok(Math.abs(block.until - redisUntil) <= TOLERANCE_MS,
      `the replica that met the 429 ends it when Redis does (${block.until - redisUntil} ms apart)`)
    t.equal(b.blocked(keyId), undefined, 'the other replica has not heard yet')

    const heardAt = await heard(b, keyId)
    // a timer may fire up to a millisecond before its time by Date.now's reckoning
    t.ok(heardAt - askedAt >= DELAY_MS - 1, `pub/sub brought it ${heardAt - askedAt} ms after the call`)
    const bUntil = b.blocked(keyId)!.until - SKEW_MS // B's clock back to the host's
    t.ok(Math.abs(bUntil - redisUntil) <= TOLERANCE_MS,
      `and it ends it when Redis does too (${bUntil - redisUntil} ms apart), not ${DELAY_MS} ms later`)

    await sleep(redisUntil - Date.now() + TOLERANCE_MS)
    t.same([a.blocked(keyId), b.blocked(keyId)], [undefined, undefined], 'both lift it together, at Redis\' end')
  })

t.test('rolling upgrade: an older replica\'s message (only remainingMs) still cools the key; ours still carry it',
  async (t) => {
    const { a, aBus, redis } = await replicas(t)
    const listener = new Redis(TEST_REDIS_URL)
    t.teardown(() => listener.disconnect())
    await once(listener, 'ready')

    // an older replica's announcement: what was left, counted by the receiver from the message's arrival
    const oldKey = `clock-${randomUUID()}`
    let arrivedAt = 0
    aBus.subscribe((message) => {
      if (message?.type === 'key-health' && message.keyId === oldKey) arrivedAt = Date.now()
    })
    const publishedAt = Date.now()
    const old = { type: 'key-health', keyId: oldKey, reason: 'rate_limited', remainingMs: 1_000 }
    await redis.publish(CHANNEL, JSON.stringify(old))
    await heard(a, oldKey)
    const until = a.blocked(oldKey)!.until
    t.ok(until >= publishedAt + 1_000 && until <= arrivedAt + 1_000,
      `the key cools for 1 s from the arrival (${until - arrivedAt - 1_000} ms off)`)

    // an end it cannot read (not a number) is as if absent: what was left, from the arrival (never a NaN end, which
    // would never pass)
    const oddKey = `clock-${randomUUID()}`
    const oddSentAt = Date.now()
    await redis.publish(CHANNEL, JSON.stringify({ ...old, keyId: oddKey, until: 'soon' }))
    const oddHeardAt = await heard(a, oddKey)
    const oddUntil = a.blocked(oddKey)!.until
    t.ok(oddUntil >= oddSentAt + 1_000 && oddUntil <= oddHeardAt + 1_000,
      `an unreadable end: 1 s from the arrival (${oddUntil - oddHeardAt - 1_000} ms off)`)

    // this version's announcement, as an older replica reads it
    const workspaceId = randomUUID()
    const newKey = `clock-${randomUUID()}`
    const announced = new Promise<any>((resolve) => {
      listener.on('message', (_channel: string, raw: string) => {
        const message = JSON.parse(raw)
        if (message?.keyId === newKey) resolve(message)
      })
    })
    await listener.subscribe(CHANNEL)
    await a.rateLimited(workspaceId, newKey, 2_000, false)
    const redisUntil = Number(await redis.hget(`tmt:{ws:${workspaceId}}:key:${newKey}:block`, 'until'))
    t.match(await announced, {
      type: 'key-health', keyId: newKey, reason: 'rate_limited', until: redisUntil, remainingMs: 2_000
    }, 'the end by Redis\' clock, and what was left for older replicas')
  })

t.test('a replica whose offset was measured over slow round trips still ends its own cooldowns at Redis\' end',
  async (t) => {
    const client = new Redis(TEST_REDIS_URL)
    const subscriber = new Redis(TEST_REDIS_URL)
    t.teardown(() => { client.disconnect(); subscriber.disconnect() })
    await Promise.all([once(client, 'ready'), once(subscriber, 'ready')])
    // while it measures, every TIME answer takes SLOW_MS more to come back (as on a loaded machine): Redis read its
    // clock at the start of each round trip, so the offset, taken at their midpoints, is about SLOW_MS / 2 off, and a
    // cooldown converted through it ends that much late
    const SLOW_MS = 400
    const time = client.time.bind(client)
    client.time = (async () => {
      const answer = await time()
      await sleep(SLOW_MS)
      return answer
    }) as typeof client.time
    const health = createKeyHealth({ redis: client, bus: createRedisBus(client, subscriber) })
    await subscriber.subscribe(CHANNEL)
    await health.load()
    client.time = time

    const workspaceId = randomUUID()
    const keyId = `clock-${randomUUID()}`
    const askedAt = Date.now()
    const block = await health.rateLimited(workspaceId, keyId, 1_000, false)
    const answeredAt = Date.now()
    const redisUntil = Number(await client.hget(`tmt:{ws:${workspaceId}}:key:${keyId}:block`, 'until'))
    t.ok(redisUntil >= askedAt + 1_000 && redisUntil <= answeredAt + 1_000, 'Redis counted the 1 s within the call')
    // Redis took its instant somewhere within the call: the end this replica keeps lies within the call's window too.
    // What it returns is what it keeps after hearing its own announcement, which the bus hands it back at once: that
    // echo, converted through the offset, must not move the end either
    t.ok(block.until >= askedAt + 1_000 && block.until <= answeredAt + 1_000,
      `its end is within the call's window (${block.until - redisUntil} ms from Redis'), not ${SLOW_MS / 2} ms late`)
  })
