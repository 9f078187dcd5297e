type Headers = Record<string, string | string[] | undefined>

const first = (value: string | string[] | undefined) => Array.isArray(value) ? value[0] : value

// Mistral's reset headers (MISTRAL-NOTES §3.3): relative seconds, in three generations of names, each beside the
// names of the same window's remaining count. Every answer carries them, the windows that still have room included
const RESET_HEADERS: ReadonlyArray<{ reset: string, remaining: readonly string[], month: boolean }> = [
  { reset: 'ratelimitbysize-reset', remaining: ['ratelimitbysize-remaining'], month: false },
  { reset: 'x-ratelimit-reset-tokens-minute', remaining: ['x-ratelimit-remaining-tokens-minute'], month: false },
  { reset: 'x-ratelimit-reset-req-minute', remaining: ['x-ratelimit-remaining-req-minute'], month: false },
  { reset: 'x-ratelimit-reset-tokens-month', remaining: ['x-ratelimit-remaining-tokens-month'], month: true },
  {
    reset: 'x-ratelimit-reset-minute',
    remaining: ['x-ratelimit-remaining-minute', 'x-ratelimitbysize-remaining-minute'],
    month: false
  },
  {
    reset: 'x-ratelimit-reset-month',
    remaining: ['x-ratelimit-remaining-month', 'x-ratelimitbysize-remaining-month'],
    month: true
  },
  { reset: 'x-ratelimit-reset', remaining: ['x-ratelimit-remaining'], month: false }
]

// what the refused call would have cost, beside the token counts it is taken from (MISTRAL-NOTES §3.3): a token window
// with less left than that refuses the call though its count is not 0. Not a month's: one large call that does not fit
// what is left of it must not keep every smaller call away from the key until the month ends
const QUERY_COST: Readonly<Record<string, string>> = {
  'ratelimitbysize-remaining': 'ratelimitbysize-query-cost',
  'x-ratelimitbysize-remaining-minute': 'ratelimitbysize-query-cost',
  'x-ratelimit-remaining-tokens-minute': 'x-ratelimit-tokens-query-cost'
}

/**
 * How long Mistral asks us to wait, in ms, from its 429: `retry-after-ms`, `Retry-After` (seconds or an HTTP date,
 * RFC 9110 §10.2.3), or a rate-limit reset header; undefined when it says nothing usable.
 */
export function retryAfterMs (headers: Headers, now: number): number | undefined {
  const ms = Number(first(headers['retry-after-ms']))
  if (Number.isFinite(ms) && ms > 0) return Math.ceil(ms)
  const retryAfter = first(headers['retry-after'])
  if (retryAfter !== undefined) {
    const seconds = Number(retryAfter)
    if (Number.isFinite(seconds) && seconds >= 0) return Math.ceil(seconds * 1000)
    const date = Date.parse(retryAfter)
    if (Number.isFinite(date)) return Math.max(0, date - now)
  }
  return resetWait(headers)
}

/**
 * The wait the reset headers give: the longest reset of the windows shown spent (a remaining count of 0, or of tokens
 * below the call's cost), else of the windows that may be, less the month's. A window with room left says nothing of
 * this 429, and a month's reset, weeks away on every answer, cools a key only when its remaining count shows the month
 * spent: a minute's 429 beside it would otherwise keep the key away until the month ends.
 */
function resetWait (headers: Headers): number | undefined {
  let spent: number | undefined
  let unknown: number | undefined
  for (const window of RESET_HEADERS) {
    const seconds = Number(first(headers[window.reset]))
    if (!Number.isFinite(seconds) || seconds <= 0) continue
    const counts = window.remaining
      .map((name) => ({ left: Number(first(headers[name])), cost: queryCost(headers, name) }))
      .filter(({ left }) => Number.isFinite(left))
    if (counts.some(({ left, cost }) => left <= 0 || left < cost)) spent = Math.max(spent ?? 0, seconds * 1000)
    else if (counts.length === 0 && !window.month) unknown = Math.max(unknown ?? 0, seconds * 1000)
  }
  return spent ?? unknown
}

/** The refused call's cost in the units of the count `remaining` names; 0 when not a token count or not given. */
function queryCost (headers: Headers, remaining: string): number {
  const name = QUERY_COST[remaining]
  const cost = name === undefined ? NaN : Number(first(headers[name]))
  return Number.isFinite(cost) ? cost : 0
}

/**
 * A 429 that means the client's Mistral organisation reached its monthly spend or usage limit, not a rate limit:
 * waiting a minute will not help (MISTRAL-NOTES §3.2). Told apart by its words, since Mistral gives it no code.
 */
export function isSpendLimit (body: string): boolean {
  return /(usage|spend(ing)?|budget|billing)[ _-]?limit|quota|insufficient[ _]?(funds|credit)|payment/i.test(body)
}
