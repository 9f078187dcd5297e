// One contract, three stores: process memory, one Redis, and a Redis Cluster of three masters that this file starts
// itself. Every case asserts on values, so a store that decides differently from the others fails here.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Cluster, Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { COUNTER_TTL_MS } from '../../src/limits/counter-expiry.js'
import { createMemoryStore } from '../../src/limits/memory-store.js'
import { buildTestApp } from '../helpers/app.js'
import { createRedisStore } from '../../src/limits/redis-store.js'
import { scanKeys } from '../../src/redis.js'
import type {
  AdmissionStore, AdmitInput, AdmitResult, DenyReason, HeldCall, PeriodInput, ScopeInput, SeedEntry
} from '../../src/limits/store.js'

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'
const run = promisify(execFile)
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const HOUR = 3_600_000
const DAY_MS = 24 * HOUR
// calendar periods around the start of the run, wide enough that no midnight falls inside it
const START = Date.now()
const DAY: PeriodInput = { id: new Date(START).toISOString().slice(0, 10), s: START - HOUR, e: START + 6 * HOUR }
const MONTH: PeriodInput = { id: new Date(START).toISOString().slice(0, 7), s: START - 10 * DAY_MS, e: START + 20 * DAY_MS }

// the price of a call: 1000 µ of prompt, 2.7 µ per output token; the worst case of 1000 output tokens is W
const PROMPT_COST = 1000
const OUTPUT_PER_MILLION = 2_700_000
const MAX_TOKENS = 1000
const W = PROMPT_COST + Math.ceil(MAX_TOKENS * OUTPUT_PER_MILLION / 1e6)

type Admitted = Extract<AdmitResult, { kind: 'admitted' }>
type Denied = Extract<AdmitResult, { kind: 'denied' }>

/** an admission request with the defaults above; `cost` follows maxTokens and the prices unless given */
function call (scopes: ScopeInput[], over: Partial<AdmitInput> = {}): AdmitInput {
  const maxTokens = over.maxTokens ?? MAX_TOKENS
  const promptCost = over.promptCost ?? PROMPT_COST
  const outputPerMillion = over.outputPerMillion ?? OUTPUT_PER_MILLION
  return {
    id: randomUUID(),
    scopes,
    day: DAY,
    month: MONTH,
    n: 1,
    promptTokens: 100,
    clamp: false,
    lease: 30_000,
    ...over,
    maxTokens,
    promptCost,
    outputPerMillion,
    cost: over.cost ?? promptCost + Math.ceil(maxTokens * outputPerMillion / 1e6)
  }
}

/** what an admitted call holds, as the gateway keeps it for renewal */
const held = (input: AdmitInput, spend: string[], conc: string[] = []): HeldCall => ({ id: input.id, cost: input.cost, spend, conc })

const spendKey = (p: string, kind: 'd' | 'm' | 'l', month: PeriodInput = MONTH) =>
  kind === 'd' ? `${p}:spend:d:${DAY.id}` : kind === 'm' ? `${p}:spend:m:${month.id}` : `${p}:spend:l`

function admitted (t: Test, result: AdmitResult, what = 'admitted'): Admitted {
  t.match(result, { kind: 'admitted' }, what)
  return result as Admitted
}

/** and `reached`: the cap whose 100 % the refusal reported, if any (these cases' refusals can name no other) */
function denied (t: Test, result: AdmitResult, reason: DenyReason, what = `denied: ${reason}`):
Denied & { reached?: string } {
  t.match(result, { kind: 'denied', reason }, what)
  const refusal = result as Denied
  return { ...refusal, reached: refusal.crossed?.find(([, percent]) => percent === 100)?.[0] }
}

function between (t: Test, value: number | null, low: number, high: number, what: string) {
  t.ok(value !== null && value >= low && value <= high, `${what}: ${value} in [${low}, ${high}]`)
}

interface Fixture {
  store: AdmissionStore
  /** a fresh workspace prefix `tmt:{ws:<uuid>}` */
  prefix: () => Promise<string>
  /** deletes every key of a workspace behind the store's back, as FLUSHALL or an eviction would (Redis only) */
  wipe?: (prefix: string) => Promise<void>
  /** every key of a workspace (Redis only) */
  keys?: (prefix: string) => Promise<string[]>
}

