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

export const familyOfEndpoint = (endpoint: string | null | undefined): MeteredFamily | undefined =>
  endpoint ? ENDPOINT_FAMILIES[endpoint] : undefined

/** What the answered requests of a job consumed, summed over its output lines. */
export interface BatchTotals {
  /** lines whose response succeeded */
  succeeded: number
  /** every numeric unit of `readUsage` (prompt, cached and completion tokens, pages, audio seconds...), summed */
  units: Record<string, number>
  /** OCR pages of requests that asked for annotations, priced apart (they are among `units.pages`) */
  annotatedPages: number
  /** the model the first answer names: the price of a job that named an agent rather than a model */
  model: string | undefined
}

export function emptyTotals (): BatchTotals {
  return { succeeded: 0, units: {}, annotatedPages: 0, model: undefined }
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
  if (!usage) return
  totals.succeeded += 1
  for (const [unit, value] of Object.entries(usage)) {
    if (typeof value === 'number') totals.units[unit] = (totals.units[unit] ?? 0) + value
  }
  if (annotated(asObject(response?.body))) totals.annotatedPages += usage.pages
  totals.model ??= readModel(response?.body)
}

/** Reads a JSONL output file as it downloads: a file can hold a million lines, none is kept. */
export async function addJsonl (totals: BatchTotals, body: AsyncIterable<Buffer | string>): Promise<void> {
  const decoder = new StringDecoder('utf8')
  let pending = ''
  const take = (text: string) => {
    if (text.trim() === '') return
    try {
      addLine(totals, JSON.parse(text))
    } catch {
      // a line that is not JSON carries no usage Mistral could bill
    }
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
