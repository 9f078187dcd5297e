import t, { type Test } from 'tap'
import { calendarPeriods } from '../../src/limits/periods.js'
import { createAdmission, type AdmissionSubject, type Quote } from '../../src/limits/admission.js'
import { createMemoryStore } from '../../src/limits/memory-store.js'
import { costOf, worstCaseMicros } from '../../src/pricing/cost.js'
import { completePrices, DEFAULT_PRICES } from '../../src/pricing/default-prices.js'
import { estimatePromptTokens } from '../../src/pricing/estimate.js'
import { formatMoney, parseMoney } from '../../src/pricing/money.js'
import { countTokens, startFakeMistral } from '../helpers/fake-mistral.js'
import { call, startReplicas, statusCounts, type ReplicaWorkspace, type Reply } from '../helpers/replicas.js'

// Issue #3, spend caps: "Spend caps are hard" (DESIGN.md). Two gateway processes share one Redis and one
// PostgreSQL; 200 calls at once against a monthly cap that affords 50; hostile inputs; the headers; month rollover.

const COMPLETION = 200 // words the fake generates: one token each
const PROMPT = 'Hi'
const MESSAGES = [{ role: 'user', content: PROMPT }]
const small = DEFAULT_PRICES.find((row) => row.aliases.includes('mistral-small-latest'))
if (!small) throw new Error('mistral-small-latest is not in the price book')
const PRICE = completePrices(small.prices.USD)

// what one call costs, from the price book and the fake's deterministic usage
const usage = { promptTokens: countTokens(PROMPT), completionTokens: COMPLETION }
const ONE_CALL = costOf({ ...usage, cachedTokens: 0, audioSeconds: 0, pages: 0, characters: 0 }, PRICE,
  { family: 'chat', markupBps: 0 }).billedMicros
const CAP = 50 * ONE_CALL
// the gateway's estimate of the prompt: bytes / 2 + 8 a message (src/pricing/estimate.ts)
const ESTIMATED_PROMPT = Math.ceil(Buffer.byteLength(PROMPT) / 2) + 8
const worstCase = (maxTokens: number, n = 1) =>
  worstCaseMicros({ promptTokens: ESTIMATED_PROMPT, maxOutputTokens: maxTokens, n, price: PRICE, markupBps: 0 })
const PROMPT_COST = worstCase(0)

const mistral = await startFakeMistral({ completionTokens: COMPLETION })
t.teardown(() => mistral.close())
const replicas = await startReplicas(t, mistral.url)

const limitsOf = async (ws: ReplicaWorkspace) =>
  (await replicas.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
const chat = (ws: ReplicaWorkspace, i: number, body: Record<string, unknown>) =>
  call(replicas.urls[i % replicas.urls.length], ws.token, '/v1/chat/completions',
    { model: 'mistral-small-latest', messages: MESSAGES, ...body })
const upstreamOf = (ws: ReplicaWorkspace) => mistral.received.filter((request) => request.apiKey === ws.mistralKey)
const forwardedOf = (ws: ReplicaWorkspace) => upstreamOf(ws).map((request) => request.json as Record<string, unknown>)
const slowest = (replies: Reply[]) => Math.max(0, ...replies.map((reply) => reply.doneAt - reply.sentAt))
const isQuota = (reply: Reply) => reply.status === 429 && reply.json?.type === 'insufficient_quota' &&
  reply.json?.code === 'monthly_spend_cap_reached' && reply.headers.get('x-should-retry') === 'false'

/** The burst's proof: settled spend ≤ cap, ≥ 45 served, refusals are insufficient_quota, no usable room left. */
async function burst (t: Test, body: Record<string, unknown>) {
  const ws = await replicas.createWorkspace({ caps: { monthly: formatMoney(CAP) } })
  const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => chat(ws, i, body)))
  const served = replies.filter((reply) => reply.status === 200)
  const refused = replies.filter((reply) => reply.status !== 200)
  const { totals, records } = await replicas.settledUsage(ws, served.length)
  const settled = totals.billedCostMicros as number
  t.comment(`${served.length} served, ${refused.length} refused ${JSON.stringify(statusCounts(replies))}; ` +
    `settled ${settled} of a cap of ${CAP} micro-units (one call ${ONE_CALL}, worst case ${worstCase(COMPLETION)}); ` +
    `slowest served ${slowest(served)} ms, slowest refusal ${slowest(refused)} ms`)
  t.equal(records.length, served.length, 'one usage record a served call')
  t.equal(upstreamOf(ws).length, served.length, 'Mistral saw only the served calls')
  t.ok(settled <= CAP, `settled ${settled} ≤ cap ${CAP}`)
  t.ok(served.length >= 45, `${served.length} ≥ 45 served`)
  const odd = refused.filter((reply) => !isQuota(reply))
  t.same(odd.map((reply) => `${reply.status} ${reply.json?.code}`), [],
    'every refusal is 429 insufficient_quota (monthly_spend_cap_reached), x-should-retry: false')

  // settled: nothing reserved any more, and what is left is less than one more call would need
  const monthly = (await limitsOf(ws)).workspace.caps.monthly
  t.equal(parseMoney(monthly.settled), settled, 'the spend counter equals the ledger')
  t.equal(monthly.reserved, formatMoney(0), 'nothing reserved after the burst')
  const left = parseMoney(monthly.left)
  t.ok(left < worstCase(COMPLETION),
    `left ${left} < one worst case ${worstCase(COMPLETION)}: no refusal left room a call could use`)
  return { ws, served, refused, left }
}

