const RETRYABLE = new Set([502, 503, 504])

/**
 * An answer that counts against its key (its breaker) and may be sent again: 502, 503, 504, or a status outside
 * HTTP's 200-599, which undici reads (any three digits) but only a broken hop between the gateway and Mistral sends.
 * Clients' calls (proxy/attempts.ts) and the batch watcher's probe reads (usage/batch-upstream.ts) judge alike.
 */
export function failedAnswer (status: number): boolean {
  return RETRYABLE.has(status) || status < 200 || status > 599
}