/** The contract: every case runs against the fixture's store and asserts on values. */
function contract (t: Test, fixture: Fixture) {
  const { store } = fixture
  const test = (name: string, fn: (t: Test) => Promise<void>) => t.test(name, fn)

  async function seeded (caps: ScopeInput['caps'], settled: Partial<Record<'d' | 'm' | 'l', number>> = {}) {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const entries = Object.keys(caps ?? {}).map((kind) =>
      [spendKey(p, kind as 'd' | 'm' | 'l'), settled[kind as 'd' | 'm' | 'l'] ?? 0, [], []] as SeedEntry)
    await store.seed(prefix, entries, [])
    return { prefix, p, scopes: [{ p, caps }] as ScopeInput[] }
  }

  const spendOf = async (prefix: string, keys: string[]) =>
    (await store.inspect(prefix, [{ p: `${prefix}:w`, spend: keys }])).scopes[0].spend

  test('seed: the first admit names every missing cap; seeding is set-if-absent', async (t) => {
    const prefix = await fixture.prefix()
    const w = `${prefix}:w`
    const token = `${prefix}:t:app`
    const scopes: ScopeInput[] = [{ p: w, caps: { d: 50_000, m: 100_000, l: 1_000_000 } }, { p: token, caps: { m: 20_000 } }]
    const order = (list: Array<{ scope: number, kind: string, key: string }>) => [...list].sort((a, b) => a.key.localeCompare(b.key))

    const first = await store.admit(prefix, call(scopes))
    t.equal(first.kind, 'seed')
    t.same(order(first.kind === 'seed' ? first.missing : []), order([
      { scope: 0, kind: 'd', key: spendKey(w, 'd') },
      { scope: 0, kind: 'm', key: spendKey(w, 'm') },
      { scope: 0, kind: 'l', key: spendKey(w, 'l') },
      { scope: 1, kind: 'm', key: spendKey(token, 'm') }
    ]))
    t.same(await spendOf(prefix, [spendKey(w, 'm')]), [[spendKey(w, 'm'), -1, 0]], 'never seeded: settled -1')

    // a partial seed: the admit asks for the rest
    await store.seed(prefix, [[spendKey(w, 'd'), 0, [], []]], [])
    const second = await store.admit(prefix, call(scopes))
    t.same(order(second.kind === 'seed' ? second.missing : []), order([
      { scope: 0, kind: 'm', key: spendKey(w, 'm') },
      { scope: 0, kind: 'l', key: spendKey(w, 'l') },
      { scope: 1, kind: 'm', key: spendKey(token, 'm') }
    ]), 'only the keys still missing')

    await store.seed(prefix, [[spendKey(w, 'm'), 1234, [], []], [spendKey(w, 'l'), 5000, [], []], [spendKey(token, 'm'), 0, [], []]], [])
    const third = admitted(t, await store.admit(prefix, call(scopes)), 'admitted once seeded')
    t.equal(third.cost, W)
    t.equal(third.maxTokens, MAX_TOKENS)
    t.equal(third.budgetLeft, 20_000 - W, 'the token cap binds')

    // seeding again (a late replica, another ledger sum) changes nothing
    await store.seed(prefix, [[spendKey(w, 'd'), 9999, [], []], [spendKey(w, 'm'), 9999, [], []], [spendKey(w, 'l'), 9999, [], []],
      [spendKey(token, 'm'), 9999, [], []]], [])
    const seen = await store.inspect(prefix, [
      { p: w, spend: [spendKey(w, 'd'), spendKey(w, 'm'), spendKey(w, 'l')] },
      { p: token, spend: [spendKey(token, 'm')] }
    ])
    t.same(seen.scopes[0].spend, [[spendKey(w, 'd'), 0, W], [spendKey(w, 'm'), 1234, W], [spendKey(w, 'l'), 5000, W]])
    t.same(seen.scopes[1].spend, [[spendKey(token, 'm'), 0, W]])
    const fourth = admitted(t, await store.admit(prefix, call(scopes)))
    t.equal(fourth.budgetLeft, 20_000 - 2 * W)
  })

  test('period: a day or month that does not hold the store\'s now is sent back with that now', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, rpm: 10, caps: { m: 100_000 } }]
    const now = Date.now()
    const stale: Array<[string, Partial<AdmitInput>]> = [
      ['day ahead', { day: { id: 'ahead', s: now + HOUR, e: now + 2 * HOUR } }],
      ['day past', { day: { id: 'past', s: now - 2 * DAY_MS, e: now - DAY_MS } }],
      ['month ahead', { month: { id: 'ahead', s: now + 10 * DAY_MS, e: now + 40 * DAY_MS } }],
      ['month past', { month: { id: 'past', s: now - 40 * DAY_MS, e: now - 10 * DAY_MS } }]
    ]
    for (const [what, over] of stale) {
      const before = Date.now()
      const result = await store.admit(prefix, call(scopes, over))
      t.equal(result.kind, 'period', what)
      t.same(Object.keys(result).sort(), ['kind', 'now'], `${what}: kind and now only`)
      if (result.kind === 'period') between(t, result.now, before - 1000, Date.now() + 1000, `${what}: the store's now`)
    }
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].rpm, 0, 'nothing taken')
    // the period check comes before seeding; with the right periods the call goes on
    t.equal((await store.admit(prefix, call(scopes))).kind, 'seed')
    await store.seed(prefix, [[spendKey(p, 'm'), 0, [], []]], [])
    admitted(t, await store.admit(prefix, call(scopes)))
  })

  test('rpm: a limit of 5 admits exactly 5 of 8 calls', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const results: AdmitResult[] = []
    for (let i = 0; i < 8; i++) results.push(await store.admit(prefix, call([{ p, rpm: 5 }])))
    t.same(results.map((result) => result.kind), ['admitted', 'admitted', 'admitted', 'admitted', 'admitted', 'denied', 'denied', 'denied'])
    t.same((results[0] as Admitted).rpm, [5, 4, 60_000], 'the first call: 4 left, a full minute to reset')
    const fifth = results[4] as Admitted
    t.equal(fifth.rpm?.[1], 0, 'the fifth call: none left')
    between(t, fifth.rpm?.[2] ?? null, 58_000, 60_000, 'the fifth call: reset when the first leaves the minute')
    const sixth = denied(t, results[5], 'rpm')
    t.equal(sixth.scope, 0)
    between(t, sixth.retryAfterMs, 59_000, 60_001, 'retryAfterMs of the sixth')
    const usage = (await store.inspect(prefix, [{ p, spend: [] }])).scopes[0]
    t.equal(usage.rpm, 5, 'denials are not counted')
    between(t, usage.rpmReset, 58_000, 60_000, 'rpmReset')

    // a stricter token scope denies, with its index, and the workspace scope takes nothing from the denied call
    const other = await fixture.prefix()
    const scopes: ScopeInput[] = [{ p: `${other}:w`, rpm: 10 }, { p: `${other}:t:app`, rpm: 2 }]
    admitted(t, await store.admit(other, call(scopes)))
    admitted(t, await store.admit(other, call(scopes)))
    t.equal(denied(t, await store.admit(other, call(scopes)), 'rpm').scope, 1, 'the token scope denies')
    const both = await store.inspect(other, [{ p: `${other}:w`, spend: [] }, { p: `${other}:t:app`, spend: [] }])
    t.same(both.scopes.map((scope) => scope.rpm), [2, 2])
  })

  test('rpm headers: the scope with the fewest requests left names its limit and what it has left', async (t) => {
    const prefix = await fixture.prefix()
    const scopes: ScopeInput[] = [{ p: `${prefix}:w`, rpm: 10 }, { p: `${prefix}:t:app`, rpm: 4 }]
    // five calls of other tokens: the workspace has 10 - 5 - 1 = 4 left after this call, the token 4 - 0 - 1 = 3
    for (let i = 0; i < 5; i++) admitted(t, await store.admit(prefix, call([scopes[0]])))
    const result = admitted(t, await store.admit(prefix, call(scopes)))
    t.same(result.rpm?.slice(0, 2), [4, 3], 'the token\'s limit of 4, 3 left')
  })

  test('tpm: reserves prompt + maxTokens × n, denies an overflow, refuses a call larger than the limit, settles to actual', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, tpm: 1000 }]
    const settle = (id: string, tokens: number, reservedTokens: number) =>
      store.settle(prefix, { id, cost: 0, tokens, reservedTokens, spend: [], thresholds: [] })

    const a = call(scopes, { promptTokens: 100, maxTokens: 150, n: 2 })
    const first = admitted(t, await store.admit(prefix, a))
    t.equal(first.tokens, 400, '100 + 150 × 2')
    t.same(first.tpm, [1000, 600, 60_000])
    const b = call(scopes, { promptTokens: 100, maxTokens: 150, n: 2 })
    t.same(admitted(t, await store.admit(prefix, b)).tpm, [1000, 200, 60_000])
    const over = denied(t, await store.admit(prefix, call(scopes, { promptTokens: 100, maxTokens: 150, n: 2 })), 'tpm')
    t.equal(over.scope, 0)
    between(t, over.retryAfterMs, 58_000, 61_000, 'retryAfterMs: when the tokens leave the minute')
    const huge = denied(t, await store.admit(prefix, call(scopes, { promptTokens: 100, maxTokens: 1000 })), 'tpm_too_large')
    t.equal(huge.retryAfterMs, null, 'no wait ever makes it fit')
    const e = call(scopes, { promptTokens: 100, maxTokens: 100 })
    t.same(admitted(t, await store.admit(prefix, e), 'exactly fills the minute').tpm, [1000, 0, 60_000])
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].tpm, 1000)

    // settle replaces each reservation by what Mistral reported
    await settle(a.id, 120, 400)
    await settle(b.id, 80, 400)
    await settle(e.id, 150, 200)
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].tpm, 350, '120 + 80 + 150')
    await settle(a.id, 999, 400)
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].tpm, 350, 'a second settle changes nothing')
    t.same(admitted(t, await store.admit(prefix, call(scopes, { promptTokens: 100, maxTokens: 275, n: 2 })), 'the refund is usable').tpm,
      [1000, 0, 60_000])
  })

  test('tpm: each admission sees the minute\'s sum, through settlements of calls from seconds before', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const limit = 1_000_000
    const scopes: ScopeInput[] = [{ p, tpm: limit }]
    // what the minute holds by this test's own count: each call's reservation, or what it settled for
    const open: Array<{ id: string, tokens: number }> = []
    let used = 0
    for (let i = 0; i < 30; i++) {
      const input = call(scopes, { promptTokens: 50 + (i * 37) % 200, maxTokens: 100 + (i * 53) % 400 })
      const result = admitted(t, await store.admit(prefix, input), `call ${i}`)
      t.equal(result.tpm?.[1], limit - used - result.tokens, `call ${i} sees the minute's ${used} tokens`)
      used += result.tokens
      open.push({ id: input.id, tokens: result.tokens })
      // settle the oldest call in flight every other call, for less than it reserved, now and then for more
      if (i % 2 === 1) {
        const { id, tokens } = open.shift()!
        const actual = i % 6 === 5 ? tokens + 40 : Math.floor(tokens / 3)
        await store.settle(prefix, { id, cost: 0, tokens: actual, reservedTokens: tokens, spend: [], thresholds: [] })
        used += actual - tokens
      }
      // the calls span three or four seconds: each second's first admission works the minute out again
      await sleep(100)
    }
    const usage = (await store.inspect(prefix, [{ p, spend: [] }])).scopes[0]
    t.equal(usage.tpm, used, 'the buckets hold what the calls saw')
  })

  test('rpd: a limit of 3 a day admits 3, then denies until their hour leaves the day', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, rpd: 3 }]
    for (let i = 0; i < 3; i++) admitted(t, await store.admit(prefix, call(scopes)), `call ${i}`)
    const over = denied(t, await store.admit(prefix, call(scopes)), 'rpd')
    t.equal(over.scope, 0)
    // the three share this hour's bucket, which leaves the day 24 hours after the hour ends
    t.equal(over.retryAfterMs, (Math.floor(over.now / HOUR) + 25) * HOUR - over.now)
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].rpd, 3, 'denials are not counted')
  })

  test('concurrency: a limit of 2 denies the third; settling frees a slot', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, conc: 2 }]
    const a = call(scopes)
    admitted(t, await store.admit(prefix, a))
    admitted(t, await store.admit(prefix, call(scopes)))
    const third = denied(t, await store.admit(prefix, call(scopes)), 'concurrency')
    t.equal(third.scope, 0)
    t.ok(third.retryAfterMs !== null && third.retryAfterMs > 0, 'a retry hint')
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 2)
    await store.settle(prefix, { id: a.id, cost: 0, tokens: 0, reservedTokens: 0, spend: [], thresholds: [] })
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 1)
    admitted(t, await store.admit(prefix, call(scopes)), 'the freed slot')
    denied(t, await store.admit(prefix, call(scopes)), 'concurrency', 'full again')
  })

  test('no command overtakes a settlement asked for before it, even one not awaited', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, conc: 1 }]
    const nothing = { cost: 0, tokens: 0, reservedTokens: 0, spend: [], thresholds: [] }
    const a = call(scopes)
    admitted(t, await store.admit(prefix, a))
    // the Redis store holds a settlement back to share the next command's write: it must still go first
    const settledA = store.settle(prefix, { id: a.id, ...nothing })
    const b = call(scopes)
    admitted(t, await store.admit(prefix, b), 'the slot a gave back')
    const settledB = store.settle(prefix, { id: b.id, ...nothing })
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 0, 'an inspection sees both settled')
    t.same(await Promise.all([settledA, settledB]), [[], []])
    // alone, a settlement still goes out by itself, whether it frees a slot or not
    for (const freesSlot of [false, true]) {
      const c = call(scopes)
      admitted(t, await store.admit(prefix, c))
      await store.settle(prefix, { id: c.id, ...nothing }, freesSlot)
    }
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 0)
  })

  test('concurrency: a lease not renewed expires and frees its slot', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, conc: 1 }]
    admitted(t, await store.admit(prefix, call(scopes, { lease: 300 })))
    denied(t, await store.admit(prefix, call(scopes)), 'concurrency')
    await sleep(450) // a late wake-up only makes the lease more expired
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 0, 'the lease ran out')
    admitted(t, await store.admit(prefix, call(scopes)), 'the slot is free')
  })

  test('concurrency: renew keeps a lease past its original end', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, conc: 1 }]
    // wide margins (hundreds of ms either side of each check) so that a loaded machine's late timers do not matter
    const a = call(scopes, { lease: 1_500 })
    admitted(t, await store.admit(prefix, a))
    await sleep(700)
    await store.renew(prefix, [held(a, [], [`${p}:conc`])], 1_500)
    await sleep(1_100) // 1.8 s: past the original lease, inside the renewed one
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 1)
    denied(t, await store.admit(prefix, call(scopes)), 'concurrency', 'still held')
    await sleep(800)
    admitted(t, await store.admit(prefix, call(scopes)), 'free once renewal stops')
  })

  test('concurrency: a lease renewed for longer than twice its length still holds', async (t) => {
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const scopes: ScopeInput[] = [{ p, conc: 1 }]
    const a = call(scopes, { lease: 1_000 })
    admitted(t, await store.admit(prefix, a))
    // renewed every 250 ms (the gateway renews every lease / 3) for 2.25 s, more than twice the lease
    for (let i = 0; i < 9; i++) {
      await sleep(250)
      await store.renew(prefix, [held(a, [], [`${p}:conc`])], 1_000)
    }
    t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 1, 'the lease is counted')
    denied(t, await store.admit(prefix, call(scopes)), 'concurrency', 'the slot is still held')
  })

  test('caps: admits while settled + reserved + W fits, then denies until the month ends', async (t) => {
    const { prefix, p, scopes } = await seeded({ m: 3 * W + 500 }, { m: 500 })
    t.equal(admitted(t, await store.admit(prefix, call(scopes))).budgetLeft, 2 * W)
    t.equal(admitted(t, await store.admit(prefix, call(scopes))).budgetLeft, W)
    t.equal(admitted(t, await store.admit(prefix, call(scopes)), 'exactly at the cap').budgetLeft, 0)
    const full = denied(t, await store.admit(prefix, call(scopes)), 'cap_m')
    t.equal(full.scope, 0)
    t.equal(full.retryAfterMs, MONTH.e - full.now, 'retry when the month ends')
    denied(t, await store.admit(prefix, call(scopes, { clamp: true })), 'cap_m', 'not even the prompt fits: no clamp')
    t.same(await spendOf(prefix, [spendKey(p, 'm')]), [[spendKey(p, 'm'), 500, 3 * W]])
  })

  test('caps: where only the prompt fits, clamp lowers maxTokens to what the budget affords', async (t) => {
    const remaining = 2600
    const { prefix, p, scopes } = await seeded({ m: 2 * W + remaining })
    admitted(t, await store.admit(prefix, call(scopes)))
    admitted(t, await store.admit(prefix, call(scopes)))
    const refused = denied(t, await store.admit(prefix, call(scopes, { clamp: false })), 'cap_m', 'clamp=false: denied')
    between(t, refused.retryAfterMs, MONTH.e - Date.now() - 2000, MONTH.e - START, 'retryAfterMs ≈ month end − now')
    t.equal(refused.retryAfterMs, MONTH.e - refused.now)

    const clamped = admitted(t, await store.admit(prefix, call(scopes, { clamp: true })), 'clamp=true: admitted')
    t.ok(clamped.maxTokens > 0 && clamped.maxTokens < MAX_TOKENS, `maxTokens lowered to ${clamped.maxTokens}`)
    t.equal(clamped.cost, PROMPT_COST + Math.ceil(clamped.maxTokens * OUTPUT_PER_MILLION / 1e6), 'cost of the clamped call')
    t.ok(clamped.cost <= remaining, `cost ${clamped.cost} ≤ remaining ${remaining}`)
    t.ok(PROMPT_COST + Math.ceil((clamped.maxTokens + 1) * OUTPUT_PER_MILLION / 1e6) > remaining, 'one more token would not fit')
    t.equal(clamped.maxTokens, 592)
    t.equal(clamped.tokens, 100 + 592)
    t.equal(clamped.budgetLeft, remaining - clamped.cost)
    t.same(await spendOf(prefix, [spendKey(p, 'm')]), [[spendKey(p, 'm'), 0, 2 * W + clamped.cost]])
    denied(t, await store.admit(prefix, call(scopes, { clamp: true })), 'cap_m', 'then not even the prompt fits')
  })

  test('caps: lifetime denials have no retry; output not priced per token is never clamped', async (t) => {
    const { prefix, p, scopes } = await seeded({ l: 5000 }, { l: 4000 })
    const refused = denied(t, await store.admit(prefix, call(scopes)), 'cap_l')
    t.equal(refused.retryAfterMs, null, 'a lifetime cap never resets')
    t.equal(denied(t, await store.admit(prefix, call(scopes, { clamp: true, promptCost: 1000 })), 'cap_l',
      'the prompt alone uses the whole remainder').retryAfterMs, null)
    t.equal(denied(t, await store.admit(prefix, call(scopes, { clamp: true, promptCost: 500, outputPerMillion: 0, cost: 1500 })), 'cap_l',
      'a flat price cannot be clamped').retryAfterMs, null)
    const clamped = admitted(t, await store.admit(prefix, call(scopes, { clamp: true, promptCost: 900 })))
    t.equal(clamped.maxTokens, 37)
    t.equal(clamped.cost, 1000)
    t.equal(clamped.budgetLeft, 0)
    t.same(await spendOf(prefix, [spendKey(p, 'l')]), [[spendKey(p, 'l'), 4000, 1000]])
  })

  test('caps: the tightest cap of every scope binds, with its scope and period', async (t) => {
    const prefix = await fixture.prefix()
    const w = `${prefix}:w`
    const token = `${prefix}:t:app`
    const scopes: ScopeInput[] = [{ p: w, caps: { m: 1_000_000 } }, { p: token, caps: { d: 5000 } }]
    await store.seed(prefix, [[spendKey(w, 'm'), 0, [], []], [spendKey(token, 'd'), 2000, [], []]], [])
    const refused = denied(t, await store.admit(prefix, call(scopes)), 'cap_d')
    t.equal(refused.scope, 1, 'the token scope')
    t.equal(refused.retryAfterMs, DAY.e - refused.now, 'retry when the day ends')
    const seen = await store.inspect(prefix, [{ p: w, spend: [spendKey(w, 'm')] }, { p: token, spend: [spendKey(token, 'd')] }])
    t.same(seen.scopes.map((scope) => scope.spend), [[[spendKey(w, 'm'), 0, 0]], [[spendKey(token, 'd'), 2000, 0]]], 'nothing reserved')
  })

  test('caps: a denial names the cap the call cannot fit under whose period ends last; a lifetime\'s first', async (t) => {
    // a call of 2000 µ: the day has 500 left, the month (or the lifetime) 1000. It fits under neither, so it is the
    // month that it must wait for, not midnight
    const cost = { promptCost: 2000, outputPerMillion: 0, cost: 2000 }
    const monthly = await seeded({ d: 10_000, m: 20_000 }, { d: 9_500, m: 19_000 })
    const month = denied(t, await store.admit(monthly.prefix, call(monthly.scopes, cost)), 'cap_m')
    t.equal(month.retryAfterMs, MONTH.e - month.now, 'retry when the month ends')
    const lifetime = await seeded({ d: 10_000, l: 20_000 }, { d: 9_500, l: 19_000 })
    t.equal(denied(t, await store.admit(lifetime.prefix, call(lifetime.scopes, cost)), 'cap_l').retryAfterMs, null,
      'a lifetime cap: no retry')
    // the daily cap alone is too small: it binds, with its reset
    const daily = await seeded({ d: 10_000, m: 20_000 }, { d: 9_500, m: 17_000 })
    const day = denied(t, await store.admit(daily.prefix, call(daily.scopes, cost)), 'cap_d')
    t.equal(day.retryAfterMs, DAY.e - day.now, 'retry at midnight')
    // with clamping, a cap the smallest clamped call fits under does not bind: the prompt (1000 µ) + one token fits the
    // month's 1500, not the day's 500
    const clamped = await seeded({ d: 10_000, m: 20_000 }, { d: 9_500, m: 18_500 })
    denied(t, await store.admit(clamped.prefix, call(clamped.scopes, { clamp: true })), 'cap_d', 'clamped: the day')
  })

  test('caps: denials that tie on their reset name the same cap in every store', async (t) => {
    const cost = { promptCost: 2000, outputPerMillion: 0, cost: 2000 }
    // the last day of the month: the day and the month end together, both with 500 left. The month is named
    const prefix = await fixture.prefix()
    const p = `${prefix}:w`
    const lastDay: PeriodInput = { ...DAY, e: MONTH.e - 1 }
    const last: PeriodInput = { ...MONTH, e: lastDay.e }
    await store.seed(prefix, [[spendKey(p, 'd'), 9_500, [], []], [spendKey(p, 'm', last), 19_500, [], []]], [])
    const refused = denied(t, await store.admit(prefix, call([{ p, caps: { d: 10_000, m: 20_000 } }],
      { ...cost, day: lastDay, month: last })), 'cap_m', 'the day and the month end together: the month')
    t.equal(refused.retryAfterMs, last.e - refused.now)
    // the workspace's month and a token's month, both with 500 left: the workspace's is named
    const other = await fixture.prefix()
    const [w, token] = [`${other}:w`, `${other}:t:app`]
    const scopes: ScopeInput[] = [{ p: w, caps: { m: 20_000 } }, { p: token, caps: { m: 20_000 } }]
    await store.seed(other, [[spendKey(w, 'm'), 19_500, [], []], [spendKey(token, 'm'), 19_500, [], []]], [])
    t.equal(denied(t, await store.admit(other, call(scopes, cost)), 'cap_m').scope, 0, 'the workspace\'s')
  })

  test('settle: actual cost replaces the reservation, once per request id; thresholds are reported once per period', async (t) => {
    const { prefix, p, scopes } = await seeded({ m: 100_000, l: 1_000_000 }, { l: 480_000 })
    const m = spendKey(p, 'm')
    const l = spendKey(p, 'l')
    const spend: Array<[string, number]> = [[m, 100_000], [l, 1_000_000]]
    const settle = (id: string, cost: number, spendKeys = spend) =>
      store.settle(prefix, { id, cost, tokens: 500, reservedTokens: 1100, spend: spendKeys, thresholds: [50, 100] })

    const a = call(scopes)
    admitted(t, await store.admit(prefix, a))
    t.same(await spendOf(prefix, [m, l]), [[m, 0, W], [l, 480_000, W]], 'reserved the worst case')
    t.same(await settle(a.id, 30_000), [[l, 50]], 'the lifetime cap crosses 50 %')
    t.same(await spendOf(prefix, [m, l]), [[m, 30_000, 0], [l, 510_000, 0]], 'reserved back to 0, settled the actual cost')
    t.same(await settle(a.id, 99_999), [], 'settling twice reports nothing')
    t.same(await spendOf(prefix, [m, l]), [[m, 30_000, 0], [l, 510_000, 0]], 'and changes nothing')

    const b = call(scopes)
    admitted(t, await store.admit(prefix, b))
    t.same(await settle(b.id, 25_000), [[m, 50]], 'the month crosses 50 %')
    const c = call(scopes)
    admitted(t, await store.admit(prefix, c))
    t.same(await settle(c.id, 1000), [], '50 % is not reported again')
    const d = call(scopes)
    admitted(t, await store.admit(prefix, d))
    t.same(await settle(d.id, 50_000), [[m, 100]], 'only 100 % is new')
    t.same(await spendOf(prefix, [m, l]), [[m, 106_000, 0], [l, 586_000, 0]], 'settle never denies after the fact')
    t.equal(denied(t, await store.admit(prefix, call(scopes)), 'cap_m').reached, undefined,
      'the refusal after it is no new 100 %')

    // the next month is a new key: its thresholds are reported afresh
    const next: PeriodInput = { ...MONTH, id: `${MONTH.id}-next` }
    const m2 = spendKey(p, 'm', next)
    t.equal((await store.admit(prefix, call(scopes, { month: next }))).kind, 'seed')
    await store.seed(prefix, [[m2, 0, [], []]], [])
    const e = call(scopes, { month: next })
    admitted(t, await store.admit(prefix, e))
    t.same(await settle(e.id, 60_000, [[m2, 100_000], [l, 1_000_000]]), [[m2, 50]], 'a new period reports 50 % again')
    t.same(await spendOf(prefix, [m, m2, l]), [[m, 106_000, 0], [m2, 60_000, 0], [l, 646_000, 0]])
  })

  test('caps: a refusal is the cap\'s 100 % only once not even a micro-unit is left, once per period', async (t) => {
    const base = await seeded({ m: 10_000 })
    const { prefix, p } = base
    // the thresholds its settlements report: 100 % alone, so that a refusal can report nothing else
    const scopes = base.scopes.map((scope) => ({ ...scope, th: [100] }))
    const m = spendKey(p, 'm')
    const settle = (id: string, cost: number) =>
      store.settle(prefix, { id, cost, tokens: 0, reservedTokens: 0, spend: [[m, 10_000]], thresholds: [100] })
    const a = call(scopes)
    const b = call(scopes)
    admitted(t, await store.admit(prefix, a))
    admitted(t, await store.admit(prefix, b))
    const c = call(scopes, { clamp: true })
    t.equal(admitted(t, await store.admit(prefix, c)).cost, 2_599, 'the third fits clamped: 1 µ of room left')
    // the calls in flight hold the room: they settle in a moment, usually for far less, and admission waits for them
    const busy = denied(t, await store.admit(prefix, call(scopes, { clamp: true })), 'cap_m', 'refused while they run')
    t.same([busy.busy, busy.reached], [true, undefined], 'no crossing: calls in flight hold the room')
    t.same(await settle(a.id, W), [])
    t.same(await settle(b.id, W), [])
    t.same(await settle(c.id, 2_599), [])
    t.same(await spendOf(prefix, [m]), [[m, 9_999, 0]])
    // 1 µ left: this call is too large for it, not the cap used up
    const refused = denied(t, await store.admit(prefix, call(scopes, { clamp: true })), 'cap_m', 'nothing in flight')
    t.same([refused.busy, refused.reached], [false, undefined], 'no 100 % while a micro-unit is left')
    // the least a call is reserved (a batch job's creation) still fits, and its settlement is the cap's 100 %
    const least = (over: Partial<AdmitInput> = {}) =>
      call(scopes, { promptCost: 1, outputPerMillion: 0, maxTokens: 0, ...over })
    const one = least()
    t.equal(admitted(t, await store.admit(prefix, one), 'a call of 1 µ').cost, 1)
    t.same(await settle(one.id, 1), [[m, 100]], 'settled spend at the cap: 100 %')
    t.equal(denied(t, await store.admit(prefix, least()), 'cap_m').reached, undefined,
      'the refusals after it: no new 100 %')

    // a cap lowered below what is settled, which no settlement crossed: its first refusal is its 100 %, once
    const lowered = await seeded({ m: 20_000 }, { m: 12_000 })
    const lm = spendKey(lowered.p, 'm')
    const lowerCap: ScopeInput[] = [{ p: lowered.p, caps: { m: 10_000 }, th: [100] }]
    const first = denied(t, await store.admit(lowered.prefix, call(lowerCap, { clamp: true })), 'cap_m', 'lowered')
    t.same([first.busy, first.reached], [false, lm], 'a cap used up: its first refusal is the 100 % crossing')
    t.equal(denied(t, await store.admit(lowered.prefix, least({ scopes: lowerCap })), 'cap_m').reached, undefined,
      'once per period')
    t.same(await store.settle(lowered.prefix,
      { id: randomUUID(), cost: 5, tokens: 0, reservedTokens: 0, spend: [[lm, 10_000]], thresholds: [100] }), [],
    'a charge that takes settled spend further past the cap reports it no more')

    // the next month is a new key, here re-seeded at the cap from the ledger: its first refusal is reported afresh
    const next: PeriodInput = { ...MONTH, id: `${MONTH.id}-next` }
    const m2 = spendKey(p, 'm', next)
    await store.seed(prefix, [[m2, 10_000, [], []]], [])
    t.equal(denied(t, await store.admit(prefix, call(scopes, { month: next })), 'cap_m').reached, m2, 'a new period')
  })

  test('caps: a call larger than what is left is no 100 %: settled spend reports it when it gets there', async (t) => {
    // a monthly cap of 10.00 with 1.00 settled (10 %)
    const { prefix, p, scopes } = await seeded({ m: 10_000_000 }, { m: 1_000_000 })
    const m = spendKey(p, 'm')
    // a prompt alone of 20.00, whether its output may be clamped or not, or a flat price (embeddings, OCR)
    const large = [{ clamp: true }, { clamp: false }, { outputPerMillion: 0, maxTokens: 0 }]
    for (const over of large) {
      const refused = denied(t, await store.admit(prefix, call(scopes, { promptCost: 20_000_000, ...over })), 'cap_m')
      t.same([refused.busy, refused.reached], [false, undefined], `no 100 % at 10 %: ${JSON.stringify(over)}`)
    }
    const next = call(scopes)
    admitted(t, await store.admit(prefix, next), 'an ordinary call after it: the cap has room')
    const spend: Array<[string, number]> = [[m, 10_000_000]]
    t.same(await store.settle(prefix, { id: next.id, cost: 9_000_000, tokens: 0, reservedTokens: 0, spend,
      thresholds: [50, 80, 100] }), [[m, 50], [m, 80], [m, 100]], 'settled spend reaching the cap crosses 100 % too')
    t.same(await spendOf(prefix, [m]), [[m, 10_000_000, 0]])
    t.equal(denied(t, await store.admit(prefix, call(scopes)), 'cap_m').reached, undefined, 'then refused: once')
  })

  test('expired reservations are released on the next admit of the workspace', async (t) => {
    const { prefix, p, scopes } = await seeded({ m: 2 * W })
    const m = spendKey(p, 'm')
    // leases of 2 s renewed after 1 s leave 700 ms either side of each check, room for a loaded CI machine
    const a = call(scopes, { lease: 2_000 })
    admitted(t, await store.admit(prefix, a))
    admitted(t, await store.admit(prefix, call(scopes, { lease: 2_000 })))
    denied(t, await store.admit(prefix, call(scopes)), 'cap_m', 'both reservations hold the budget')
    await sleep(1_000)
    await store.renew(prefix, [held(a, [m])], 2_000)
    await sleep(1_300) // the second reservation has expired, the renewed first has not
    admitted(t, await store.admit(prefix, call(scopes)), 'the expired reservation gave its spend back')
    t.same(await spendOf(prefix, [m]), [[m, 0, 2 * W]], 'the renewed one still holds')
    denied(t, await store.admit(prefix, call(scopes)), 'cap_m')

    // a late settle of a released reservation records its cost and refunds nothing twice
    await sleep(1_500)
    admitted(t, await store.admit(prefix, call(scopes)), 'the first reservation expired too')
    t.same(await spendOf(prefix, [m]), [[m, 0, 2 * W]])
    await store.settle(prefix, { id: a.id, cost: 1000, tokens: 0, reservedTokens: 0, spend: [[m, 2 * W]], thresholds: [] })
    t.same(await spendOf(prefix, [m]), [[m, 1000, 2 * W]])
  })

  test('a burst of 50 concurrent calls against a cap that affords 10 worst cases admits exactly 10', async (t) => {
    const { prefix, p, scopes } = await seeded({ m: 10 * W })
    const results = await Promise.all(Array.from({ length: 50 }, () => store.admit(prefix, call(scopes))))
    t.equal(results.filter((result) => result.kind === 'admitted').length, 10)
    t.equal(results.filter((result) => result.kind === 'denied' && result.reason === 'cap_m').length, 40)
    t.same(await spendOf(prefix, [spendKey(p, 'm')]), [[spendKey(p, 'm'), 0, 10 * W]])

    // with clamping, one call takes the remainder and the cap still holds
    const edge = await seeded({ m: 10 * W + 2600 })
    const clamped = await Promise.all(Array.from({ length: 50 }, () => store.admit(edge.prefix, call(edge.scopes, { clamp: true }))))
    const ok = clamped.filter((result): result is Admitted => result.kind === 'admitted')
    t.equal(ok.length, 11)
    t.same(ok.map((result) => result.maxTokens).sort((a, b) => a - b), [592, ...Array(10).fill(MAX_TOKENS)])
    t.same(await spendOf(edge.prefix, [spendKey(edge.p, 'm')]), [[spendKey(edge.p, 'm'), 0, 10 * W + 2599]])
  })

  if (fixture.wipe) {
    const wipe = fixture.wipe
    test('a spend counter lost behind the store\'s back is seeded again, never counted twice', async (t) => {
      const { prefix, p, scopes } = await seeded({ m: 100_000 })
      const m = spendKey(p, 'm')
      const a = call(scopes)
      admitted(t, await store.admit(prefix, a))
      await store.settle(prefix, { id: a.id, cost: 3000, tokens: 0, reservedTokens: 0, spend: [[m, 100_000]], thresholds: [] })
      t.same(await spendOf(prefix, [m]), [[m, 3000, 0]])

      await wipe(prefix)
      t.same(await spendOf(prefix, [m]), [[m, -1, 0]], 'gone')
      const again = await store.admit(prefix, call(scopes))
      t.same(again, { kind: 'seed', missing: [{ scope: 0, kind: 'm', key: m }] }, 'the next admit asks to seed')
      await store.seed(prefix, [[m, 3000, [], []]], []) // the ledger's sum
      t.equal(admitted(t, await store.admit(prefix, call(scopes))).budgetLeft, 100_000 - 3000 - W)
      await store.seed(prefix, [[m, 3000, [], []]], []) // a second replica seeding late
      t.same(await spendOf(prefix, [m]), [[m, 3000, W]], 'seeded once')
    })

    test('after a loss: calls in flight are put back by renew, settles are vouched for and counted once', async (t) => {
      const { prefix, p, scopes } = await seeded({ m: 100_000 })
      const conc = [...scopes]
      conc[0] = { ...scopes[0], conc: 5 }
      const m = spendKey(p, 'm')
      const [a, b, c] = [call(conc), call(conc), call(conc)]
      for (const input of [a, b, c]) admitted(t, await store.admit(prefix, input))
      await wipe(prefix)

      // a settles while the counter is missing: its cost is vouched for under its request id
      await store.settle(prefix, { id: a.id, cost: 2000, tokens: 0, reservedTokens: 0, spend: [[m, 100_000]], thresholds: [50] })
      t.same(await store.snapshot(prefix, [m]), { vouched: [[a.id]], held: [] }, 'a vouched for, nothing held')
      // b and c are still in flight: renewal puts their reservations and leases back; a settled one stays out
      await store.renew(prefix, [held(b, [m], [`${p}:conc`]), held(c, [m], [`${p}:conc`]), held(a, [m], [`${p}:conc`])], 30_000)
      await store.renew(prefix, [held(b, [m], [`${p}:conc`])], 30_000) // twice: nothing counted twice
      t.same(await spendOf(prefix, [m]), [[m, -1, 2 * W]], 'b and c reserved again, a not')
      t.equal((await store.inspect(prefix, [{ p, spend: [] }])).scopes[0].conc, 2, 'b and c hold their slots again')
      const snapshot = await store.snapshot(prefix, [m])
      t.same({ vouched: snapshot.vouched, held: [...snapshot.held].sort() }, { vouched: [[a.id]], held: [b.id, c.id].sort() },
        'the snapshot: a vouched for, b and c held')

      // the ledger holds a (written meanwhile) and the calls settled before the loss: 5000 in all
      t.equal(await store.seed(prefix, [[m, 5000, [a.id], snapshot.vouched[0]]], snapshot.held), true, 'seeded')
      t.same(await spendOf(prefix, [m]), [[m, 5000, 2 * W]], 'a counted once, from the ledger')
      await store.settle(prefix, { id: b.id, cost: 1500, tokens: 0, reservedTokens: 0, spend: [[m, 100_000]], thresholds: [] })
      t.same(await spendOf(prefix, [m]), [[m, 6500, W]], 'b settles as usual')
      t.same((await store.snapshot(prefix, [m])).vouched, [[]], 'nothing left vouched for')

      // c settles during a second loss and its record is not written before the seed: counted from the vouch
      await wipe(prefix)
      await store.settle(prefix, { id: c.id, cost: 700, tokens: 0, reservedTokens: 0, spend: [[m, 100_000]], thresholds: [] })
      const again = await store.snapshot(prefix, [m])
      t.equal(await store.seed(prefix, [[m, 6500, [], again.vouched[0]]], again.held), true)
      t.same(await spendOf(prefix, [m]), [[m, 7200, 0]], 'c counted once, from its vouch')
    })

    test('a call vouched for after the snapshot counts once: from its vouch if it was held, else after a new snapshot', async (t) => {
      const { prefix, p, scopes } = await seeded({ m: 100_000 })
      const m = spendKey(p, 'm')
      const [a, b] = [call(scopes), call(scopes)]
      for (const input of [a, b]) admitted(t, await store.admit(prefix, input))
      await wipe(prefix)
      // a is put back (held at the snapshot); b's replica has not put it back yet
      await store.renew(prefix, [held(a, [m], [])], 30_000)
      const snapshot = await store.snapshot(prefix, [m])
      t.same(snapshot, { vouched: [[]], held: [a.id] })

      // both settle before the seed; the ledger was read after b's record was written: its sum (without held a) is 900
      for (const [input, cost] of [[a, 400], [b, 900]] as const) {
        await store.settle(prefix, { id: input.id, cost, tokens: 0, reservedTokens: 0, spend: [[m, 100_000]], thresholds: [] })
      }
      t.equal(await store.seed(prefix, [[m, 900, [], snapshot.vouched[0]]], snapshot.held), false,
        'b is unknown to the snapshot and may be in the sum: refused')
      t.same(await spendOf(prefix, [m]), [[m, -1, 0]], 'nothing written')

      const next = await store.snapshot(prefix, [m])
      t.same({ vouched: next.vouched.map((ids) => [...ids].sort()), held: next.held }, { vouched: [[a.id, b.id].sort()], held: [] })
      // the ledger, asked about a and b, holds b only (a's record is not written yet): 900, and a from its vouch
      t.equal(await store.seed(prefix, [[m, 900, [b.id], next.vouched[0]]], next.held), true)
      t.same(await spendOf(prefix, [m]), [[m, 1300, 0]], 'a and b counted once each')
    })

    test('a seed takes any number of vouches: more than one Lua unpack holds', async (t) => {
      const { prefix, p } = await seeded({ m: 100_000_000 })
      const m = spendKey(p, 'm')
      await wipe(prefix)
      const ids = Array.from({ length: 9_000 }, (_, i) => `vouch-${i}`)
      await Promise.all(ids.map((id) =>
        store.settle(prefix, { id, cost: 2, tokens: 0, reservedTokens: 0, spend: [[m, 100_000_000]], thresholds: [] })))
      const snapshot = await store.snapshot(prefix, [m])
      t.equal(snapshot.vouched[0].length, 9_000)
      t.equal(await store.seed(prefix, [[m, 1000, [], snapshot.vouched[0]]], snapshot.held), true)
      t.same(await spendOf(prefix, [m]), [[m, 1000 + 2 * 9_000, 0]], 'every vouch counted, once')
      t.same((await store.snapshot(prefix, [m])).vouched, [[]], 'and none left behind')
    })

    test('a workspace marked new seeds at once: nothing of it can be in flight', async (t) => {
      const prefix = await fixture.prefix()
      const p = `${prefix}:w`
      const scopes: ScopeInput[] = [{ p, caps: { m: 100_000 } }]
      const missing = [{ scope: 0, kind: 'm', key: spendKey(p, 'm') }]
      t.match(await store.admit(prefix, call(scopes, { quiet: 800 })), { kind: 'seed', missing, recovery: { waitMs: 800 } },
        'unknown here: it may have been lost, so wait')
      const fresh = await fixture.prefix()
      await store.markNew(fresh)
      const freshScopes: ScopeInput[] = [{ p: `${fresh}:w`, caps: { m: 100_000 } }]
      t.same(await store.admit(fresh, call(freshScopes, { quiet: 800 })),
        { kind: 'seed', missing: [{ scope: 0, kind: 'm', key: spendKey(`${fresh}:w`, 'm') }] }, 'marked new: seed now')
    })

    test('a loss makes the replicas wait `quiet` ms, from the first to see it, before the seed', async (t) => {
      const { prefix, p, scopes } = await seeded({ m: 100_000 })
      const m = spendKey(p, 'm')
      admitted(t, await store.admit(prefix, call(scopes, { quiet: 800 })), 'seeded: no wait')
      await wipe(prefix)
      const first = await store.admit(prefix, call(scopes, { quiet: 800 }))
      t.match(first, { kind: 'seed', missing: [{ key: m }], recovery: { waitMs: 800 } }, 'the loss: wait the full quiet time')
      await sleep(300)
      const second = await store.admit(prefix, call(scopes, { quiet: 800 }))
      const since = first.kind === 'seed' ? first.recovery?.since : undefined
      t.equal(second.kind === 'seed' ? second.recovery?.since : undefined, since, 'the same recovery')
      between(t, second.kind === 'seed' ? second.recovery?.waitMs ?? null : null, 200, 520, 'what is left of it')
      await sleep(second.kind === 'seed' ? second.recovery?.waitMs ?? 0 : 0)
      t.same(await store.admit(prefix, call(scopes, { quiet: 800 })), { kind: 'seed', missing: [{ scope: 0, kind: 'm', key: m }] },
        'after it: seed now')
      await store.seed(prefix, [[m, 0, [], []]], [])
      admitted(t, await store.admit(prefix, call(scopes, { quiet: 800 })), 'then admitted')
    })
  }

  test('forget: a deleted workspace leaves nothing in the store, another keeps all it had', async (t) => {
    const [gone, kept] = [await fixture.prefix(), await fixture.prefix()]
    const m = (prefix: string) => spendKey(`${prefix}:w`, 'm')
    const scopesOf = (prefix: string): ScopeInput[] =>
      [{ p: `${prefix}:w`, rpm: 100, rpd: 1000, tpm: 10_000_000, conc: 10, caps: { m: 100_000 } }]
    const inFlight: Record<string, AdmitInput> = {}
    for (const prefix of [gone, kept]) {
      await store.seed(prefix, [[m(prefix), 0, [], []]], [])
      const first = call(scopesOf(prefix))
      admitted(t, await store.admit(prefix, first))
      await store.settle(prefix, { id: first.id, cost: 7, tokens: 100, reservedTokens: first.promptTokens + MAX_TOKENS,
        spend: [[m(prefix), 100_000]], thresholds: [] }, true)
      inFlight[prefix] = call(scopesOf(prefix))
      admitted(t, await store.admit(prefix, inFlight[prefix]), 'a second call, in flight')
    }
    const usage = async (prefix: string) =>
      (await store.inspect(prefix, [{ p: `${prefix}:w`, spend: [m(prefix)] }])).scopes[0]
    for (const prefix of [gone, kept]) {
      t.match(await usage(prefix), { rpm: 2, rpd: 2, conc: 1, spend: [[m(prefix), 7, W]] }, 'before: each has its state')
    }
    const keptKeys = await fixture.keys?.(kept)

    // the call in flight settles just before the deletion, its settlement held back to share a write (not awaited)
    const last = inFlight[gone]
    void store.settle(gone, { id: last.id, cost: 9, tokens: 100, reservedTokens: last.promptTokens + MAX_TOKENS,
      spend: [[m(gone), 100_000]], thresholds: [] }, false)
    await store.forget(gone)
    t.match(await usage(gone), { rpm: 0, rpd: 0, tpm: 0, conc: 0, spend: [[m(gone), -1, 0]] },
      'the deleted workspace: no call counted, no slot held, no spend counter')
    if (fixture.keys) t.same(await fixture.keys(gone), [], 'not one key of it is left, the held settlement\'s included')
    t.match(await usage(kept), { rpm: 2, rpd: 2, conc: 1, spend: [[m(kept), 7, W]] }, 'the other: all it had')
    if (fixture.keys) t.same(await fixture.keys(kept), keptKeys, 'and every key of it')
    t.match(await store.admit(gone, call(scopesOf(gone))), { kind: 'seed', missing: [{ key: m(gone) }] },
      'a call under the deleted prefix starts from nothing: its counter is seeded again')
  })
}

