import { randomBytes } from 'node:crypto'

/**
 * Headers Mistral's edge (Kong behind Cloudflare) puts on every answer (MISTRAL-NOTES §3.1). The cookie is there so
 * gateway tests can prove `set-cookie` is stripped before it reaches a tenant.
 */
export function edgeHeaders (correlationId: string): Record<string, string> {
  return {
    'mistral-correlation-id': correlationId,
    'x-kong-request-id': randomBytes(16).toString('hex'),
    'x-envoy-upstream-service-time': '42',
    'set-cookie': `__cf_bm=${randomBytes(24).toString('base64url')}; path=/; HttpOnly; Secure; SameSite=None`
  }
}

export interface RateLimitState {
  /** tokens this request is charged */
  cost: number
  /** true on a 429: every `remaining` is 0 */
  exhausted?: boolean
  /** seconds until the window resets (generation 1 only has a header for it) */
  resetSeconds?: number
}

const TOKENS_PER_MINUTE = 5_000_000
const REQUESTS_PER_MINUTE = 720
const TOKENS_PER_MONTH = 1_000_000_000

/** The three generations of Mistral rate-limit headers (MISTRAL-NOTES §3.3); none is OpenAI-style. */
export function rateLimitHeaders (generation: 1 | 2 | 3, state: RateLimitState): Record<string, string> {
  const tokensLeft = state.exhausted ? 0 : TOKENS_PER_MINUTE - state.cost
  if (generation === 1) {
    return {
      'ratelimitbysize-limit': String(TOKENS_PER_MINUTE),
      'ratelimitbysize-remaining': String(tokensLeft),
      'ratelimitbysize-reset': String(state.resetSeconds ?? 40),
      'ratelimitbysize-query-cost': String(state.cost)
    }
  }
  if (generation === 2) {
    return {
      'x-ratelimitbysize-limit-minute': String(TOKENS_PER_MINUTE),
      'x-ratelimitbysize-remaining-minute': String(tokensLeft),
      'x-ratelimitbysize-limit-month': String(TOKENS_PER_MONTH),
      'x-ratelimitbysize-remaining-month': String(state.exhausted ? 0 : TOKENS_PER_MONTH - state.cost)
    }
  }
  return {
    'x-ratelimit-limit-tokens-minute': String(TOKENS_PER_MINUTE),
    'x-ratelimit-remaining-tokens-minute': String(tokensLeft),
    'x-ratelimit-tokens-query-cost': String(state.cost),
    'x-ratelimit-limit-req-minute': String(REQUESTS_PER_MINUTE),
    'x-ratelimit-remaining-req-minute': String(state.exhausted ? 0 : REQUESTS_PER_MINUTE - 1)
  }
}
