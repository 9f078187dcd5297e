import { StringDecoder } from 'node:string_decoder'
import type { MeteredFamily } from '../proxy/operations.js'
import { readModel, readUsage } from '../proxy/usage.js'

/** `BatchJobStatus` values after which a job does no more work (mistral-openapi.yaml); CANCELLATION_REQUESTED is not */
export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(['SUCCESS', 'FAILED', 'TIMEOUT_EXCEEDED', 'CANCELLED'])

/** The price family of each `ApiEndpoint` a batch may target (MISTRAL-NOTES §2.2). */
const ENDPOINT_FAMILIES: Record<string, MeteredFamily> = {
  '/v1/chat/completions': 'chat',
  '/v1/fim/completions': 'fim',
  '/v1/embeddings': 'embeddings',
  '/v1/moderations': 'moderation',
  '/v1/chat/moderations': 'moderation',
  '/v1/classifications': 'classification',
  '/v1/chat/classifications': 'classification',
  '/v1/ocr': 'ocr',
  '/v1/conversations': 'conversation',
  '/v1/audio/transcriptions': 'transcription'
}

// own keys only: a client's `"endpoint": "__proto__"` must not find Object.prototype
export const familyOfEndpoint = (endpoint: string | null | undefined): MeteredFamily | undefined =>
  endpoint && Object.hasOwn(ENDPOINT_FAMILIES, endpoint) ? ENDPOINT_FAMILIES[endpoint] : undefined

/** What the answers of one model consumed. */
export interface ModelUsage {
  /** every numeric unit of `readUsage` (prompt, cached and completion tokens, pages, audio seconds...), summed */
  units: Record<string, number>
  /** OCR pages of requests that asked for annotations, priced apart (they are among `units.pages`) */
  annotatedPages: number
}

/** What the answered requests of a job consumed, summed over its output lines. */
export interface BatchTotals {
  /** lines whose response succeeded */
  succeeded: number
  /** lines answered 2xx whose usage could not be read, and lines that are not JSON: answers nothing bills */
  unreadable: number
  /**
   * By the model each answer names: a job without a model of its own runs each line on the model its body names,
   * and each is billed at its own price. An answer that names none counts under the job's model (undefined when the
   * job has none either).
   */
  byModel: Map<string | undefined, ModelUsage>
  /** the job's model, as the client asked for it */
  jobModel: string | undefined
}

export function emptyTotals (jobModel?: string): BatchTotals {
  return { succeeded: 0, unreadable: 0, byModel: new Map(), jobModel }
}

/**
 * Adds one output line, `{custom_id, response: {status_code, body}, error}`: the body is what the endpoint answers,
 * with its usage (MISTRAL-NOTES §2.6). A line that errored, or whose body reports nothing, adds nothing.
 */
export function addLine (totals: BatchTotals, line: unknown): void {
  const response = asObject(asObject(line)?.response)
  const status = response?.status_code
  if (typeof status === 'number' && (status < 200 || status >= 300)) return
  const usage = readUsage(response?.body)
  if (!usage) {
    if (typeof status === 'number') totals.unreadable += 1
    return
  }
  totals.succeeded += 1
  const used = usageOf(totals, readModel(response?.body) ?? totals.jobModel)
  addUnits(used.units, usage)
  if (annotated(asObject(response?.body))) used.annotatedPages += usage.pages
}

/** Every model's usage summed: what the job's one usage record counts. */
export function allModels (totals: BatchTotals): ModelUsage {
  const all: ModelUsage = { units: {}, annotatedPages: 0 }
  for (const used of totals.byModel.values()) {
    addUnits(all.units, used.units)
    all.annotatedPages += used.annotatedPages
  }
  return all
}

function usageOf (totals: BatchTotals, model: string | undefined): ModelUsage {
  let used = totals.byModel.get(model)
  if (!used) totals.byModel.set(model, used = { units: {}, annotatedPages: 0 })
  return used
}

function addUnits (units: Record<string, number>, added: object): void {
  for (const [unit, value] of Object.entries(added)) {
    if (typeof value === 'number') units[unit] = (units[unit] ?? 0) + value
  }
}