// --- the stores ----------------------------------------------------------------------------------------------------

const newPrefix = () => `tmt:{ws:${randomUUID()}}`

/** deletes the keys of a workspace on one node */
async function deleteKeys (node: Redis, prefix: string) {
  const keys = await keysOf(node, prefix)
  // every key of a workspace shares its hash slot, so one DEL takes them all, on Redis Cluster too
  if (keys.length > 0) await node.del(...keys)
}

/** the keys of a workspace on one node, sorted */
async function keysOf (node: Redis, prefix: string) {
  const keys: string[] = []
  for await (const batch of scanKeys(node, `${prefix}*`)) keys.push(...batch)
  return keys.sort()
}

async function canListen (port: number) {
  return new Promise<boolean>((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** a loopback port whose cluster bus port (+10000) is free too */
async function freePort (taken: number[]) {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 30_000)
    if (taken.some((other) => Math.abs(other - port) < 2)) continue
    if (await canListen(port) && await canListen(port + 10_000)) return port
  }
  throw new Error('no free port pair on 127.0.0.1')
}

async function until (what: string, deadline: number, check: () => Promise<boolean>) {
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

interface RedisCluster {
  ports: number[]
  ms: number
  stop: () => Promise<void>
}

/** three masters on free loopback ports, no replicas, no persistence; stopped (and their files removed) by stop() */
async function startCluster (): Promise<RedisCluster> {
  const began = Date.now()
  const deadline = began + 30_000
  const dir = await mkdtemp(join(tmpdir(), 'tmt-cluster-'))
  const children: ChildProcess[] = []
  const logs = new Map<number, string>()
  const stop = async () => {
    await Promise.all(children.map((child) => new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      const force = setTimeout(() => child.kill('SIGKILL'), 3000)
      child.once('exit', () => { clearTimeout(force); resolve() })
      child.kill('SIGTERM')
    })))
    await rm(dir, { recursive: true, force: true })
  }
  try {
    const ports: number[] = []
    for (let i = 0; i < 3; i++) ports.push(await freePort(ports))
    for (const port of ports) {
      const child = spawn('redis-server', [
        '--port', String(port), '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`),
        '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--bind', '127.0.0.1', '--dir', dir
      ], { stdio: ['ignore', 'pipe', 'pipe'] })
      children.push(child)
      logs.set(port, '')
      const keep = (chunk: Buffer) => logs.set(port, ((logs.get(port) ?? '') + chunk.toString()).slice(-4000))
      child.stdout?.on('data', keep)
      child.stderr?.on('data', keep)
    }
    // --cluster create waits for the nodes to meet in 1 s steps: slow on a loaded machine, so the bounds are wide
    const cli = (...args: string[]) => run('redis-cli', args, { timeout: 30_000 })
    for (const port of ports) {
      await until(`redis-server on ${port}`, deadline, async () => (await cli('-p', String(port), 'ping')).stdout.trim() === 'PONG')
    }
    await cli('--cluster', 'create', ...ports.map((port) => `127.0.0.1:${port}`), '--cluster-replicas', '0', '--cluster-yes')
    for (const port of ports) {
      await until(`cluster_state:ok on ${port}`, deadline, async () =>
        (await cli('-p', String(port), 'cluster', 'info')).stdout.includes('cluster_state:ok'))
    }
    return { ports, ms: Date.now() - began, stop }
  } catch (err) {
    await stop()
    const detail = [...logs].map(([port, log]) => `--- redis-server ${port}\n${log}`).join('\n')
    throw new Error(`${(err as Error).message}\n${detail}`)
  }
}

