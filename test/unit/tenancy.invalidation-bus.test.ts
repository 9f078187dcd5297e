// The Redis bus on fake connections and a clock of its own: what a real Redis cannot be made to do on cue, i.e. refuse
// or time out exactly the publishes a test names, for minutes.
import { EventEmitter } from 'node:events'
import { mock } from 'node:test'
import type { Redis } from 'ioredis'
import t from 'tap'
import { createRedisBus, type Invalidation } from '../../src/tenancy/invalidation-bus.js'

const FORGET_EVERYTHING = 'null'
const revoked: Invalidation = { type: 'token', hash: 'ab'.repeat(32) }
const blocked: Invalidation = { type: 'key-health', keyId: 'k1', reason: 'rate_limited', remainingMs: 1_000 }
const forgotten: Invalidation = { type: 'key-forgotten', keyId: 'k1' }

/** A command connection whose publishes fail while `failing` is set: at once when down, after a timeout when up. */
function fakeClient () {
  const sent: string[] = []
  const client = Object.assign(new EventEmitter(), {
    status: 'ready',
    failing: false,
    sent,
    async publish (_channel: string, payload: string) {
      sent.push(payload)
      if (client.failing) throw new Error(client.status === 'ready' ? 'Command timed out' : 'Connection is closed.')
      return 1
    }
  })
  return client
}

function fakeSubscriber () {
  return Object.assign(new EventEmitter(), { async subscribe () { return 1 } })
}

function busOn (t: { teardown (fn: () => unknown): void }, client: ReturnType<typeof fakeClient>) {
  const bus = createRedisBus(client as unknown as Redis, fakeSubscriber() as unknown as Redis)
  t.teardown(() => bus.close())
  return bus
}

/** The forget-everything messages sent so far. */
const forgets = (client: ReturnType<typeof fakeClient>) =>
  client.sent.filter((payload) => payload === FORGET_EVERYTHING)

/** Lets the publishes' settlements run, then moves the clock. */
async function tick (ms: number) {
  for (let i = 0; i < 5; i++) await Promise.resolve()
  mock.timers.tick(ms)
  for (let i = 0; i < 5; i++) await Promise.resolve()
}

t.beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }))
t.afterEach(() => mock.timers.reset())

t.test('a key-health notice Redis did not take is not followed by a forget-everything', async (t) => {
  const client = fakeClient()
  const bus = busOn(t, client)
  client.failing = true
  await bus.publish(blocked)
  await tick(120_000)
  client.failing = false
  client.status = 'ready'
  client.emit('ready')
  await tick(120_000)
  t.same(forgets(client), [], 'it invalidates no cache: nothing for the others to forget')
})

t.test('a token revocation Redis did not take while down is followed by one forget-everything when it is back',
  async (t) => {
    const client = fakeClient()
    const bus = busOn(t, client)
    client.status = 'reconnecting'
    client.failing = true
    await bus.publish(revoked)
    await bus.publish(revoked)
    await tick(120_000)
    t.same(forgets(client), [], 'nothing is tried while the connection is down')
    client.failing = false
    client.status = 'ready'
    client.emit('ready')
    await tick(0)
    t.same(forgets(client), [FORGET_EVERYTHING], 'once, when it is ready again')
    await tick(120_000)
    client.emit('ready')
    await tick(0)
    t.same(forgets(client), [FORGET_EVERYTHING], 'and never again: nothing was missed since')
  })

t.test('a replaced key\'s forgetting Redis did not take is followed by a forget-everything when it is back',
  async (t) => {
    const client = fakeClient()
    const bus = busOn(t, client)
    client.status = 'reconnecting'
    client.failing = true
    await bus.publish(forgotten)
    client.failing = false
    client.status = 'ready'
    client.emit('ready')
    await tick(0)
    t.same(forgets(client), [FORGET_EVERYTHING], 'the other replicas hold what they knew of the key: they reload it')
  })

t.test('forget-everything messages that keep timing out on a connection still up are tried at growing intervals',
  async (t) => {
    const client = fakeClient()
    const bus = busOn(t, client)
    client.failing = true
    await bus.publish(revoked)
    const triedAt: number[] = []
    for (let second = 1; second <= 200; second++) {
      const before = forgets(client).length
      await tick(1_000)
      if (forgets(client).length > before) triedAt.push(second)
    }
    t.same(triedAt, [1, 3, 7, 15, 31, 63, 123, 183], 'after 1 s, then twice as long each time, up to a minute')

    client.failing = false
    await tick(60_000)
    t.equal(forgets(client).length, triedAt.length + 1, 'the next one goes through')
    client.failing = true
    await bus.publish(revoked)
    const after = forgets(client).length
    await tick(1_000)
    t.equal(forgets(client).length, after + 1, 'and the next episode starts again at 1 s')
  })
