/**
 * Deterministic stand-ins for Mistral's tokenizer and generator, so a test can predict every number the fake reports:
 * one token per 4 characters of prompt text (at least 1), one token per generated word.
 */
export type Usage = Record<string, unknown>

export function countTokens (text: string): number {
  return Math.max(1, Math.ceil(text.length / 4))
}

/** The text of a `content` field: a string, or the `text` of its chunks (images and audio count nothing). */
export function contentText (content: unknown): string {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) return ''
  return content.map((chunk: { text?: unknown }) => (typeof chunk?.text === 'string' ? chunk.text : '')).join('')
}

export function messagesText (messages: unknown): string {
  if (!Array.isArray(messages)) return ''
  return messages.map((message: { content?: unknown }) => contentText(message?.content)).join('')
}

const WORDS = ['Hello', 'from', 'the', 'fake', 'Mistral', 'upstream:', 'every', 'word', 'here', 'is', 'one', 'token.']

/** `count` words, each a delta of its own when streamed, that join into one sentence. */
export function generatedWords (count: number): string[] {
  return Array.from({ length: count }, (_, i) => (i === 0 ? '' : ' ') + WORDS[i % WORDS.length])
}

export interface UsageHints {
  prompt_cache_key?: unknown
  service_tier?: unknown
}

/** `UsageInfo` as chat, FIM and agents completions report it (MISTRAL-NOTES §2.5). */
export function completionUsage (promptTokens: number, completionTokens: number, hints: UsageHints = {}): Usage {
  const usage: Usage = {
    prompt_tokens: promptTokens,
    total_tokens: promptTokens + completionTokens,
    completion_tokens: completionTokens
  }
  // Caching works in 64-token blocks (Mistral docs, prompt-caching): with a cache key, every whole block is a hit
  if (hints.prompt_cache_key != null) {
    usage.prompt_tokens_details = { cached_tokens: Math.floor(promptTokens / 64) * 64 }
  }
  // `service_tier: "auto"` may be served at priority: the fake always does, so tier pricing can be tested
  if (hints.service_tier != null) usage.service_tier = hints.service_tier === 'auto' ? 'priority' : 'standard'
  return usage
}