t.test('memory store', async (t) => {
  contract(t, { store: createMemoryStore(), prefix: async () => newPrefix() })
})

t.test('redis store', async (t) => {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, commandTimeout: 5000 })
  const prefixes: string[] = []
  t.teardown(async () => {
    for (const prefix of prefixes) await deleteKeys(redis, prefix)
    await redis.quit()
  })
  const store = createRedisStore(redis)
  const prefix = async () => {
    const prefix = newPrefix()
    prefixes.push(prefix)
    return prefix
  }
  contract(t, { store, prefix, wipe: (prefix) => deleteKeys(redis, prefix), keys: (prefix) => keysOf(redis, prefix) })

  t.test('rpd: calls an older version added to the hour\'s bucket alone still count (a rolling upgrade)', async (t) => {
    const ws = await prefix()
    const p = `${ws}:w`
    const scopes: ScopeInput[] = [{ p, rpd: 5 }]
    admitted(t, await store.admit(ws, call(scopes)))
    // what a replica of the version before the window's sum writes for each call it admits: the bucket, no sum
    const hour = Math.floor(Number((await redis.time())[0]) / 3600)
    await redis.hincrby(`${p}:rpd`, String(hour), 3)
    admitted(t, await store.admit(ws, call(scopes)), 'the fifth of the day')
    denied(t, await store.admit(ws, call(scopes)), 'rpd', 'the sixth: 1 + 3 + 1 made the day\'s 5')
    t.equal((await store.inspect(ws, [{ p, spend: [] }])).scopes[0].rpd, 5)
  })

  t.test('a day\'s and a month\'s spend counters expire some days after their first write, a lifetime\'s never',
    async (t) => {
      const ws = await prefix()
      const p = `${ws}:w`
      const [day, month, lifetime] = [spendKey(p, 'd'), spendKey(p, 'm'), spendKey(p, 'l')]
      const ttls = async (keys: string[]) => Promise.all(keys.map((key) => redis.pttl(key)))
      const near = (ttl: number, wanted: number) => ttl > wanted - 60_000 && ttl <= wanted
      await store.seed(ws, [[day, 0, [], []], [month, 0, [], []], [lifetime, 0, [], []]], [])
      const [dayTtl, monthTtl, lifetimeTtl] = await ttls([day, month, lifetime])
      t.ok(near(dayTtl, COUNTER_TTL_MS.day), `seeded: the day's counter expires in ${dayTtl} ms`)
      t.ok(near(monthTtl, COUNTER_TTL_MS.month), `the month's in ${monthTtl} ms`)
      t.equal(lifetimeTtl, -1, 'the lifetime counter never')

      // first written by a settlement that vouches for its cost (the counter missing), or by a reservation put back
      const [vouched, putBack] = [`${p}:spend:d:vouched`, `${p}:spend:m:put-back`]
      await store.settle(ws, { id: randomUUID(), cost: 5, tokens: 0, reservedTokens: 0, spend: [[vouched, 100]], thresholds: [] })
      await store.renew(ws, [{ id: randomUUID(), cost: 5, spend: [putBack], conc: [] }], 30_000)
      await store.flush()
      const [vouchedTtl, putBackTtl] = await ttls([vouched, putBack])
      t.ok(near(vouchedTtl, COUNTER_TTL_MS.day), `a vouch: ${vouchedTtl} ms`)
      t.ok(near(putBackTtl, COUNTER_TTL_MS.month), `a reservation put back: ${putBackTtl} ms`)

      // later writes leave the expiry where the first one set it
      await redis.pexpire(day, 5_000)
      await store.settle(ws, { id: randomUUID(), cost: 5, tokens: 0, reservedTokens: 0, spend: [[day, 100]], thresholds: [] })
      await store.flush()
      const after = await redis.pttl(day)
      t.ok(after > 0 && after <= 5_000, `a settlement does not push it back (${after} ms left)`)
    })

  t.test('the commands of one turn of the event loop leave in one write, and all are answered', async (t) => {
    const ws = await prefix()
    const scopes: ScopeInput[] = [{ p: `${ws}:w`, rpm: 100 }]
    // ioredis sends a script whole on its first use on a connection, by its digest after: one admission first, so
    // that the three below are the same command
    admitted(t, await store.admit(ws, call(scopes)))
    const stream = redis.stream
    t.equal(stream.writableCorked, 0, 'nothing corks the connection between turns')
    const answers = [store.admit(ws, call(scopes))]
    t.equal(stream.writableCorked, 1, 'the first command corked the connection')
    const oneCommand = stream.writableLength
    t.ok(oneCommand > 0, 'and waits in it')
    answers.push(store.admit(ws, call(scopes)), store.admit(ws, call(scopes)))
    t.equal(stream.writableLength, 3 * oneCommand, 'the three commands wait for the end of the turn, together')
    const results = await Promise.all(answers)
    t.same(results.map((result) => admitted(t, result).rpm?.[1]), [98, 97, 96], 'each admitted once, in order')
    t.equal(stream.writableCorked, 0, 'uncorked once the turn\'s I/O had run')
  })

  t.test('tpm: buckets that left the minute neither count nor stay', async (t) => {
    const ws = await prefix()
    const key = `${ws}:w:tpm`
    const second = Number((await redis.time())[0])
    // as a minute the workspace was busy in leaves them: two buckets before the window, two in it
    await redis.hset(key, second - 100, 5000, second - 62, 5000, second - 50, 100, second - 1, 200)
    await redis.pexpire(key, 62_000)
    const input = call([{ p: `${ws}:w`, tpm: 10_000 }], { promptTokens: 100, maxTokens: 0 })
    const result = admitted(t, await store.admit(ws, input))
    t.same(result.tpm, [10_000, 10_000 - 300 - 100, 60_000], 'only the buckets of the minute count')
    const fields = (await redis.hkeys(key)).map(Number)
    t.notOk(fields.includes(second - 100) || fields.includes(second - 62), 'the buckets before the minute are dropped')
    t.ok(fields.includes(second - 50) && fields.includes(second - 1), 'the minute\'s buckets stay')
    t.ok(await redis.pttl(key) > 60_000, 'the hash outlives the bucket just written')
  })
})