t.test('200 concurrent calls against a monthly cap that affords 50, over two replicas', async (t) => {
  const { ws, served, refused, left } = await burst(t, { max_tokens: COMPLETION })
  // a call the cap cannot afford waits for the calls in flight only while what they give back could buy it something
  t.ok(slowest(refused) < slowest(served) + 2_000,
    `the slowest refusal (${slowest(refused)} ms) came soon after the slowest served call (${slowest(served)} ms)`)
  const forwarded = forwardedOf(ws).map((json) => json.max_tokens as number)
  t.ok(forwarded.every((maxTokens) => maxTokens >= 1 && maxTokens <= COMPLETION),
    `forwarded max_tokens within 1..${COMPLETION}`)
  t.comment(`clamped calls: ${forwarded.filter((maxTokens) => maxTokens < COMPLETION).join(', ') || 'none'}`)
  t.ok(served.every((reply) => reply.headers.get('x-tramontane-budget-remaining') !== null),
    'served calls carry x-tramontane-budget-remaining')

  // one more call: admitted (clamped) while the room left affords one output token, refused after
  const next = await chat(ws, 0, { max_tokens: COMPLETION })
  const affordable = Math.floor((left - PROMPT_COST) * 1_000_000 / PRICE.outputPerMTok)
  if (affordable >= 1) {
    t.equal(next.status, 200, `a call after the burst is served in the ${left} left`)
    t.equal(forwardedOf(ws).at(-1)?.max_tokens, Math.min(affordable, COMPLETION), 'clamped to what is left')
  } else {
    t.ok(isQuota(next), 'a call after the burst: insufficient_quota')
  }
  const after = await replicas.settledUsage(ws, served.length + (next.status === 200 ? 1 : 0))
  const settled = after.totals.billedCostMicros
  t.ok(settled <= CAP, `settled ${settled} ≤ cap ${CAP} after one more call`)
})

t.test('the same burst, streamed, with no max_tokens: the gateway chooses max_tokens', async (t) => {
  // with no max_tokens each call is reserved at the model's output ceiling, clamped to all the room there is: the first
  // call holds the whole cap, and the others wait for it to settle rather than be refused as if it were spent
  const { ws } = await burst(t, { stream: true })
  const forwarded = forwardedOf(ws).map((json) => json.max_tokens)
  t.ok(forwarded.every((maxTokens) => typeof maxTokens === 'number'), 'every forwarded stream carries max_tokens')
  t.comment(`forwarded max_tokens: ${forwarded.join(', ')}`)
  t.ok(forwarded.every((maxTokens) => worstCase(maxTokens as number) <= CAP), 'each within what the cap affords')
})

// What Mistral (pydantic, lax mode) reads from a JSON number field: an integer, or a string of digits as one.
function asMistralReads (value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isInteger(value)) return value
  if (typeof value === 'string' && /^\s*[+-]?\d+\s*$/.test(value)) return Number(value)
  return undefined
}

