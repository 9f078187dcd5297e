// Threshold crossings at or past the spend, once per period and cap: every cap a refusal finds used up reports its
// 100 %, not only the one the refusal names, and a cap lowered below its spend reports the thresholds that spend has
// passed at its next settlement or refusal. Each case runs against the in-process store and against Redis, as the
// contract test does (test/integration/limits.contract.test.ts), then once through the admission that announces them.
import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { createAdmission, type AdmissionSubject, type ThresholdCrossing } from '../../src/limits/admission.js'
import { calendarPeriods } from '../../src/limits/periods.js'
import { createMemoryStore } from '../../src/limits/memory-store.js'
import { createRedisStore } from '../../src/limits/redis-store.js'
import type { AdmissionStore, AdmitInput, AdmitResult, PeriodInput, ScopeInput } from '../../src/limits/store.js'
import { formatMoney } from '../../src/pricing/money.js'

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'
const HOUR = 3_600_000
const START = Date.now()
// wide enough that no midnight falls inside the run
const DAY: PeriodInput = { id: new Date(START).toISOString().slice(0, 10), s: START - HOUR, e: START + 6 * HOUR }
const MONTH: PeriodInput =
  { id: new Date(START).toISOString().slice(0, 7), s: START - 240 * HOUR, e: START + 480 * HOUR }
// a call of 1000 µ of prompt and 1000 output tokens at 2.7 µ each: its worst case W
const W = 3_700

const call = (scopes: ScopeInput[]): AdmitInput => ({
  id: randomUUID(), scopes, day: DAY, month: MONTH, cost: W, promptCost: 1_000, outputPerMillion: 2_700_000,
  maxTokens: 1_000, n: 1, promptTokens: 100, clamp: false, lease: 30_000
})
const dayKey = (p: string) => `${p}:spend:d:${DAY.id}`
const monthKey = (p: string) => `${p}:spend:m:${MONTH.id}`
const sorted = (crossed: Array<[string, number]> | undefined) =>
  [...(crossed ?? [])].sort((a, b) => a[0].localeCompare(b[0]) || a[1] - b[1])

function denied (t: Test, result: AdmitResult, what: string) {
  t.equal(result.kind, 'denied', what)
  return result as Extract<AdmitResult, { kind: 'denied' }>
}

function cases (t: Test, store: AdmissionStore, newPrefix: () => string) {
  async function settle (prefix: string, input: AdmitInput, cost: number, spend: Array<[string, number]>) {
    t.equal((await store.admit(prefix, input)).kind, 'admitted', `a call of ${cost} µ admitted`)
    return await store.settle(prefix,
      { id: input.id, cost, tokens: 0, reservedTokens: 0, spend, thresholds: [50, 80, 100] })
  }

  t.test('a refusal reports the 100 % of every cap it finds used up, and what their spend has passed', async (t) => {
    const prefix = newPrefix()
    const [w, token] = [`${prefix}:w`, `${prefix}:t:app`]
    const [wd, wm, tm] = [dayKey(w), monthKey(w), monthKey(token)]
    // the workspace's day used up and its month at 96 %, the token's month used up; the token reports only its 100 %
    const scopes: ScopeInput[] =
      [{ p: w, caps: { d: 10_000, m: 50_000 } }, { p: token, caps: { m: 10_000 }, th: [100] }]
    await store.seed(prefix, [[wd, 10_000, [], []], [wm, 48_000, [], []], [tm, 10_000, [], []]], [])

    const refused = denied(t, await store.admit(prefix, call(scopes)), 'refused')
    t.same([refused.reason, refused.scope, refused.busy], ['cap_m', 0, false],
      'named: the workspace\'s month, which is not used up (2000 µ left)')
    // in one order in both stores: scope by scope, day, month, lifetime, as settlements report them
    t.same(refused.crossed, [[wd, 50], [wd, 80], [wd, 100], [wm, 50], [wm, 80], [tm, 100]],
      'the other caps used up report their 100 %, each cap the thresholds its settled spend has passed')
    t.equal(denied(t, await store.admit(prefix, call(scopes)), 'refused again').crossed, undefined, 'once per period')
    t.same(await store.settle(prefix, { id: randomUUID(), cost: 2_000, tokens: 0, reservedTokens: 0,
      spend: [[wd, 10_000], [wm, 50_000], [tm, 10_000, [100]]], thresholds: [50, 80, 100] }), [[wm, 100]],
    'a charge taking the month to its cap reports only that 100 %')
  })

  t.test('two caps used up, the refusal names one: both report their 100 %', async (t) => {
    const prefix = newPrefix()
    const [w, token] = [`${prefix}:w`, `${prefix}:t:app`]
    const scopes: ScopeInput[] =
      [{ p: w, caps: { m: 10_000 }, th: [100] }, { p: token, caps: { m: 20_000 }, th: [100] }]
    await store.seed(prefix, [[monthKey(w), 10_000, [], []], [monthKey(token), 20_000, [], []]], [])
    const refused = denied(t, await store.admit(prefix, call(scopes)), 'refused')
    t.equal(refused.scope, 0, 'a tie on the reset: the workspace\'s cap is named')
    t.same(sorted(refused.crossed), [[monthKey(token), 100], [monthKey(w), 100]], 'the token\'s 100 % too')
  })

  t.test('a cap lowered below its spend reports the thresholds passed; raised, nothing again in the period',
    async (t) => {
      const prefix = newPrefix()
      const p = `${prefix}:w`
      const m = monthKey(p)
      const capped = (cap: number): ScopeInput[] => [{ p, caps: { m: cap } }]
      await store.seed(prefix, [[m, 0, [], []]], [])
      t.same(await settle(prefix, call(capped(100_000)), 50_000, [[m, 100_000]]), [[m, 50]], '50 % of 100 000')

      // an operator lowers the cap to 10 000 with 50 000 spent: the next refusal reports 80 and 100 %, not 50 again
      const refused = denied(t, await store.admit(prefix, call(capped(10_000))), 'lowered: refused')
      t.equal(refused.busy, false)
      t.same(sorted(refused.crossed), [[m, 80], [m, 100]], 'the thresholds its spend is past, not reported yet')
      t.equal(denied(t, await store.admit(prefix, call(capped(10_000))), 'again').crossed, undefined, 'once')

      // raised back: the spend (51 %) is under 80 and 100 %, which stay reported for the period
      t.same(await settle(prefix, call(capped(100_000)), 1_000, [[m, 100_000]]), [], 'raised: nothing')
      t.same(await settle(prefix, call(capped(60_000)), 1_000, [[m, 60_000]]), [], 'at 87 % of 60 000: nothing')
    })

  t.test('a cap lowered below its spend: the next settlement reports what that spend has passed', async (t) => {
    const prefix = newPrefix()
    const p = `${prefix}:w`
    const m = monthKey(p)
    await store.seed(prefix, [[m, 40_000, [], []]], [])
    // 40 000 of 100 000 reported nothing; of a cap lowered to 50 000, 41 000 is past 50 and 80 %
    t.same(await settle(prefix, call([{ p, caps: { m: 50_000 } }]), 1_000, [[m, 50_000]]), [[m, 50], [m, 80]])
  })
}