t.test('redis cluster store', async (t) => {
  const cluster = await startCluster()
  t.comment(`a cluster of three masters started in ${cluster.ms} ms`)
  t.ok(cluster.ms < 30_000, `cluster startup ${cluster.ms} ms`)
  const client = new Cluster(cluster.ports.map((port) => ({ host: '127.0.0.1', port })), {
    redisOptions: { maxRetriesPerRequest: 1, commandTimeout: 5000 }
  })
  const masters = cluster.ports.map((port) => new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1, commandTimeout: 5000 }))
  t.teardown(async () => {
    client.disconnect()
    for (const master of masters) master.disconnect()
    await cluster.stop()
  })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('cluster client not ready in 5 s')), 5000)
    client.once('ready', () => { clearTimeout(timer); resolve() })
  })

  // which master serves a slot, from CLUSTER SLOTS: [[first, last, [host, port, id], ...], ...]
  const ranges = (await client.call('CLUSTER', 'SLOTS')) as Array<[number, number, [string, number, string]]>
  const ownerOf = (slot: number) => {
    const range = ranges.find(([first, last]) => slot >= first && slot <= last)
    if (!range) throw new Error(`no master serves slot ${slot}`)
    return cluster.ports.indexOf(Number(range[2][1]))
  }
  t.same(new Set(ranges.map((range) => Number(range[2][1]))), new Set(cluster.ports), 'three masters share the slots')
  const slotOf = async (key: string) => Number(await client.call('CLUSTER', 'KEYSLOT', key))

  // the contract's workspaces take turns on the three masters
  const used = [0, 0, 0]
  let turn = 0
  const prefixOn = async (master: number) => {
    for (let attempt = 0; attempt < 200; attempt++) {
      const prefix = newPrefix()
      if (ownerOf(await slotOf(prefix)) === master) return prefix
    }
    throw new Error(`no prefix found for master ${master}`)
  }
  contract(t, {
    store: createRedisStore(client),
    prefix: async () => {
      const master = turn++ % 3
      used[master]++
      return prefixOn(master)
    },
    wipe: async (prefix) => deleteKeys(masters[ownerOf(await slotOf(prefix))], prefix),
    keys: async (prefix) => keysOf(masters[ownerOf(await slotOf(prefix))], prefix)
  })

  t.test('two gateways on REDIS_URL=redis-cluster://…: caps, rate limits and pub/sub on the cluster', async (t) => {
    const env = { REDIS_URL: `redis-cluster://127.0.0.1:${cluster.ports[0]}` }
    const one = await buildTestApp(t, env)
    const two = await buildTestApp(t, env, { mistral: one.mistral })
    for (const { app } of [one, two]) t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200, 'ready')
    const ws = await one.createWorkspace()
    const patched = await one.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { limits: { rpm: 2 }, caps: { monthly: '1.00' } })
    t.equal(patched.statusCode, 200)
    const chat = ({ app }: typeof one) => app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: { ...ws.headers, 'content-type': 'application/json' },
      payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 10 }
    })
    const replies = [await chat(two), await chat(one), await chat(one)]
    t.same(replies.map((reply) => reply.statusCode), [200, 200, 429], 'rpm 2 holds across the two')
    t.match(replies[0].headers['x-tramontane-budget-remaining'], /^0\.99/, 'the cap is reserved against')
    t.equal(replies[2].json().code, 'rate_limit_exceeded')
    const month = new Date().toISOString().slice(0, 7)
    const key = `tmt:{ws:${ws.id}}:w:spend:m:${month}`
    t.equal(await masters[ownerOf(await slotOf(key))].hexists(key, 'settled'), 1, 'the spend counter lives on the cluster')

    // the second gateway has the token cached; revoked through the first, it is forgotten at once: the invalidation
    // went through the cluster's pub/sub
    const revoked = await one.admin('DELETE', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`)
    t.ok(revoked.statusCode < 300, 'revoked through the first')
    let status = 0
    for (const deadline = Date.now() + 1_000; Date.now() < deadline; await sleep(20)) {
      status = (await chat(two)).statusCode
      if (status === 401) break
    }
    t.equal(status, 401, 'the second refuses it within a second (its cache would keep it for 10)')
  })

  t.test('every script runs on every master: one slot per workspace, no CROSSSLOT', async (t) => {
    t.ok(used.every((count) => count >= 3), `the contract's workspaces per master: ${used.join(', ')}`)
    const store = createRedisStore(client)
    for (let master = 0; master < 3; master++) {
      const prefix = await prefixOn(master)
      const p = `${prefix}:w`
      const scopes: ScopeInput[] = [{ p, rpm: 100, rpd: 1000, tpm: 100_000, conc: 10, caps: { d: 100_000, m: 100_000, l: 100_000 } },
        { p: `${prefix}:t:app`, rpm: 100, caps: { m: 50_000 } }]
      const keys = [spendKey(p, 'd'), spendKey(p, 'm'), spendKey(p, 'l'), spendKey(`${prefix}:t:app`, 'm')]
      const slot = await slotOf(prefix)
      t.same(await Promise.all(keys.map(slotOf)), keys.map(() => slot), `master ${master}: every key in slot ${slot}`)
      t.equal((await store.admit(prefix, call(scopes))).kind, 'seed')
      await store.seed(prefix, keys.map((key): SeedEntry => [key, 0, [], []]), [])
      const a = call(scopes)
      admitted(t, await store.admit(prefix, a), `master ${master}: admitted`)
      await store.renew(prefix, [held(a, keys, [`${p}:conc`])], 30_000)
      t.same(await store.settle(prefix, { id: a.id, cost: 30_000, tokens: 500, reservedTokens: 1100, spend: keys.map((key) => [key, 50_000]), thresholds: [50] }),
        keys.map((key) => [key, 50]), `master ${master}: settled`)
      const seen = await store.inspect(prefix, [{ p, spend: keys }])
      t.same(seen.scopes[0].spend, keys.map((key) => [key, 30_000, 0]), `master ${master}: inspected`)
      t.equal(await masters[master].exists(spendKey(p, 'm')), 1, `master ${master} (port ${cluster.ports[master]}) holds the workspace`)
    }
  })
})