interface Hostile {
  name: string
  body?: Record<string, unknown>
  /** sent as is, for duplicate keys */
  raw?: string
  expect?: number
  /** x-tramontane-budget-remaining: what the reservation left */
  budgetLeft?: number
  cap?: number
}

t.test('hostile inputs never get a call admitted that the cap would refuse', async (t) => {
  const tenCalls = 10 * ONE_CALL
  const duplicate = (first: number, last: number) =>
    `{"model":"mistral-small-latest","messages":${JSON.stringify(MESSAGES)},"max_tokens":${first},"max_tokens":${last}}`
  const cases: Hostile[] = [
    { name: 'max_tokens 1e12', body: { max_tokens: 1e12 } },
    { name: 'max_tokens -5', body: { max_tokens: -5 } },
    { name: 'max_tokens 0', body: { max_tokens: 0 } },
    { name: 'max_tokens 1e20 (not a safe integer)', body: { max_tokens: 1e20 } },
    { name: 'max_tokens as a string', body: { max_tokens: '100000' } },
    { name: 'n 1000', body: { n: 1000, max_tokens: COMPLETION } },
    { name: 'n 1000, no max_tokens', body: { n: 1000 } },
    { name: 'n as a string', body: { n: '1000', max_tokens: COMPLETION } },
    { name: 'n 1e6 and max_tokens 1e12', body: { n: 1e6, max_tokens: 1e12 } },
    // past any bound the gateway reserves by: refused, or reserved for what is forwarded
    { name: 'n 1e6 and max_tokens 1e12, a cap of 10', body: { n: 1e6, max_tokens: 1e12 }, cap: 10_000_000 },
    {
      name: 'n 20000 and max_tokens 1, a cap that affords 10000 choices',
      body: { n: 20_000, max_tokens: 1 },
      cap: worstCase(1, 10_000) + 100
    },
    { name: 'unknown model', body: { model: 'mistral-nonexistent-9000' }, expect: 400 },
    { name: 'no model', body: { model: undefined, max_tokens: COMPLETION } },
    // reserved for the last key, which Mistral reads: the large one is clamped to the whole cap
    { name: 'duplicate max_tokens, the last one large', raw: duplicate(1, 100_000), budgetLeft: 0 },
    {
      name: 'duplicate max_tokens, the last one small',
      raw: duplicate(100_000, 1),
      budgetLeft: tenCalls - worstCase(1)
    }
  ]
  for (const hostile of cases) {
    const cap = hostile.cap ?? tenCalls
    const ws = await replicas.createWorkspace({ caps: { monthly: formatMoney(cap) } })
    const reply = hostile.raw === undefined
      ? await chat(ws, 0, hostile.body ?? {})
      : await call(replicas.urls[1], ws.token, '/v1/chat/completions', undefined, { rawBody: hostile.raw })
    const upstream = upstreamOf(ws)
    t.ok(reply.status < 500, `${hostile.name}: ${reply.status} ${reply.json?.code ?? ''}, not a server error`)
    if (hostile.expect !== undefined) t.equal(reply.status, hostile.expect, `${hostile.name}: ${hostile.expect}`)
    if (hostile.budgetLeft !== undefined) {
      t.equal(reply.headers.get('x-tramontane-budget-remaining'), formatMoney(hostile.budgetLeft),
        `${hostile.name}: reserved for the last key`)
    }
    for (const request of upstream) {
      t.equal(request.body.toString().split('"max_tokens"').length, 2, `${hostile.name}: one max_tokens forwarded`)
      const json = request.json as Record<string, unknown>
      const maxTokens = asMistralReads(json.max_tokens)
      const n = json.n === undefined || json.n === null ? 1 : asMistralReads(json.n)
      // the most Mistral could bill for what it was sent (a call with no model is refused upstream)
      const bound = maxTokens === undefined || n === undefined ? Infinity : worstCase(maxTokens, n)
      t.ok(json.model === undefined || bound <= cap,
        `${hostile.name}: forwarded max_tokens ${String(json.max_tokens)} × n ${String(json.n ?? 1)} ` +
        `may cost ${bound} ≤ cap ${cap}`)
      if (json.model === undefined) {
        t.ok(maxTokens !== undefined && n !== undefined,
          `${hostile.name}: bounded all the same (max_tokens ${String(json.max_tokens)})`)
      }
    }
    // the gateway's own refusals carry its envelope; Mistral's answer to a body it rejects passes through
    if (reply.status !== 200 && reply.json?.object === 'error') {
      t.equal(upstream.length, 0, `${hostile.name}: refused, nothing reached Mistral`)
    }
    const { totals } = await replicas.settledUsage(ws, reply.status === 200 ? 1 : 0)
    t.ok(totals.billedCostMicros <= cap, `${hostile.name}: settled ${totals.billedCostMicros} ≤ cap ${cap}`)
  }

  // unknown model: refused even where no cap or limit applies, and nothing goes upstream
  const free = await replicas.createWorkspace()
  const unknown = await chat(free, 1, { model: 'gpt-4o-mini' })
  t.equal(unknown.status, 400, 'unknown model, no cap: 400')
  t.equal(unknown.json?.code, 'model_not_priced', 'model_not_priced')
  t.match(unknown.json?.message, /has no USD price/, 'the message names the currency it has no price in')
  t.equal(upstreamOf(free).length, 0, 'nothing upstream')
})

