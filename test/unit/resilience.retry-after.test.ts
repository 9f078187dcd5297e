import t from 'tap'
import { retryAfterHeaders } from '../../src/errors.js'
import { createKeyHealth } from '../../src/resilience/key-health.js'
import { isSpendLimit, retryAfterMs } from '../../src/resilience/retry-after.js'
import { createLocalBus } from '../../src/tenancy/invalidation-bus.js'

// How long Mistral's 429 asks us to wait (MISTRAL-NOTES §3.3, RFC 9110 §10.2.3), and what the gateway tells clients.

const NOW = Date.parse('2026-12-06T10:00:00Z')

t.test('retry-after-ms wins over everything else, rounded up to whole ms', async (t) => {
  t.equal(retryAfterMs({ 'retry-after-ms': '1500', 'retry-after': '9', 'x-ratelimit-reset': '30' }, NOW), 1500)
  t.equal(retryAfterMs({ 'retry-after-ms': '250.2' }, NOW), 251)
  t.equal(retryAfterMs({ 'retry-after-ms': ['700', '900'] }, NOW), 700, 'a repeated header: the first')
  t.equal(retryAfterMs({ 'retry-after-ms': '0', 'retry-after': '2' }, NOW), 2000, 'zero or less says nothing')
  t.equal(retryAfterMs({ 'retry-after-ms': 'soon', 'retry-after': '2' }, NOW), 2000, 'nor does garbage')
})

t.test('Retry-After in seconds, or as an HTTP date', async (t) => {
  t.equal(retryAfterMs({ 'retry-after': '3' }, NOW), 3000)
  t.equal(retryAfterMs({ 'retry-after': '1.5' }, NOW), 1500)
  t.equal(retryAfterMs({ 'retry-after': '0' }, NOW), 0, 'retry at once')
  t.equal(retryAfterMs({ 'retry-after': 'Sun, 06 Dec 2026 10:00:04 GMT' }, NOW), 4000, 'IMF-fixdate, 4 s ahead')
  t.equal(retryAfterMs({ 'retry-after': 'Sunday, 06-Dec-26 10:00:30 GMT' }, NOW), 30_000, 'the obsolete RFC 850 form')
  t.equal(retryAfterMs({ 'retry-after': 'Sun, 06 Dec 2026 09:59:00 GMT' }, NOW), 0, 'a date already past: at once')
  t.equal(retryAfterMs({ 'retry-after': 'later', 'x-ratelimit-reset': '7' }, NOW), 7000,
    'neither a number nor a date: the reset headers decide')
})

t.test('Mistral\'s reset headers alone, every generation: the longest of the spent windows wins', async (t) => {
  t.equal(retryAfterMs({ 'x-ratelimit-reset-tokens-minute': '12' }, NOW), 12_000, 'third generation')
  t.equal(retryAfterMs({ 'x-ratelimit-reset-req-minute': '3', 'x-ratelimit-reset-tokens-minute': '41' }, NOW), 41_000,
    'requests and tokens: wait for both')
  t.equal(retryAfterMs({
    'x-ratelimit-reset-minute': '20', 'x-ratelimit-reset-month': '86400', 'x-ratelimit-remaining-month': '0'
  }, NOW), 86_400_000, 'second generation: a month\'s quota shown spent outlasts the minute')
  t.equal(retryAfterMs({ 'ratelimitbysize-reset': '30' }, NOW), 30_000, 'first generation')
  t.equal(retryAfterMs({ 'x-ratelimit-reset': '5' }, NOW), 5000)
  t.equal(retryAfterMs({ 'x-ratelimit-reset-tokens-minute': '0', 'x-ratelimit-remaining-tokens-minute': '0' }, NOW),
    undefined, 'a reset of 0 and remaining counts say nothing about when')
  t.equal(retryAfterMs({ 'x-ratelimit-limit-tokens-minute': '500000' }, NOW), undefined, 'a limit is not a wait')
  t.equal(retryAfterMs({}, NOW), undefined, 'no hint at all: the caller backs off')
})

t.test('a window with room left, or a month not shown spent, does not set the wait', async (t) => {
  const minuteSpent = {
    'x-ratelimit-reset-minute': '20',
    'x-ratelimitbysize-remaining-minute': '0',
    'x-ratelimit-reset-month': '1900000',
    'x-ratelimitbysize-remaining-month': '999000000'
  }
  t.equal(retryAfterMs(minuteSpent, NOW), 20_000, 'the minute is spent, the month has room: 20 s, not 22 days')
  t.equal(retryAfterMs({ 'x-ratelimit-reset-minute': '20', 'x-ratelimit-reset-month': '1900000' }, NOW), 20_000,
    'nothing says which is spent: the month\'s reset alone never cools a key for weeks')
  t.equal(retryAfterMs({ 'x-ratelimit-reset-month': '1900000' }, NOW), undefined,
    'a month\'s reset alone, not shown spent: no hint, the caller backs off')
  t.equal(retryAfterMs({
    'x-ratelimit-reset-req-minute': '3', 'x-ratelimit-remaining-req-minute': '0',
    'x-ratelimit-reset-tokens-minute': '41', 'x-ratelimit-remaining-tokens-minute': '120000'
  }, NOW), 3000, 'requests spent, tokens left: the requests\' reset')
  t.equal(retryAfterMs({
    'ratelimitbysize-reset': '40', 'ratelimitbysize-remaining': '467993', 'x-ratelimit-reset-req-minute': '3'
  }, NOW), 3000, 'a window with room is left out; one without a count may be the spent one')
  t.equal(retryAfterMs({ 'ratelimitbysize-reset': '40', 'ratelimitbysize-remaining': 'n/a' }, NOW), 40_000,
    'a count that is no number says nothing')
})

