import type { SseShaping } from '../proxy/usage-tap.js'
import { endOfEvents, WholeEvents } from './sse-events.js'

// What an OpenAI client needs of a response and a Mistral client does not mind (DESIGN.md "Two dialects"):
// a final usage chunk when it asked for one, `index` and `type` on streamed tool calls, base64 embeddings, and an
// `error` object on error bodies. And, for OpenAI clients only (a Mistral client needs them as they are): a
// reasoning model's content chunks as text, Mistral's own finish reason as OpenAI's, and tool calls typed, with their
// arguments as JSON text. Everything else passes as Mistral sent it.

/**
 * Reshapes a chat event stream for OpenAI clients (MISTRAL-NOTES §5.4): streamed tool calls get `index` and `type`
 * (openai-node's stream helper throws without them); when `include_usage` was asked, the usage Mistral puts on its
 * last chunk moves to an extra chunk with empty `choices`, before [DONE], as OpenAI sends it (a client that adds up
 * the usage of every chunk would otherwise count it twice); and an error Mistral sends as an event gains the `error`
 * object openai-node throws on. For a client known to speak OpenAI's dialect (`openAiClient`), a reasoning model's
 * content chunks become text, `model_length` becomes `length` and a tool call's object arguments become JSON text
 * too (openAiChoices). Only events that may need one of these are parsed, and reads of whole events that need none
 * (most) go on undecoded, as the Buffers they came in. Runs in the usage tap's pass, which reads Mistral's bytes before
 * this changes them.
 */
export function openAiStreamShaping ({ includeUsage, openAiClient = false }: {
  includeUsage: boolean
  openAiClient?: boolean
}): SseShaping {
  const toolCalls = createToolCallIndexer()
  // bytes after the last blank line so far: the start of an event still coming
  const events = new WholeEvents()
  const shape = (event: string): string => {
    const needsTools = event.includes('"tool_calls"')
    const needsUsage = includeUsage && event.includes('"usage"')
    const needsError = event.includes('"object":"error"') || event.includes('"object": "error"')
    const needsChoices = openAiClient && mayNeedOpenAiChoices(event)
    if (!needsTools && !needsUsage && !needsError && !needsChoices) return event
    const dataAt = event.indexOf('data: ')
    if (dataAt === -1) return event
    let chunk: Record<string, unknown>
    try {
      chunk = JSON.parse(event.slice(dataAt + 6))
    } catch {
      return event
    }
    if (chunk === null || typeof chunk !== 'object') return event
    if (chunk.object === 'error') return `data: ${withOpenAiError(JSON.stringify(chunk), 500)}`
    const { usage } = chunk
    const movesUsage = needsUsage && usage !== undefined && usage !== null
    if (!needsTools && !movesUsage && !needsChoices) return event
    if (needsTools) toolCalls.index(chunk)
    if (needsChoices) openAiChoices(chunk, 'delta')
    if (movesUsage) delete chunk.usage
    let out = `data: ${JSON.stringify(chunk)}`
    if (movesUsage) {
      const { id, object, created, model } = chunk
      out += `\n\ndata: ${JSON.stringify({ id, object, created, model, choices: [], usage })}`
    }
    return out
  }
  // an event ends at a blank line, LF- or CRLF-framed; the blank line goes on as it came
  const shapeEvents = (events: Buffer) => events.toString('utf8').split(/(\r?\n\r?\n)/)
    .map((part, i) => i % 2 === 0 ? shape(part) : part).join('')
  // what `shape` acts on, searched in the bytes; `plain` reads have been searched for usage and errors by the tap
  const mayNeedShaping = (events: Buffer, plain: boolean) => events.includes(TOOL_CALLS) ||
    (!plain && (events.includes(OBJECT_ERROR) || events.includes(SPACED_OBJECT_ERROR) ||
      (includeUsage && events.includes(USAGE)))) ||
    (openAiClient && mayNeedOpenAiChoicesIn(events))
  return {
    write (chunk, plain) {
      // the usual read (content deltas): whole events, nothing held back before them, none that `shape` would
      // change. They go on as they came, undecoded, as they would without the reshaping
      const whole = plain || endOfEvents(chunk) === chunk.length
      if (events.empty && whole && !mayNeedShaping(chunk, plain)) return chunk
      const complete = events.take(chunk)
      return complete === undefined ? undefined : shapeEvents(complete)
    },
    end () {
      const rest = events.rest()
      return rest === undefined ? undefined : shapeEvents(rest)
    },
    drop () { events.rest() }
  }
}