t.test('audio in a Voxtral chat call is reserved by the minute against the cap', async (t) => {
  const voxtral = DEFAULT_PRICES.find((row) => row.aliases.includes('voxtral-small-latest'))
  if (!voxtral) throw new Error('voxtral-small-latest is not in the price book')
  const price = completePrices(voxtral.prices.USD)
  const text = { type: 'text', text: 'What is said?' }
  // ten minutes at the 2,000 bytes a second the reservation assumes (src/pricing/estimate.ts), as base64
  const tenMinutes = Buffer.alloc(10 * 60 * 2_000, 7).toString('base64')
  const withAudio = (audio: string) => ({
    model: 'voxtral-small-latest', max_tokens: 10, messages: [{ role: 'user', content: [text, { type: 'input_audio', input_audio: audio }] }]
  })
  const reservation = (body: ReturnType<typeof withAudio>, audioSeconds: number) => worstCaseMicros({
    promptTokens: estimatePromptTokens(body), maxOutputTokens: 10, price, markupBps: 0, audioSeconds
  })
  const cases = [
    { name: 'base64, ten minutes', body: withAudio(tenMinutes), seconds: 600 },
    { name: 'a URL: its length unknown, the most a call holds (40 minutes)', body: withAudio('https://example.com/a.mp3'), seconds: 2_400 }
  ]
  for (const { name, body, seconds } of cases) {
    const reserved = reservation(body, seconds)
    t.ok(reserved >= seconds * price.audioPerMinute / 60, `${name}: the reservation holds the audio's ${seconds} s`)
    // a cap the tokens alone fit in, the audio not
    const tight = await replicas.createWorkspace({ caps: { monthly: formatMoney(reservation(body, 0) + 1_000) } })
    const refused = await call(replicas.urls[0], tight.token, '/v1/chat/completions', body)
    t.ok(isQuota(refused), `${name}: refused by a cap its tokens fit in (${refused.status} ${refused.json?.code})`)
    t.equal(upstreamOf(tight).length, 0, `${name}: Mistral never saw it`)
    const roomy = await replicas.createWorkspace({ caps: { monthly: formatMoney(2 * reserved) } })
    const served = await call(replicas.urls[1], roomy.token, '/v1/chat/completions', body)
    t.equal(served.status, 200, `${name}: served under a cap that affords it`)
    t.equal(served.headers.get('x-tramontane-budget-remaining'), formatMoney(reserved),
      `${name}: the cap less the reservation, audio included`)
  }
})

t.test('case variants of a model name are priced and reserved as the model', async (t) => {
  const cap = 10 * ONE_CALL
  const expected = { status: 200, left: formatMoney(cap - worstCase(COMPLETION)), billed: ONE_CALL }
  for (const model of ['mistral-small-latest', 'MISTRAL-SMALL-LATEST', 'Mistral-Small-Latest', 'MISTRAL-SMALL-2603']) {
    const ws = await replicas.createWorkspace({ caps: { monthly: formatMoney(cap) } })
    const reply = await chat(ws, 1, { model, max_tokens: COMPLETION })
    const { totals } = await replicas.settledUsage(ws, 1)
    const left = reply.headers.get('x-tramontane-budget-remaining')
    const got = { status: reply.status, left, billed: totals.billedCostMicros }
    t.same(got, expected, `${model}: reserved ${worstCase(COMPLETION)}, billed ${ONE_CALL}`)
  }
})

