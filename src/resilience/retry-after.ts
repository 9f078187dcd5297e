type Headers = Record<string, string | string[] | undefined>

const first = (value: string | string[] | undefined) => Array.isArray(value) ? value[0] : value

// Mistral's reset headers (MISTRAL-NOTES §3.3): relative seconds, in three generations of names
const RESET_HEADERS = [
  'ratelimitbysize-reset',
  'x-ratelimit-reset-tokens-minute', 'x-ratelimit-reset-req-minute', 'x-ratelimit-reset-tokens-month',
  'x-ratelimit-reset-minute', 'x-ratelimit-reset-month', 'x-ratelimit-reset'
]

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
  let longest: number | undefined
  for (const name of RESET_HEADERS) {
    const seconds = Number(first(headers[name]))
    if (Number.isFinite(seconds) && seconds > 0 && (longest === undefined || seconds * 1000 > longest)) longest = seconds * 1000
  }
  return longest
}

/**
 * A 429 that means the client's Mistral organisation reached its monthly spend or usage limit, not a rate limit:
 * waiting a minute will not help (MISTRAL-NOTES §3.2). Told apart by its words, since Mistral gives it no code.
 */
export function isSpendLimit (body: string): boolean {
  return /(usage|spend(ing)?|budget|billing)[ _-]?limit|quota|insufficient[ _]?(funds|credit)|payment/i.test(body)
}