t.test('memory store', async (t) => {
  cases(t, createMemoryStore(), () => `tmt:{ws:${randomUUID()}}`)
})

t.test('redis store', async (t) => {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1, commandTimeout: 5000 })
  const store = createRedisStore(redis)
  const prefixes: string[] = []
  t.teardown(async () => {
    for (const prefix of prefixes) await store.forget(prefix)
    await redis.quit()
  })
  cases(t, store, () => {
    const prefix = `tmt:{ws:${randomUUID()}}`
    prefixes.push(prefix)
    return prefix
  })
})

/** The admission over a store, its ledger holding what each scope spent this period before the run. */
function admissionOver (store: AdmissionStore, spent: { workspace: number, token: number }) {
  const admission = createAdmission({
    store,
    fallback: createMemoryStore(),
    ledger: {
      async spent (_workspace, token) { return token === undefined ? spent.workspace : spent.token },
      async spentAmong (_workspace, token) {
        return { spent: token === undefined ? spent.workspace : spent.token, recorded: [] }
      }
    },
    flushLedger: async () => {},
    log: { warn () {}, info () {}, error () {}, debug () {} } as never,
    formatMoney
  })
  const crossings: ThresholdCrossing[] = []
  admission.onThreshold((crossing) => crossings.push(crossing))
  return { admission, crossings }
}

for (const kind of ['memory', 'redis'] as const) {
  t.test(`${kind}: a refusal announces every crossing it recorded, by each scope's thresholds`, async (t) => {
    const redis = kind === 'redis' ? new Redis(REDIS_URL, { maxRetriesPerRequest: 1, commandTimeout: 5000 }) : undefined
    const store = redis ? createRedisStore(redis) : createMemoryStore()
    // the workspace has spent 10 000 this day and month, its token 7 000 of its month
    const { admission, crossings } = admissionOver(store, { workspace: 10_000, token: 7_000 })
    const subject = (): AdmissionSubject => ({
      requestId: randomUUID(),
      workspace: { id: randomUUID(), timezone: 'UTC', limits: {}, caps: { daily: 10_000, monthly: 20_000 } },
      token: { id: 'app', limits: {}, caps: { monthly: 10_000, thresholds: [60] } },
      model: undefined
    })
    const first = subject()
    const workspaceId = first.workspace.id
    t.teardown(async () => {
      await admission.forget(workspaceId)
      await admission.close()
      await redis?.quit()
    })
    await admission.welcome(workspaceId)
    const quote = { cost: 100, promptCost: 100, outputPerMillion: 0, maxTokens: 0, n: 1, promptTokens: 5 }
    await t.rejects(admission.admit(first, quote), { code: 'daily_spend_cap_reached' }, 'the day is used up')
    const { day, month } = calendarPeriods(Date.now(), 'UTC')
    const crossing = (scope: 'workspace' | 'token', cap: 'daily' | 'monthly', percent: number): ThresholdCrossing => ({
      workspaceId,
      scope,
      tokenId: scope === 'token' ? 'app' : null,
      cap,
      periodId: cap === 'daily' ? day.id : month.id,
      percent
    })
    const label = (c: ThresholdCrossing) => `${c.scope} ${c.cap} ${c.percent + 100}`
    const order = (list: ThresholdCrossing[]) => [...list].sort((a, b) => label(a).localeCompare(label(b)))
    t.same(order(crossings), order([
      crossing('token', 'monthly', 60),
      crossing('workspace', 'daily', 50), crossing('workspace', 'daily', 80), crossing('workspace', 'daily', 100),
      crossing('workspace', 'monthly', 50)
    ]), 'the workspace\'s day 50/80/100 %, its month 50 %, the token\'s month 60 % (its own thresholds)')

    const again = { ...subject(), workspace: first.workspace }
    await t.rejects(admission.admit(again, quote), { code: 'daily_spend_cap_reached' })
    t.equal(crossings.length, 5, 'the next refusal announces nothing')
  })
}