t.test('every proxied response under limits carries the x-ratelimit-* and budget headers', async (t) => {
  const ws = await replicas.createWorkspace({
    limits: { rpm: 1000, tpm: 1_000_000 },
    caps: { monthly: '1.00', daily: '0.50' }
  })
  const replies = [
    await chat(ws, 0, { max_tokens: COMPLETION }),
    await chat(ws, 1, { max_tokens: COMPLETION, stream: true }),
    await chat(ws, 0, {}),
    await call(replicas.urls[1], ws.token, '/v1/embeddings', { model: 'mistral-embed', input: ['hello'] })
  ]
  const models = await call(replicas.urls[0], ws.token, '/v1/models')
  for (const [i, reply] of [...replies, models].entries()) {
    const header = (name: string) => reply.headers.get(name)
    t.equal(reply.status, 200, `call ${i}: 200`)
    t.equal(header('x-ratelimit-limit-requests'), '1000', `call ${i}: x-ratelimit-limit-requests`)
    t.equal(header('x-ratelimit-remaining-requests'), String(1000 - i - 1), `call ${i}: x-ratelimit-remaining-requests`)
    t.match(header('x-ratelimit-reset-requests'), /^\d+s$/, `call ${i}: x-ratelimit-reset-requests`)
    t.equal(header('x-ratelimit-limit-tokens'), '1000000', `call ${i}: x-ratelimit-limit-tokens`)
    t.match(header('x-ratelimit-remaining-tokens'), /^\d+$/, `call ${i}: x-ratelimit-remaining-tokens`)
    t.match(header('x-ratelimit-reset-tokens'), /^\d+s$/, `call ${i}: x-ratelimit-reset-tokens`)
  }
  for (const [i, reply] of replies.entries()) {
    const left = reply.headers.get('x-tramontane-budget-remaining')
    t.match(left, /^\d+\.\d{6}$/, `metered call ${i}: x-tramontane-budget-remaining ${left}`)
    t.ok(left !== null && parseMoney(left) <= parseMoney('0.50'), `metered call ${i}: the tighter (daily) cap's room`)
  }
  t.equal(models.headers.get('x-tramontane-budget-remaining'), null,
    'no cap applies to an unmetered call: no budget header')

  const capOnly = await replicas.createWorkspace({ caps: { monthly: '1.00' } })
  const capped = await chat(capOnly, 1, { max_tokens: COMPLETION })
  t.equal(capped.headers.get('x-tramontane-budget-remaining'), formatMoney(parseMoney('1.00') - worstCase(COMPLETION)),
    'a cap alone: x-tramontane-budget-remaining is the cap less this call\'s reservation')
  t.comment(`a cap alone, x-ratelimit-limit-requests: ${capped.headers.get('x-ratelimit-limit-requests')}`)
})

/**
 * An admission on the in-process store, on a clock the test moves (the store's own may differ, as Redis' may from a
 * replica's); the ledger is a list of [cost, when].
 */
function admissionAt (clock: () => number, ledger: Array<{ cost: number, at: number }> = [], storeClock = clock) {
  const within = (at: number, from?: number, to?: number) =>
    (from === undefined || at >= from) && (to === undefined || at < to)
  return createAdmission({
    store: createMemoryStore(storeClock),
    fallback: createMemoryStore(storeClock),
    ledger: {
      async spent (_workspace, _token, from, to) {
        return ledger.filter(({ at }) => within(at, from, to)).reduce((sum, { cost }) => sum + cost, 0)
      },
      async spentAmong (workspace, token, from, to) {
        return { spent: await this.spent(workspace, token, from, to), recorded: [] }
      }
    },
    flushLedger: async () => {},
    log: { warn () {}, info () {}, error () {}, debug () {} } as never,
    formatMoney,
    clock
  })
}