t.test('a token window with less left than the call costs is spent', async (t) => {
  t.equal(retryAfterMs({
    'ratelimitbysize-reset': '40', 'ratelimitbysize-remaining': '300', 'ratelimitbysize-query-cost': '5000'
  }, NOW), 40_000, 'first generation: 300 tokens left, the call costs 5000')
  t.equal(retryAfterMs({
    'x-ratelimit-reset-req-minute': '3', 'x-ratelimit-remaining-req-minute': '700',
    'x-ratelimit-reset-tokens-minute': '41', 'x-ratelimit-remaining-tokens-minute': '51',
    'x-ratelimit-tokens-query-cost': '52'
  }, NOW), 41_000, 'third generation: the tokens\' reset, the requests having room')
  t.equal(retryAfterMs({
    'x-ratelimit-reset-minute': '20', 'x-ratelimitbysize-remaining-minute': '900', 'ratelimitbysize-query-cost': '1000',
    'x-ratelimit-reset-month': '1900000', 'x-ratelimitbysize-remaining-month': '999000000'
  }, NOW), 20_000, 'second generation: the minute cannot take the call, the month can')
  t.equal(retryAfterMs({
    'ratelimitbysize-reset': '40', 'ratelimitbysize-remaining': '5000', 'ratelimitbysize-query-cost': '5000',
    'x-ratelimit-reset-req-minute': '3'
  }, NOW), 3000, 'exactly the cost left: room for the call, the window is left out')
  t.equal(retryAfterMs({
    'x-ratelimit-reset-req-minute': '3', 'x-ratelimit-remaining-req-minute': '2', 'x-ratelimit-tokens-query-cost': '52',
    'x-ratelimit-reset': '9'
  }, NOW), 9000, 'a token cost says nothing of a count of requests')
  t.equal(retryAfterMs({
    'ratelimitbysize-reset': '40', 'ratelimitbysize-remaining': '300', 'ratelimitbysize-query-cost': 'n/a',
    'x-ratelimit-reset-req-minute': '3'
  }, NOW), 3000, 'a cost that is no number says nothing')
  t.equal(retryAfterMs({
    'x-ratelimit-reset-tokens-minute': '20', 'x-ratelimit-remaining-tokens-minute': '0',
    'x-ratelimit-reset-tokens-month': '1900000', 'x-ratelimit-remaining-tokens-month': '300',
    'x-ratelimit-tokens-query-cost': '5000'
  }, NOW), 20_000, 'a month with less left than one large call is not spent: smaller calls still fit it')
})

t.test('a spend-limit 429 is told apart from a rate limit by its words', async (t) => {
  for (const body of ['{"message":"You have reached your monthly spending limit"}', '{"detail":"Usage limit exceeded"}',
    '{"message":"insufficient_funds"}', '{"message":"Budget limit reached for this workspace"}']) {
    t.ok(isSpendLimit(body), body)
  }
  for (const body of ['{"message":"Requests rate limit exceeded"}', '{"message":"Tokens per minute exceeded"}', '']) {
    t.notOk(isSpendLimit(body), body || '(empty)')
  }
})

t.test('what clients are told: whole seconds rounded up (never 0) and the exact ms', async (t) => {
  t.same(retryAfterHeaders(1), { 'retry-after': '1', 'retry-after-ms': '1' })
  t.same(retryAfterHeaders(0), { 'retry-after': '1', 'retry-after-ms': '1' }, 'at once is still a wait of 1 ms')
  t.same(retryAfterHeaders(1000), { 'retry-after': '1', 'retry-after-ms': '1000' })
  t.same(retryAfterHeaders(1000.2), { 'retry-after': '2', 'retry-after-ms': '1001' }, 'never shorter than the wait')
  t.same(retryAfterHeaders(59_001), { 'retry-after': '60', 'retry-after-ms': '59001' })
})

t.test('a cooldown only ever extends: a shorter hint never shortens it', async (t) => {
  let now = NOW
  const health = createKeyHealth({ redis: null, bus: createLocalBus(), clock: () => now })
  t.equal(health.blocked('key'), undefined, 'usable at first')
  const first = await health.rateLimited('ws', 'key', 5_000, false)
  t.same(first, { reason: 'rate_limited', until: NOW + 5_000 })
  now += 1_000
  const shorter = await health.rateLimited('ws', 'key', 1_000, false)
  t.same(shorter, { reason: 'rate_limited', until: NOW + 5_000 }, 'a later 429 asking for 1 s: still until +5 s')
  t.same(health.blocked('key'), { reason: 'rate_limited', until: NOW + 5_000 })
  const longer = await health.rateLimited('ws', 'key', 10_000, false)
  t.same(longer, { reason: 'rate_limited', until: NOW + 11_000 }, 'a longer one extends it')
  now = NOW + 11_000
  t.equal(health.blocked('key'), undefined, 'over at its end')
})
