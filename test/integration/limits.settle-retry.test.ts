import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { costOf, worstCaseMicros } from '../../src/pricing/cost.js'
import { completePrices, DEFAULT_PRICES } from '../../src/pricing/default-prices.js'
import { formatMoney } from '../../src/pricing/money.js'
import { buildTestApp, TEST_REDIS_URL } from '../helpers/app.js'
import { countTokens, startFakeMistral } from '../helpers/fake-mistral.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

// A settlement that fails (Redis unreachable for a moment) is sent again until Redis takes it: the call's cost
// reaches the spend counter, which no later seed would correct, as the counter still exists.

const COMPLETION = 100
const PROMPT = 'Hi'
const small = DEFAULT_PRICES.find((row) => row.aliases.includes('mistral-small-latest'))
if (!small) throw new Error('mistral-small-latest is not in the price book')
const PRICE = completePrices(small.prices.USD)
const ONE_CALL = costOf({ promptTokens: countTokens(PROMPT), completionTokens: COMPLETION, cachedTokens: 0,
  audioSeconds: 0, pages: 0, characters: 0 }, PRICE, { family: 'chat', markupBps: 0 }).billedMicros
// the gateway's estimate of the prompt: bytes / 2 + 8 a message (src/pricing/estimate.ts)
const WORST_CASE = worstCaseMicros({ promptTokens: Math.ceil(Buffer.byteLength(PROMPT) / 2) + 8,
  maxOutputTokens: COMPLETION, n: 1, price: PRICE, markupBps: 0 })

t.test('a settlement that fails while Redis is cut off is retried: the counter holds every call\'s cost', async (t) => {
  const redisUrl = new URL(TEST_REDIS_URL)
  const proxy = await startTcpProxy(Number(redisUrl.port || 6379), redisUrl.hostname)
  t.teardown(() => proxy.close())
  const proxied = new URL(TEST_REDIS_URL)
  proxied.hostname = '127.0.0.1'
  proxied.port = String(proxy.port)
  const mistral = await startFakeMistral({ completionTokens: COMPLETION })
  t.teardown(() => mistral.close())
  const { app, admin, createWorkspace, logs } = await buildTestApp(t,
    { REDIS_URL: proxied.toString(), REDIS_COMMAND_TIMEOUT_MS: '300' }, { mistral })
  const ws = await createWorkspace()
  // two calls fit, and then not a third one's worst case (never clamped)
  const cap = 2 * ONE_CALL + WORST_CASE - 1
  const patched = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { caps: { monthly: formatMoney(cap), clampMaxTokens: false } })
  t.equal(patched.statusCode, 200, 'cap set')
  const chat = () => app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: PROMPT }], max_tokens: COMPLETION }
  })
  /** the monthly cap once nothing is reserved (Redis answers again), or the last answer at the deadline */
  const settledMonth = async (deadlineMs: number) => {
    let monthly
    for (const deadline = Date.now() + deadlineMs; Date.now() < deadline; await sleep(50)) {
      const limits = await admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)
      if (limits.statusCode !== 200) continue
      monthly = limits.json.workspace.caps.monthly
      if (monthly.reserved === formatMoney(0)) break
    }
    return monthly
  }

  t.equal((await chat()).statusCode, 200, 'the first call served')
  t.equal((await settledMonth(5_000))?.settled, formatMoney(ONE_CALL), 'and settled')

  // the second call is admitted, then Redis is cut off while Mistral answers: its settlement fails
  mistral.enqueueDelay(600, '/v1/chat/completions')
  const second = chat()
  await sleep(200)
  proxy.cut()
  t.equal((await second).statusCode, 200, 'the second call served')
  await sleep(300)
  t.ok(logs.some((line) => line.includes('settlement failed')), 'its settlement failed')
  proxy.restore()

  const monthly = await settledMonth(10_000)
  t.same([monthly?.settled, monthly?.reserved], [formatMoney(2 * ONE_CALL), formatMoney(0)],
    'once Redis answers, the counter holds both calls\' costs and nothing reserved')
  const third = await chat()
  t.same([third.statusCode, third.json().code], [429, 'monthly_spend_cap_reached'], 'a call over the cap is refused')
})