const QUOTE: Quote = { cost: 100, promptCost: 10, outputPerMillion: 0, maxTokens: 10, n: 1, promptTokens: 5 }
const subjectIn = (timezone: string, requestId: string): AdmissionSubject => ({
  requestId,
  workspace: { id: `ws-${timezone}`, timezone, limits: {}, caps: { monthly: 1000 } },
  token: { id: 'token', limits: {}, caps: {} },
  model: 'mistral-small-2603'
})

t.test('month rollover in the workspace time zone', async (t) => {
  // zones whose DST change falls at local midnight (Havana, Asunción and Santiago skip it, Amman repeated it), with
  // Europe, the southern hemisphere and the odd offsets; every month boundary of 2023-2026 and those DST days
  const zones = ['UTC', 'Europe/Paris', 'America/New_York', 'America/Havana', 'America/Asuncion', 'America/Santiago',
    'Asia/Beirut', 'Asia/Amman', 'Pacific/Auckland', 'Pacific/Chatham', 'Australia/Lord_Howe', 'Asia/Kolkata',
    'America/St_Johns', 'Pacific/Kiritimati', 'Pacific/Pago_Pago']
  const dstDays = ['2024-03-10', '2023-10-01', '2024-09-08', '2021-10-29', '2024-03-31', '2024-10-27', '2026-11-01']
  const centres = [...dstDays.map((day) => Date.parse(`${day}T00:00:00Z`)),
    ...Array.from({ length: 48 }, (_, i) => Date.UTC(2023, i, 1))]
  const HOUR = 3_600_000

  t.test('calendarPeriods: each instant is in its local day and month, each begun at its first instant', async (t) => {
    const problems = new Map<string, number>()
    let checked = 0
    for (const zone of zones) {
      const format = new Intl.DateTimeFormat('en-CA',
        { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit' })
      const local = (instant: number) => format.format(instant) // YYYY-MM-DD
      const iso = (instant: number) => new Date(instant).toISOString()
      const fail = (what: string) => problems.set(`${zone}: ${what}`, (problems.get(`${zone}: ${what}`) ?? 0) + 1)
      for (const centre of centres) {
        // hourly, on the half hour, 40 hours either side
        for (let instant = centre - 40 * HOUR + HOUR / 2; instant < centre + 40 * HOUR; instant += HOUR) {
          const { day, month } = calendarPeriods(instant, zone)
          const date = local(instant)
          const at = `${iso(instant)} (${date})`
          checked++
          if (day.id !== date || month.id !== date.slice(0, 7)) fail(`${at} named ${day.id} / ${month.id}`)
          if (!(day.start <= instant && instant < day.end)) {
            fail(`${at} outside its day [${iso(day.start)}, ${iso(day.end)})`)
          }
          if (!(month.start <= instant && instant < month.end)) {
            fail(`${at} outside its month [${iso(month.start)}, ${iso(month.end)})`)
          }
          if (local(day.start) !== day.id || local(day.start - 1) === day.id) {
            fail(`day ${day.id} starts at ${iso(day.start)}, local ${local(day.start)}`)
          }
          if (local(month.start).slice(0, 7) !== month.id || local(month.start - 1).slice(0, 7) === month.id) {
            fail(`month ${month.id} starts at ${iso(month.start)}, local ${local(month.start)}`)
          }
          const hours = (day.end - day.start) / HOUR
          if (hours < 22 || hours > 26) fail(`day ${day.id} lasts ${hours} h`)
        }
      }
    }
    for (const [what, count] of problems) t.comment(`${what} (×${count})`)
    t.same([...problems].map(([what, count]) => `${what} (×${count})`), [],
      `${checked} instants in ${zones.length} zones`)
  })

  t.test('a capped call in the last local hour before a midnight DST jump is admitted', async (t) => {
    // Asunción, 1 October 2023: 00:00 (-04) became 01:00 (-03); 23:30 on 30 September is 03:30 UTC
    const admission = admissionAt(() => Date.parse('2023-10-01T03:30:00Z'))
    t.teardown(() => admission.close())
    const outcome = await admission.admit(subjectIn('America/Asuncion', 'asuncion'), QUOTE).then(
      (ticket) => ticket?.spend.map(([key]) => key.slice(key.indexOf(':spend'))),
      (err) => `${err.statusCode} ${err.code}`)
    t.comment(`admission at 23:30 on 30 September in Asunción: ${JSON.stringify(outcome)}`)
    t.same(outcome, [':spend:m:2023-09'], 'admitted, charged to September')
  })

  t.test('a replica whose clock is behind the store\'s at midnight: the call is dated by the store\'s clock', async (t) => {
    // the store (Redis, for every replica) has begun February; this replica's clock still says January
    const storeNow = Date.parse('2026-02-01T00:00:20Z')
    const admission = admissionAt(() => storeNow - 45_000, [], () => storeNow)
    t.teardown(() => admission.close())
    const ticket = await admission.admit(subjectIn('UTC', 'midnight'), QUOTE)
    t.same(ticket?.spend.map(([key]) => key.slice(key.indexOf(':spend'))), [':spend:m:2026-02'],
      'the spend counter is February\'s, as the store\'s clock says')
    t.equal(ticket?.admittedAt, storeNow, 'admitted at the store\'s instant, which the ledger record carries (meter.ts)')
  })

  t.test('concurrent admissions across a local month end: the new month has its own counter', async (t) => {
    const timezone = 'Pacific/Auckland' // UTC+13 in January: its month ends on 31 January at 11:00 UTC
    const monthEnd = Date.parse('2026-01-31T11:00:00Z')
    t.equal(calendarPeriods(monthEnd, timezone).month.id, '2026-02', 'February begins at 11:00 UTC in Auckland')
    t.equal(calendarPeriods(monthEnd - 1, timezone).month.id, '2026-01', 'January ends 1 ms before')
    let now = monthEnd - 30_000
    const ledger: Array<{ cost: number, at: number }> = []
    const admission = admissionAt(() => now, ledger)
    t.teardown(() => admission.close())
    type Refusal = { statusCode: number, code: string, headers?: Record<string, string> }

    // January: 10 calls of 100 fill the cap of 1000 (the ledger, as the seed reads it, is empty)
    const january = await Promise.all(Array.from({ length: 12 }, async (_, i) => {
      try {
        const ticket = await admission.admit(subjectIn(timezone, `call-${i}`), QUOTE)
        ledger.push({ cost: 100, at: now })
        await admission.settle(ticket!, { cost: 100, tokens: 15 })
        return 'admitted'
      } catch (err) {
        return err as Refusal
      }
    }))
    const refused = january.filter((outcome): outcome is Refusal => outcome !== 'admitted')
    t.equal(january.length - refused.length, 10, 'January: 10 admitted')
    t.same(refused.map((err) => [err.statusCode, err.code]),
      [[429, 'monthly_spend_cap_reached'], [429, 'monthly_spend_cap_reached']], 'the rest refused')
    t.same(refused.map((err) => err.headers?.['retry-after']), ['30', '30'], 'Retry-After: when the local month ends')
    t.same(refused.map((err) => err.headers?.['retry-after-ms']), ['30000', '30000'], 'retry-after-ms: the same, in ms')

    // traffic across the boundary: one admission a second, 20 of them at once, from 10 s before the end
    now = monthEnd - 10_000
    const across = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const at = now + i * 1000
      await Promise.resolve()
      now = at
      try {
        const ticket = await admission.admit(subjectIn(timezone, `call-${100 + i}`), QUOTE)
        ledger.push({ cost: 100, at })
        await admission.settle(ticket!, { cost: 100, tokens: 15 })
        return { at, admitted: true, key: ticket!.spend[0][0] }
      } catch {
        return { at, admitted: false, key: '' }
      }
    }))
    t.ok(across.filter(({ at }) => at < monthEnd).every(({ admitted }) => !admitted),
      'before the local month end: still refused')
    const february = across.filter(({ at, admitted }) => at >= monthEnd && admitted)
    t.equal(february.length, 10, 'February: 10 admitted, the old month\'s spend does not block it')
    t.ok(february.every(({ key }) => key.endsWith(':spend:m:2026-02')), 'charged to the 2026-02 counter')
    const spentIn = (from: number, to: number) =>
      ledger.filter(({ at }) => at >= from && at < to).reduce((sum, { cost }) => sum + cost, 0)
    t.equal(spentIn(0, monthEnd), 1000, 'January settled exactly its cap')
    t.equal(spentIn(monthEnd, Infinity), 1000, 'February settled exactly its cap')
  })
})
