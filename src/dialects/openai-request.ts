import { createHash } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'

// OpenAI clients send parameters Mistral rejects with a 422 (additionalProperties: false). Each is translated to
// Mistral's own, or dropped after being noted (MISTRAL-NOTES §5.1-5.2, §5.5). A Mistral client sends none of them,
// so the translation never changes what it sends.

/** What the response side must do for an OpenAI client, noted while its request was translated. */
export interface DialectNotes {
  /** `stream_options.include_usage`: a final chunk with empty `choices` and the usage, before [DONE] */
  includeUsage: boolean
  /** `encoding_format: "base64"` asked of embeddings: Mistral sends floats, the gateway encodes them */
  base64Embeddings: boolean
  /** chat: the body held a parameter only OpenAI clients send, so its answer goes to one (see `sentByOpenAiClient`) */
  openAiFields?: boolean
}

const DROPPED_CHAT = ['stream_options', 'user', 'store', 'logit_bias', 'logprobs', 'top_logprobs', 'safety_identifier',
  'web_search_options', 'verbosity', 'prompt_cache_retention', 'modalities', 'audio', 'functions', 'function_call']
const TOOL_CALL_ID = /^[a-zA-Z0-9]{9}$/
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'

// Mistral rejects each of them with a 422, so a Mistral client never sends one
const OPENAI_ONLY_CHAT = ['max_completion_tokens', 'seed', ...DROPPED_CHAT]

/**
 * Whether the request comes from an OpenAI SDK, by the `x-stainless-*` headers openai-node and openai-python send on
 * every call (MISTRAL-NOTES §5, §6.2; LangChain's ChatOpenAI wraps openai-node). The Mistral SDK sends none. What the
 * answer must become depends on it, and of a request only what `service_tier: "auto"` means; the rest of a request is
 * translated whoever sends it.
 */
export function sentByOpenAiClient (headers: IncomingHttpHeaders): boolean {
  return headers['x-stainless-lang'] !== undefined
}

/**
 * Translates a chat (or FIM, agents) body in place; returns the notes the response side needs. The request's
 * `headers` tell an OpenAI client's `service_tier: "auto"` from Mistral's (mistralServiceTier).
 */
export function translateChatRequest (body: Record<string, unknown>, headers: IncomingHttpHeaders = {}): DialectNotes {
  const notes: DialectNotes = { includeUsage: false, base64Embeddings: false }
  // looked for before the translation below removes them
  notes.openAiFields = OPENAI_ONLY_CHAT.some((field) => body[field] !== undefined)
  const streamOptions = body.stream_options as { include_usage?: unknown } | undefined
  notes.includeUsage = body.stream === true && streamOptions?.include_usage === true
  // OpenAI's newer name wins when both are sent
  if (body.max_completion_tokens !== undefined) {
    if (body.max_completion_tokens !== null) body.max_tokens = body.max_completion_tokens
    delete body.max_completion_tokens
  }
  if (body.seed !== undefined) {
    if (body.random_seed === undefined && body.seed !== null) body.random_seed = mistralSeed(body.seed)
    delete body.seed
  }
  legacyFunctions(body)
  for (const field of DROPPED_CHAT) delete body[field]
  if (body.tool_choice === 'required') body.tool_choice = 'any'
  if (typeof body.temperature === 'number' && body.temperature > 1.5) body.temperature = 1.5
  // Mistral's top_p must be above 0 (exclusiveMinimum); OpenAI's 0 means "only the likeliest token": greedy decoding
  if (body.top_p === 0) {
    delete body.top_p
    body.temperature = 0
  }
  if (typeof body.service_tier === 'string') {
    body.service_tier = mistralServiceTier(body.service_tier, notes.openAiFields || sentByOpenAiClient(headers))
  }
  const prediction = body.prediction as { content?: unknown } | undefined
  if (prediction && Array.isArray(prediction.content)) prediction.content = joinText(prediction.content)
  if (Array.isArray(body.tools)) {
    for (const tool of body.tools as Array<{ function?: Record<string, unknown> }>) {
      // Mistral requires `parameters`; OpenAI lets a function without arguments omit it
      if (tool?.function && tool.function.parameters === undefined) {
        tool.function.parameters = { type: 'object', properties: {} }
      }
    }
  }
  // translated first: a legacy `function_call` turn becomes a tool call, which keeps it from looking empty
  if (Array.isArray(body.messages)) body.messages = body.messages.map(translateMessage).filter(keepMessage)
  return notes
}

export function translateEmbeddingsRequest (body: Record<string, unknown>): DialectNotes {
  // openai-node asks for base64 by default; Mistral's base64 vectors do not decode as OpenAI's (MISTRAL-NOTES §5.5)
  const base64Embeddings = body.encoding_format === 'base64'
  if (body.encoding_format !== undefined) body.encoding_format = 'float'
  if (body.dimensions !== undefined) {
    if (body.output_dimension === undefined) body.output_dimension = body.dimensions
    delete body.dimensions
  }
  delete body.user
  return { includeUsage: false, base64Embeddings }
}

/**
 * OpenAI's `seed` is any signed 64-bit integer; Mistral's `random_seed` has `minimum: 0` (and no maximum), so a
 * negative one is a 422. A negative seed becomes itself modulo 2^32 (`>>> 0`, -1 → 4294967295): the same seed
 * always gives the same `random_seed`, and it fits even a 32-bit seed. Not modulo 2^64: past 2^53 a JS number is
 * not exact.
 */