const TOOL_CALLS = Buffer.from('"tool_calls"')
const OBJECT_ERROR = Buffer.from('"object":"error"')
const SPACED_OBJECT_ERROR = Buffer.from('"object": "error"')
const USAGE = Buffer.from('"usage"')
/**
 * A chat answer for an OpenAI client (MISTRAL-NOTES §5.3): a reasoning model's content chunks become text,
 * `model_length` becomes `length`, and tool calls get `type` and JSON-text arguments (openAiChoices). An answer that
 * has none of these is not parsed; one that is not JSON passes as it came, as the client would have read it without
 * the gateway.
 */
export function openAiChatCompletion (body: string): string {
  if (!mayNeedOpenAiChoices(body)) return body
  const parsed = parseJsonObject(body)
  if (parsed === undefined) return body
  openAiChoices(parsed, 'message')
  return JSON.stringify(parsed)
}

/** A JSON object's fields; undefined for text that is not JSON, or JSON that is not an object. */
export function parseJsonObject (text: string): Record<string, unknown> | undefined {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    return undefined
  }
  return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)
    ? parsed as Record<string, unknown>
    : undefined
}

// a content or tool calls that are an array, however spaced; a false hit (the words inside a string) only costs a
// parse. Mistral's plain answers say `"tool_calls": null`, which is no hit
const ARRAY_FIELD = /"(?:content|tool_calls)"\s*:\s*\[/

/**
 * The cheap check before a parse: only an array content, tool calls or Mistral's own finish reason need
 * openAiChoices.
 */
function mayNeedOpenAiChoices (json: string): boolean {
  return json.includes('"model_length"') || ARRAY_FIELD.test(json)
}

const MODEL_LENGTH = Buffer.from('"model_length"')
const CONTENT_KEY = Buffer.from('"content"')
const TOOL_CALLS_KEY = Buffer.from('"tool_calls"')

/**
 * mayNeedOpenAiChoices on bytes, before they are decoded. Spacing allowed as `shape` allows it: a read passed on
 * unshaped must be one it would not change.
 */
function mayNeedOpenAiChoicesIn (json: Buffer): boolean {
  return json.includes(MODEL_LENGTH) || opensArray(json, CONTENT_KEY) || opensArray(json, TOOL_CALLS_KEY)
}

/**
 * Whether `key` is followed by JSON's blanks, a colon, blanks and `[` somewhere in `json`. Every delta holds
 * `"content"`: each hit costs a look at the few bytes after it.
 */
function opensArray (json: Buffer, key: Buffer): boolean {
  for (let at = json.indexOf(key); at !== -1; at = json.indexOf(key, at + key.length)) {
    const colon = skipBlanks(json, at + key.length)
    if (json[colon] === COLON && json[skipBlanks(json, colon + 1)] === OPEN_BRACKET) return true
  }
  return false
}

const COLON = 0x3a
const OPEN_BRACKET = 0x5b

/** Past the JSON whitespace (space, tab, LF, CR) from `at`. */
function skipBlanks (json: Buffer, at: number): number {
  while (json[at] === 0x20 || json[at] === 0x09 || json[at] === 0x0a || json[at] === 0x0d) at++
  return at
}

/**
 * A whole 2xx answer through its dialect's rewrite (embeddings, moderations, an OpenAI client's chat answer). The bytes
 * Mistral sent when the rewrite changes nothing, so that they go on with Mistral's content-length, uncopied; a chat
 * answer with no content chunks, tool calls or Mistral's own finish reason (most of them) is not even decoded.
 */
export function rewriteAnswer (rewrite: (body: string) => string, answer: Buffer): Buffer | string {
  if (rewrite === openAiChatCompletion && !mayNeedOpenAiChoicesIn(answer)) return answer
  const body = answer.toString('utf8')
  const rewritten = rewrite(body)
  return rewritten === body ? answer : rewritten
}

/**
 * Each choice as OpenAI clients read it. A reasoning model (Magistral, or `reasoning_effort` / `prompt_mode`) answers
 * with content chunks (MISTRAL-NOTES §2.4), which openai-node would concatenate as "[object Object]" or hand to
 * JSON.parse: the text chunks' text becomes `content`, the thinking chunks' text `reasoning_content` (LiteLLM's name,
 * which OpenAI-compatible clients read). `model_length` is OpenAI's `length`: the answer was cut at a length limit.
 * Tool calls as openAiToolCalls makes them.
 */
function openAiChoices (payload: Record<string, unknown>, part: 'message' | 'delta') {
  if (!Array.isArray(payload.choices)) return
  for (const choice of payload.choices as unknown[]) {
    if (!isRecord(choice)) continue
    if (choice.finish_reason === 'model_length') choice.finish_reason = 'length'
    const message = choice[part]
    if (!isRecord(message)) continue
    if (Array.isArray(message.content)) Object.assign(message, openAiContent(message.content))
    if (Array.isArray(message.tool_calls)) openAiToolCalls(message.tool_calls)
  }
}

/**
 * Mistral's tool calls come without `type`, and `function.arguments` may be an object (FunctionCall in its spec;
 * MISTRAL-NOTES §5.3). openai-node's parse() and runTools() throw on a call whose type is not `function`, and its
 * stream helper and the AI SDK read the arguments as JSON text: "[object Object]", or "Invalid JSON response".
 */
function openAiToolCalls (calls: unknown[]) {
  for (const call of calls) {
    if (!isRecord(call)) continue
    call.type ??= 'function'
    const fn = call.function
    if (isRecord(fn) && fn.arguments !== null && typeof fn.arguments === 'object') {
      fn.arguments = JSON.stringify(fn.arguments)
    }
  }
}

/** Text and thinking joined apart; other chunks (references, tool references) have no text to show. */
function openAiContent (chunks: unknown[]): { content: string, reasoning_content?: string } {
  const content = textOf(chunks)
  const thinking = chunks.filter(isThinkingChunk)
  if (thinking.length === 0) return { content }
  return { content, reasoning_content: thinking.map((chunk) => textOf(chunk.thinking)).join('') }
}

/** The text of a list's text chunks, joined. */
function textOf (chunks: unknown): string {
  if (!Array.isArray(chunks)) return ''
  return chunks.map((chunk) => isTextChunk(chunk) ? chunk.text : '').join('')
}

function isThinkingChunk (chunk: unknown): chunk is { type: 'thinking', thinking?: unknown } {
  return isRecord(chunk) && chunk.type === 'thinking'
}

function isTextChunk (chunk: unknown): chunk is { type: 'text', text: string } {
  return isRecord(chunk) && chunk.type === 'text' && typeof chunk.text === 'string'
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

/**
 * OpenAI clients assemble streamed tool calls by `index`: every delta of one call carries the call's index, and each
 * new call the next one. Mistral usually sends each call whole, without an index; when it sends none, a call is
 * numbered by its id within its choice, across the whole stream (two calls in two chunks must not both be 0, or the
 * client merges them into one), and a fragment without an id continues the call before it.
 */
function createToolCallIndexer () {
  const byChoice = new Map<unknown, { ids: Map<string, number>, last: number }>()
  return {
    index (chunk: Record<string, unknown>) {
      const choices = Array.isArray(chunk.choices) ? chunk.choices : []
      for (const choice of choices as Array<{ index?: unknown, delta?: { tool_calls?: unknown } }>) {
        const calls = choice?.delta?.tool_calls
        if (!Array.isArray(calls)) continue
        let seen = byChoice.get(choice.index ?? 0)
        if (!seen) byChoice.set(choice.index ?? 0, seen = { ids: new Map(), last: -1 })
        for (const call of calls as Array<Record<string, unknown>>) {
          if (call === null || typeof call !== 'object') continue
          if (typeof call.index !== 'number') {
            const id = typeof call.id === 'string' ? call.id : undefined
            if (id === undefined) call.index = Math.max(seen.last, 0)
            else call.index = seen.ids.get(id) ?? seen.ids.size
          }
          if (typeof call.id === 'string' && !seen.ids.has(call.id)) seen.ids.set(call.id, call.index as number)
          seen.last = call.index as number
          call.type ??= 'function'
        }
      }
    }
  }
}

/** Float vectors as OpenAI's base64: little-endian float32, exactly what openai-node decodes. */
export function base64Embeddings (body: string): string {
  const parsed = JSON.parse(body) as { data?: Array<{ embedding?: unknown }> }
  for (const item of parsed.data ?? []) {
    if (!Array.isArray(item.embedding)) continue
    const floats = new Float32Array(item.embedding as number[])
    const bytes = Buffer.from(floats.buffer, floats.byteOffset, floats.byteLength)
    // Float32Array uses the platform's byte order; OpenAI's is little-endian
    if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) bytes.swap32()
    item.embedding = bytes.toString('base64')
  }
  return JSON.stringify(parsed)
}

/**
 * Mistral's error bodies come in several shapes (MISTRAL-NOTES §3.1) and openai-node reads only `error`: without it
 * the user sees "422 status code (no body)". The original fields stay (the Mistral SDK parses `detail`); an `error`
 * object with the flattened message is added.
 */
export function withOpenAiError (body: string, status: number): string {
  const error = parseJsonObject(body)
  if (error === undefined) return body
  // an `error` object is already what OpenAI clients read; `"error": null` is not one
  if (error.error !== null && typeof error.error === 'object') return body
  const message = flatten(error.message) || flatten(error.detail) || `Mistral answered ${status}`
  const fallback = TYPE_BY_STATUS[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error')
  const type = typeof error.type === 'string' ? error.type : fallback
  const code = error.code === undefined || error.code === null ? null : String(error.code)
  const param = typeof error.param === 'string' ? error.param : null
  return JSON.stringify({ ...error, error: { message, type, code, param } })
}

const TYPE_BY_STATUS: Record<number, string> = {
  401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error', 429: 'rate_limit_error'
}

/** A message that may be a string, an object, an array of FastAPI details, or JSON in a string. */
function flatten (value: unknown): string {
  if (typeof value === 'string') {
    if (value.startsWith('{') || value.startsWith('[')) {
      try {
        return flatten(JSON.parse(value)) || value
      } catch {
        return value
      }
    }
    return value
  }
  if (Array.isArray(value)) {
    return value.map((item) => {
      if (item && typeof item === 'object' && 'msg' in item) {
        const loc = Array.isArray((item as { loc?: unknown }).loc) ? (item as { loc: unknown[] }).loc.join('.') : ''
        return `${loc ? `${loc}: ` : ''}${String((item as { msg: unknown }).msg)}`
      }
      return flatten(item)
    }).filter(Boolean).join('; ')
  }
  if (value && typeof value === 'object') {
    const record = value as Record<string, unknown>
    return flatten(record.detail) || flatten(record.message) || JSON.stringify(value)
  }
  return ''
}
