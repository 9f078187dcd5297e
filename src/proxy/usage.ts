/** Units of one metered call, as Mistral reported them (MISTRAL-NOTES §2.5). */
export interface Usage {
  promptTokens: number
  cachedTokens: number
  completionTokens: number
  totalTokens: number
  audioSeconds: number
  pages: number
  characters: number
  /** conversations: tokens the built-in connectors (web search, code interpreter…) spent */
  connectorTokens: number
  /** `standard` or `priority`: the tier that served the call, which decides its price (MISTRAL-NOTES §4) */
  serviceTier: string | null
}

export const emptyUsage = (): Usage => ({
  promptTokens: 0,
  cachedTokens: 0,
  completionTokens: 0,
  totalTokens: 0,
  audioSeconds: 0,
  pages: 0,
  characters: 0,
  connectorTokens: 0,
  serviceTier: null
})

// a tier name goes into the ledger as it came; one Mistral has not named yet must not be an unbounded string
const TIER = /^[a-z_]{1,32}$/

const int = (value: unknown) => typeof value === 'number' && Number.isFinite(value) && value > 0 ? Math.round(value) : 0

/**
 * Reads the units from a response body or an SSE event payload: `usage` on completions, embeddings, moderations,
 * conversations (`conversation.response.done`, with `connector_tokens`) and audio (`transcription.done`,
 * `speech.audio.done`); `usage_info` on OCR; `usage.service_tier` where Mistral says which tier served the call.
 * Undefined when the payload carries none.
 */
export function readUsage (payload: unknown): Usage | undefined {
  if (payload === null || typeof payload !== 'object') return undefined
  const body = payload as Record<string, unknown>
  const usage = body.usage as Record<string, unknown> | null | undefined
  const ocr = body.usage_info as Record<string, unknown> | null | undefined
  if ((usage === null || typeof usage !== 'object') && (ocr === null || typeof ocr !== 'object')) return undefined
  const result = emptyUsage()
  if (usage && typeof usage === 'object') {
    const details = usage.prompt_tokens_details as Record<string, unknown> | null | undefined
    result.promptTokens = int(usage.prompt_tokens)
    result.completionTokens = int(usage.completion_tokens)
    result.totalTokens = int(usage.total_tokens) || result.promptTokens + result.completionTokens
    result.cachedTokens = int(details?.cached_tokens ?? usage.num_cached_tokens)
    result.audioSeconds = int(usage.prompt_audio_seconds)
    result.connectorTokens = int(usage.connector_tokens)
    if (typeof usage.service_tier === 'string' && TIER.test(usage.service_tier)) result.serviceTier = usage.service_tier
  }
  if (ocr && typeof ocr === 'object') result.pages = int(ocr.pages_processed)
  return result
}

/**
 * The model a response names; agents completions carry no model in the request. A conversation's answer names it on
 * each of its `outputs` entries, not at the top (an append or a restart never names it in its request).
 */
export function readModel (payload: unknown): string | undefined {
  if (payload === null || typeof payload !== 'object') return undefined
  const { model, outputs } = payload as Record<string, unknown>
  if (typeof model === 'string') return model
  if (!Array.isArray(outputs)) return undefined
  for (const entry of outputs) {
    const named = entry !== null && typeof entry === 'object' ? (entry as Record<string, unknown>).model : undefined
    if (typeof named === 'string') return named
  }
  return undefined
}