function mistralSeed (seed: unknown): unknown {
  return typeof seed === 'number' && Number.isInteger(seed) && seed < 0 ? seed >>> 0 : seed
}

/**
 * Mistral's tier (`auto` | `standard_only`) for a requested one. The same word means two things: OpenAI's `auto` is
 * the project's default tier, standard, while Mistral's `auto` opts in to priority capacity, billed at 1.75×
 * (MISTRAL-NOTES §4). So only OpenAI's `priority` becomes Mistral's `auto`, and a Mistral client's `auto` stays.
 * OpenAI's `default`, `flex` and `scale` are standard.
 */
function mistralServiceTier (tier: string, openAiClient: boolean): string {
  if (tier === 'priority') return 'auto'
  return tier === 'auto' && !openAiClient ? 'auto' : 'standard_only'
}

/**
 * Mistral accepts tool-call ids of 9 letters and digits only. Any other id (from a conversation started elsewhere)
 * becomes a hash of itself: the same id maps to the same 9 characters in the assistant call and in the tool reply,
 * and in every later request of the conversation.
 */
export function mistralToolCallId (id: string): string {
  if (TOOL_CALL_ID.test(id)) return id
  const digest = createHash('sha256').update(id).digest()
  let out = ''
  for (let i = 0; i < 9; i++) out += BASE62[digest[i] % 62]
  return out
}

function keepMessage (message: unknown): boolean {
  if (message === null || typeof message !== 'object') return true
  const { role, content, tool_calls: toolCalls } = message as Record<string, unknown>
  // an empty assistant turn without tool calls is rejected by Mistral and says nothing
  const calls = Array.isArray(toolCalls) && toolCalls.length > 0
  return !(role === 'assistant' && (content === '' || content === null) && !calls)
}

function translateMessage (message: unknown): unknown {
  if (message === null || typeof message !== 'object') return message
  const m = message as Record<string, unknown>
  if (m.role === 'developer') m.role = 'system'
  if (m.role === 'function') {
    m.role = 'tool'
    if (m.tool_call_id === undefined && typeof m.name === 'string') m.tool_call_id = mistralToolCallId(m.name)
  }
  if (m.role !== 'tool') delete m.name
  if (m.role === 'assistant') {
    // a legacy function call is a tool call whose id is its name, as the `function` reply below names it
    const legacy = m.function_call as { name?: unknown, arguments?: unknown } | undefined
    if (legacy && typeof legacy.name === 'string' && !(Array.isArray(m.tool_calls) && m.tool_calls.length > 0)) {
      const fn = { name: legacy.name, arguments: legacy.arguments ?? '' }
      m.tool_calls = [{ id: legacy.name, type: 'function', function: fn }]
    }
    for (const field of ['refusal', 'audio', 'function_call', 'reasoning_content', 'annotations']) delete m[field]
    // a refusal part has no Mistral equivalent: what the model refused is no prompt for the next turn
    if (Array.isArray(m.content)) m.content = m.content.filter((part) => !isRefusal(part))
    if (Array.isArray(m.tool_calls)) {
      for (const call of m.tool_calls as Array<Record<string, unknown>>) {
        if (typeof call?.id === 'string') call.id = mistralToolCallId(call.id)
      }
    }
  }
  if (m.role === 'tool' && typeof m.tool_call_id === 'string') m.tool_call_id = mistralToolCallId(m.tool_call_id)
  if (Array.isArray(m.content)) m.content = m.content.map(translatePart)
  return m
}

function isRefusal (part: unknown): boolean {
  return part !== null && typeof part === 'object' && (part as { type?: unknown }).type === 'refusal'
}

function translatePart (part: unknown): unknown {
  if (part === null || typeof part !== 'object') return part
  const p = part as Record<string, unknown>
  // OpenAI: { input_audio: { data, format } }; Mistral: { input_audio: "<base64>" }
  if (p.type === 'input_audio' && p.input_audio && typeof p.input_audio === 'object') {
    p.input_audio = (p.input_audio as { data?: unknown }).data
  }
  // OpenAI: { type: "file", file: { file_id | file_data, filename } }; Mistral: { type: "file", file_id } for a file
  // uploaded to it, or a document_url for inline data (MISTRAL-NOTES §5.2)
  if (p.type === 'file' && p.file && typeof p.file === 'object') {
    const { file_id: fileId, file_data: fileData, filename } = p.file as Record<string, unknown>
    if (typeof fileId === 'string') return { type: 'file', file_id: fileId }
    if (typeof fileData === 'string') {
      const name = typeof filename === 'string' ? { document_name: filename } : {}
      return { type: 'document_url', document_url: fileData, ...name }
    }
  }
  return p
}

/** OpenAI's legacy `functions` / `function_call` become `tools` / `tool_choice`. */
function legacyFunctions (body: Record<string, unknown>) {
  if (Array.isArray(body.functions) && body.tools === undefined) {
    body.tools = body.functions.map((fn) => ({ type: 'function', function: fn }))
  }
  const call = body.function_call
  if (call !== undefined && body.tool_choice === undefined) {
    if (call === 'none' || call === 'auto') body.tool_choice = call
    else if (call && typeof call === 'object') {
      body.tool_choice = { type: 'function', function: { name: (call as { name?: unknown }).name } }
    }
  }
}

function joinText (parts: unknown[]): string {
  return parts.map((part) => typeof part === 'string' ? part : (part as { text?: unknown })?.text ?? '').join('')
}
