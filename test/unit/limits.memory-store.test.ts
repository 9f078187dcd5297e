// The in-process store on a clock of its own: what the contract test (test/integration/limits.contract.test.ts) cannot
// wait for in real time, i.e. minutes of admissions, a lease cut short, an hour of settled ids.
import t from 'tap'
import { createMemoryStore } from '../../src/limits/memory-store.js'
import type { AdmitInput, ScopeInput } from '../../src/limits/store.js'

const MINUTE = 60_000
const HOUR = 3_600_000
const START = Date.UTC(2026, 11, 6, 12)
const DAY = { id: '2026-12-06', s: Date.UTC(2026, 11, 6), e: Date.UTC(2026, 11, 7) }
const MONTH = { id: '2026-12', s: Date.UTC(2026, 11, 1), e: Date.UTC(2027, 0, 1) }
const PREFIX = 'tmt:{ws:unit}'
const P = `${PREFIX}:w`
const SPEND = `${P}:spend:m:${MONTH.id}`

function storeAt (start = START) {
  const clock = { now: start }
  return { clock, store: createMemoryStore(() => clock.now) }
}

let ids = 0
const call = (scopes: ScopeInput[], over: Partial<AdmitInput> = {}): AdmitInput => ({
  id: `call-${ids++}`, scopes, day: DAY, month: MONTH, cost: 100, promptCost: 10, outputPerMillion: 0, maxTokens: 10,
  n: 1, promptTokens: 5, clamp: false, lease: MINUTE, ...over
})

t.test('rpm: over minutes of uneven traffic, each decision counts exactly the minute\'s calls', async (t) => {
  const { clock, store } = storeAt()
  const scopes = [{ p: P, rpm: 50 }]
  const admittedAt: number[] = []
  let denials = 0
  // bursts and lulls, so that the minute's calls are dropped both one at a time and many at once
  for (let i = 0; i < 3000; i++) {
    clock.now += i % 400 < 300 ? 7 : 900
    const inMinute = admittedAt.filter((at) => at > clock.now - MINUTE)
    const result = await store.admit(PREFIX, call(scopes))
    if (inMinute.length >= 50) {
      denials++
      if (result.kind !== 'denied' || result.retryAfterMs !== inMinute[inMinute.length - 50] + MINUTE + 1 - clock.now) {
        return t.fail(`call ${i}: expected an rpm denial, got ${JSON.stringify(result)}`)
      }
    } else {
      const rpm = [50, 50 - inMinute.length - 1, inMinute.length > 0 ? inMinute[0] + MINUTE - clock.now : MINUTE]
      if (result.kind !== 'admitted' || JSON.stringify(result.rpm) !== JSON.stringify(rpm)) {
        return t.fail(`call ${i}: expected admitted with rpm ${JSON.stringify(rpm)}, got ${JSON.stringify(result)}`)
      }
      admittedAt.push(clock.now)
    }
  }
  t.ok(denials > 0 && admittedAt.length > 500, `${admittedAt.length} admitted, ${denials} denied, each as counted`)
  const inspected = await store.inspect(PREFIX, [{ p: P, spend: [] }])
  t.equal(inspected.scopes[0].rpm, admittedAt.filter((at) => at > clock.now - MINUTE).length, 'inspect agrees')
})

t.test('a renewal that shortens a lease frees the slot and the reserved spend at its new end', async (t) => {
  const { clock, store } = storeAt()
  const scopes = [{ p: P, conc: 1, caps: { m: 150 } }]
  t.ok(await store.seed(PREFIX, [[SPEND, 0, [], []]], []))
  const first = call(scopes)
  t.match(await store.admit(PREFIX, first), { kind: 'admitted' })
  await store.renew(PREFIX, [{ id: first.id, cost: 100, spend: [SPEND], conc: [`${P}:conc`] }], 1_000)
  clock.now += 999
  t.match(await store.admit(PREFIX, call(scopes)), { kind: 'denied', reason: 'cap_m' }, 'held until its new end')
  clock.now += 1
  t.match(await store.admit(PREFIX, call(scopes)), { kind: 'admitted' }, 'released at its new end, not its first')
})