/** Reads a JSONL output file as it downloads: a file can hold a million lines, none is kept. */
export async function addJsonl (totals: BatchTotals, body: AsyncIterable<Buffer | string>): Promise<void> {
  const decoder = new StringDecoder('utf8')
  let pending = ''
  const take = (text: string) => {
    if (text.trim() !== '') addText(totals, text)
  }
  for await (const chunk of body) {
    pending += typeof chunk === 'string' ? chunk : decoder.write(chunk)
    for (let end = pending.indexOf('\n'); end !== -1; end = pending.indexOf('\n')) {
      take(pending.slice(0, end))
      pending = pending.slice(end + 1)
    }
  }
  take(pending + decoder.end())
}

/**
 * Reads the `outputs` of a job read with `inline=true` as the answer downloads: they are as many as the lines of its
 * output file, and the answer whole may be longer than V8's longest string (2^29 - 24 characters). Only the `outputs`
 * list of the answer's top-level object is read, one output at a time; the rest is skipped.
 */
export async function addInlineOutputs (totals: BatchTotals, body: AsyncIterable<Buffer | string>): Promise<void> {
  const decoder = new StringDecoder('utf8')
  const read = createOutputsReader((text) => addText(totals, text))
  for await (const chunk of body) read(typeof chunk === 'string' ? chunk : decoder.write(chunk))
  read(decoder.end())
}

function addText (totals: BatchTotals, text: string): void {
  let line: unknown
  try {
    line = JSON.parse(text)
  } catch {
    // a line that is not JSON carries no usage Mistral could bill
    totals.unreadable += 1
    return
  }
  addLine(totals, line)
}

// inside a string, the characters that matter: its end, and an escape (which may escape a quote)
const STRING_STOP = /["\\]/g
// a key is short: a longer string at the top level is a value, never `outputs`
const KEY_MAX = 16

/**
 * A scanner over the JSON text of one object, given piece by piece, that hands over the text of each object in its
 * `outputs` list. It follows only strings (whose brackets do not count) and nesting; the JSON within an output is
 * left to JSON.parse, and an answer that is not JSON yields what it yields, as a line that is not JSON would.
 */
function createOutputsReader (onOutput: (text: string) => void): (text: string) => void {
  let depth = 0
  let inString = false
  let escaped = false
  // the top-level string being read (while short enough to be a key), the last one read, and the key it became
  let stringText: string | undefined
  let lastString: string | undefined
  let key: string | undefined
  let inOutputs = false
  // the text of the output being read, up to the current piece
  let output: string | undefined

  return function read (text: string) {
    let stringFrom = 0
    let outputFrom = 0
    let i = 0
    while (i < text.length) {
      if (inString) {
        if (escaped) {
          escaped = false
          i++
          continue
        }
        STRING_STOP.lastIndex = i
        const stop = STRING_STOP.exec(text)
        if (!stop) break
        i = stop.index + 1
        if (stop[0] === '\\') {
          escaped = true
          continue
        }
        inString = false
        if (stringText !== undefined) {
          lastString = stringText + text.slice(stringFrom, i - 1)
          stringText = undefined
        }
        continue
      }
      const char = text[i]
      if (char === '"') {
        inString = true
        if (depth === 1) {
          stringText = ''
          stringFrom = i + 1
        }
      } else if (char === ':' && depth === 1) {
        key = lastString
      } else if (char === ',' && depth === 1) {
        key = undefined
      } else if (char === '{' || char === '[') {
        if (depth === 1 && char === '[' && key === 'outputs') inOutputs = true
        if (inOutputs && depth === 2 && char === '{') {
          output = ''
          outputFrom = i
        }
        depth++
      } else if (char === '}' || char === ']') {
        depth--
        if (output !== undefined && depth === 2) {
          onOutput(output + text.slice(outputFrom, i + 1))
          output = undefined
        }
        if (depth === 1) inOutputs = false
      }
      i++
    }
    if (output !== undefined) output += text.slice(outputFrom)
    if (stringText !== undefined) {
      stringText += text.slice(stringFrom)
      if (stringText.length > KEY_MAX) stringText = stringText.slice(0, KEY_MAX + 1)
    }
  }
}

/** OCR bills annotated pages at their own price: the answer carries the annotations that were asked for. */
function annotated (body: Record<string, unknown> | undefined): boolean {
  if (!body) return false
  if (body.document_annotation != null) return true
  const pages = Array.isArray(body.pages) ? body.pages : []
  return pages.some((page) => {
    const images = asObject(page)?.images
    return Array.isArray(images) && images.some((image) => asObject(image)?.image_annotation != null)
  })
}

function asObject (value: unknown): Record<string, unknown> | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined
  return value as Record<string, unknown>
}