t.test('settle: an id counts once for the hour after its settlement, then again', async (t) => {
  const { clock, store } = storeAt()
  t.ok(await store.seed(PREFIX, [[SPEND, 0, [], []]], []))
  const settle = (id: string) =>
    store.settle(PREFIX, { id, cost: 10, tokens: 0, reservedTokens: 0, spend: [[SPEND, 1_000_000]], thresholds: [] })
  const settled = async () => (await store.inspect(PREFIX, [{ p: P, spend: [SPEND] }])).scopes[0].spend[0][1]
  await settle('x')
  clock.now += 1
  await settle('y')
  clock.now += HOUR - 1
  await settle('x')
  t.equal(await settled(), 20, 'x an hour later to the ms: still the same settlement')
  clock.now += 1
  await settle('z') // the sweep of a later settlement drops what is an hour old or more, as the Redis script does
  await settle('x')
  await settle('y')
  t.equal(await settled(), 50, 'x and y (an hour old to the ms) count again')
  clock.now += 1
  await settle('x')
  t.equal(await settled(), 50, 'x, settled again a ms ago: the same settlement')
})

t.test('the counters of past days and months go as their Redis keys expire; a lifetime counter stays', async (t) => {
  const { clock, store } = storeAt()
  const DAY_MS = 24 * HOUR
  const counters = { day: `${P}:spend:d:${DAY.id}`, month: SPEND, lifetime: `${P}:spend:l` }
  await store.seed(PREFIX, [[counters.day, 10, [], []], [counters.month, 20, [], []], [counters.lifetime, 30, [], []]], [])
  const settled = async () => (await store.inspect(PREFIX, [{ p: P, spend: Object.values(counters) }])).scopes[0].spend
    .map(([, value]) => value)
  // a seed of a later day's counter is when the store drops what expired
  const seedAt = async (sinceFirstWrite: number) => {
    clock.now = START + sinceFirstWrite
    await store.seed(PREFIX, [[`${P}:spend:d:later-${sinceFirstWrite}`, 0, [], []]], [])
  }
  await seedAt(3 * DAY_MS - 1)
  t.same(await settled(), [10, 20, 30], 'three days less a millisecond after the first write, all are kept')
  await seedAt(3 * DAY_MS)
  t.same(await settled(), [-1, 20, 30], 'three days after it, the day\'s counter is gone')
  await seedAt(35 * DAY_MS - 1)
  t.same(await settled(), [-1, 20, 30], 'the month\'s is kept 35 days')
  await seedAt(35 * DAY_MS)
  t.same(await settled(), [-1, -1, 30], '35 days after it, the month\'s too; the lifetime counter stays')
})

t.test('a counter first written by a settlement (its cost vouched for) expires from that write, seeded or not',
  async (t) => {
    const { clock, store } = storeAt()
    const DAY_MS = 24 * HOUR
    const day = `${P}:spend:d:vouched`
    await store.settle(PREFIX, { id: 'late', cost: 5, tokens: 0, reservedTokens: 0, spend: [[day, 100]], thresholds: [] })
    const settledOf = async () => (await store.inspect(PREFIX, [{ p: P, spend: [day] }])).scopes[0].spend[0][1]
    clock.now = START + DAY_MS
    t.equal(await store.seed(PREFIX, [[day, 0, [], ['late']]], []), true)
    t.equal(await settledOf(), 5, 'seeded a day later, with the cost it vouched for')
    clock.now = START + 3 * DAY_MS
    await store.seed(PREFIX, [[`${P}:spend:d:next`, 0, [], []]], [])
    t.equal(await settledOf(), -1, 'gone three days after the settlement, not after the seed')
  })
