import type { Quote } from '../limits/admission.js'
import { worstCaseMicros, costOf } from '../pricing/cost.js'
import { AUDIO_BYTES_PER_SECOND, estimatePrompt, estimatePromptTokens } from '../pricing/estimate.js'
import { FALLBACK_MODEL, type ModelPrice, type PriceBook } from '../pricing/price-book.js'
import { priceFamilyOf } from '../pricing/default-prices.js'
import { badRequest, modelNotPriced } from '../errors.js'
import type { MeteredFamily } from './operations.js'
import { familyOfEndpoint } from '../usage/batch-output.js'

export interface Priced {
  quote: Quote
  /** the price the call is reserved at; settlement re-prices with the model Mistral names when the request had none */
  price: ModelPrice | undefined
  /** whether `max_tokens` bounds this call's cost (and so may be set or clamped) */
  tokenBound: boolean
  /** sent to a regional host: reserved and settled at 1.1× */
  regional: boolean
  /**
   * OCR's pages or a transcription's audio seconds, as reserved: what the call is billed, flagged estimated, when
   * Mistral answered and its count never arrived (the only meter of these families is that count)
   */
  reservedUnits?: { pages?: number, audioSeconds?: number }
}

const FREE: Quote = flatQuote(0)
// OCR is priced per page and the page count is known only from Mistral's answer; audio likewise by its duration
const OCR_RESERVED_PAGES = 50
// the most pages one OCR call processes: Mistral's document limit, ~1000 pages (docs.mistral.ai, OCR cookbook
// "PDF Chunking"); a `pages` selection reaching past it is bounded here, not expanded
const OCR_MAX_PAGES = 1_000
// audio of unknown length (a chunked upload, a `file_url`) may be as long as the most Mistral takes: 500 MB
// (MISTRAL-NOTES §2.1); nor does any call take more
const MAX_AUDIO_SECONDS = Math.ceil(500 * 1024 * 1024 / AUDIO_BYTES_PER_SECOND)
const MAX_OUTPUT_TOKENS = 10_000_000
const MAX_CHOICES = 10_000

/**
 * Creating a batch job: its cost is known only when it ends (src/usage/batch-watcher.ts), so it is reserved at the
 * least there is, one micro-unit. A job is thus started only while every spend cap has something left; what it costs
 * is charged when it ends, past the cap if need be (docs/usage-and-billing.md "Batch jobs").
 */
const BATCH_CREATION: Priced = { quote: flatQuote(1), price: undefined, tokenBound: false, regional: false }

/**
 * A batch job is refused, as a live call is, when the book has no price for a model it runs on in the family of its
 * endpoint: the watcher would record that model's answers at zero cost once it ends. An endpoint outside the metered
 * families has no price to look for: such a job is created as before.
 */
export function quoteBatchCreation (body: unknown, prices: PriceBook, currency: string): Priced {
  const job = body !== null && typeof body === 'object' ? body as Record<string, unknown> : {}
  const family = familyOfEndpoint(typeof job.endpoint === 'string' ? job.endpoint : undefined)
  if (!family) return BATCH_CREATION
  for (const model of batchModels(job)) {
    if (!prices.resolve(model, family, currency)) throw unpriced(model, currency)
  }
  return BATCH_CREATION
}

/**
 * The models a job will run on, as far as its creation tells, each once (an inline batch may hold 10,000 requests,
 * mostly of one model): its `model`; else, unless it names an agent, each inline request's `body.model`, which is
 * what Mistral runs that line on. An agent job's model, and the lines of its `input_files`, are known only from its
 * answers: they are priced when it ends (docs/usage-and-billing.md "Batch jobs").
 */
function batchModels (job: Record<string, unknown>): Set<string> {
  if (isName(job.model)) return new Set([job.model])
  const models = new Set<string>()
  if (isName(job.agent_id) || !Array.isArray(job.requests)) return models
  for (const request of job.requests as unknown[]) {
    const model = request !== null && typeof request === 'object'
      ? (request as { body?: { model?: unknown } | null }).body?.model
      : undefined
    if (isName(model)) models.add(model)
  }
  return models
}

const isName = (value: unknown): value is string => typeof value === 'string' && value.length > 0

/**
 * The worst case of a metered call before it is made (DESIGN.md "Spend caps are hard"): prompt estimate + max_tokens
 * (or the model's output ceiling) × n, at the workspace's billed price. Unpriced models are refused here.
 */
export function quoteCall ({ family, body, audioBytes, prices, currency, markupBps, regional = false }: {
  family: MeteredFamily | null
  body: Record<string, unknown> | undefined
  /** a transcription's audio, in bytes (src/proxy/transcription-source.ts); undefined when its length is unknown */
  audioBytes?: number
  prices: PriceBook
  currency: string
  markupBps: number
  regional?: boolean
}): Priced {
  if (family === null) return { quote: FREE, price: undefined, tokenBound: false, regional }
  const price = priceOf(prices, family, body?.model, currency)
  if (!price) throw unpriced(body?.model, currency)
  // one literal, not a spread of shared fields: V8 spreads an object literal into a new one slowly (4 µs a call)
  const worst = (promptTokens: number, maxOutputTokens: number, n = 1, priority = false, audioSeconds = 0) =>
    worstCaseMicros({ price, markupBps, regional, promptTokens, maxOutputTokens, n, priority, audioSeconds })
  switch (priceFamilyOf(family)) {
    case 'chat': {
      const { tokens: promptTokens, audioSeconds } = estimatePrompt(body)
      // bounded so that the worst case stays an exact integer; any real output is far below either bound
      const maxTokens = Math.min(positiveInteger(outputBound(family, body)?.max_tokens) ?? price.outputCeiling,
        MAX_OUTPUT_TOKENS)
      const n = positiveInteger(body?.n) ?? 1
      if (n > MAX_CHOICES) throw badRequest(`n may be at most ${MAX_CHOICES}`, { param: 'n' })
      const priority = body?.service_tier === 'auto'
      return {
        quote: {
          cost: worst(promptTokens, maxTokens, n, priority, audioSeconds),
          promptCost: worst(promptTokens, 0, n, priority, audioSeconds),
          outputPerMillion: worst(0, 1_000_000, n, priority),
          maxTokens,
          n,
          promptTokens
        },
        price,
        tokenBound: true,
        regional
      }
    }
    case 'embeddings':
    case 'moderation': {
      const promptTokens = estimatePromptTokens(body)
      const cost = worst(promptTokens, 0)
      return { quote: flatQuote(cost, promptTokens), price, tokenBound: false, regional }
    }
    case 'ocr': {
      const pages = selectedPages(body?.pages) ?? OCR_RESERVED_PAGES
      const annotated = body?.bbox_annotation_format != null || body?.document_annotation_format != null
      const cost = costOf(units({ pages }), price, { family, markupBps, annotated, regional }).billedMicros
      return { quote: flatQuote(cost), price, tokenBound: false, regional, reservedUnits: { pages } }
    }
    case 'transcription': {
      const known = audioBytes !== undefined && Number.isFinite(audioBytes) && audioBytes >= 0
      const audioSeconds = known ? Math.min(Math.ceil(audioBytes / AUDIO_BYTES_PER_SECOND), MAX_AUDIO_SECONDS)
        : MAX_AUDIO_SECONDS
      const cost = costOf(units({ audioSeconds }), price, { family, markupBps, regional }).billedMicros
      // billed as an estimate only when a size gave it (the upload's, or the file's at Mistral): the most audio Mistral
      // takes, reserved for audio of unknown length, is no estimate of what a client that left was given
      const reservedUnits = known ? { audioSeconds } : undefined
      return { quote: flatQuote(cost), price, tokenBound: false, regional, reservedUnits }
    }
    case 'speech': {
      const characters = typeof body?.input === 'string' ? [...body.input].length : 0
      const cost = costOf(units({ characters }), price, { family, markupBps, regional }).billedMicros
      return { quote: flatQuote(cost), price, tokenBound: false, regional }
    }
  }
}

// characters of a `pages` string, or entries of a list, read to count its pages: '0-999' or 1,000 numbers fit
const OCR_SELECTION_READ = 8_192

/**
 * The pages an OCR call selects, each once, at most OCR_MAX_PAGES; undefined when it selects none in particular (the
 * whole document). `pages` is a list of page numbers or a string of numbers and ranges: '0,1,2', '0-5', '0,2-4'
 * (OCRRequest in mistral-openapi.yaml). An empty list or string, or one Mistral would refuse, selects none.
 */
function selectedPages (pages: unknown): number | undefined {
  if (!Array.isArray(pages) && typeof pages !== 'string') return undefined
  if (pages.length === 0) return undefined
  // a longer selection is reserved at the most pages unread: counting it is work a client could make as large as its
  // body, before any limit is checked (the reservation is a worst case, settled at the pages Mistral counts)
  if (pages.length > OCR_SELECTION_READ) return OCR_MAX_PAGES
  if (Array.isArray(pages)) return Math.min(new Set(pages).size, OCR_MAX_PAGES)
  const ranges: Array<[number, number]> = []
  for (const part of pages.split(',')) {
    const range = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part)
    if (range === null) return undefined
    const first = Number(range[1])
    const last = range[2] === undefined ? first : Number(range[2])
    if (last < first) return undefined
    ranges.push([first, last])
  }
  // overlapping ranges name a page once: count the union, range by range, never page by page
  ranges.sort((a, b) => a[0] - b[0])
  let count = 0
  let next = 0 // the first page not yet counted
  for (const [first, last] of ranges) {
    if (last >= next) count += last - Math.max(first, next) + 1
    next = Math.max(next, last + 1)
    if (count >= OCR_MAX_PAGES) return OCR_MAX_PAGES
  }
  return count
}

/**
 * The request's model, or — where the request names none (agents, conversations with an agent, transcriptions,
 * whose model is a form field the gateway does not read) — each unit at its dearest price in the family, the
 * operator's `*` row included: the call is settled at the price of the model Mistral answers with, whichever it is,
 * so the reservation must cover every one of them.
 */
function priceOf (prices: PriceBook, family: MeteredFamily, model: unknown, currency: string): ModelPrice | undefined {
  if (typeof model === 'string' && model.length > 0) return prices.resolve(model, family, currency)
  let ceiling: ModelPrice | undefined
  for (const row of prices.list(currency, priceFamilyOf(family))) {
    if (row.status === 'retired') continue
    if (ceiling === undefined) {
      // no one model's price: named as the fallback row is, which metrics and the ledger read as "not a known model"
      ceiling = { ...row, model: FALLBACK_MODEL, aliases: [], status: 'custom', override: false, updatedAt: null }
      continue
    }
    for (const field of CEILING_FIELDS) ceiling[field] = Math.max(ceiling[field], row[field])
  }
  return ceiling
}

// as much of an unpriced model's name as an error echoes: the longest a price book's model id may be
const MODEL_SHOWN = 200

const CEILING_FIELDS = ['inputPerMTok', 'outputPerMTok', 'cachedInputPerMTok', 'audioPerMinute', 'pagesPer1000',
  'annotatedPagesPer1000', 'charactersPerM', 'outputCeiling'] as const

function unpriced (model: unknown, currency: string) {
  // a client's model of any length is not echoed whole
  const named = String(model)
  const shown = named.length > MODEL_SHOWN ? `${named.slice(0, MODEL_SHOWN)}…` : named
  return modelNotPriced(`Model '${shown}' has no ${currency} price in this gateway's price book ` +
    '(the workspace\'s currency); the operator can add one (PUT /admin/v1/prices/{model})', { param: 'model' })
}

/**
 * The object of the request that names its output bound (`max_tokens`): a conversation's `completion_args` (the top
 * level of an append or a restart forbids other fields, as the spec's AppendConversationRequest says), the top level
 * of the other chat calls. Undefined where there is none.
 */
function outputBound (family: MeteredFamily, body: Record<string, unknown> | undefined) {
  if (family !== 'conversation' || body === undefined) return body
  const args = body.completion_args
  return args !== null && typeof args === 'object' && !Array.isArray(args) ? args as Record<string, unknown> : undefined
}

/** Bounds a capped call's output where Mistral reads it (`outputBound`), so that its cost cannot pass its quote. */
export function boundOutput (family: MeteredFamily, body: Record<string, unknown>, maxTokens: number): void {
  if (family !== 'conversation') {
    body.max_tokens = maxTokens
    return
  }
  body.completion_args = { ...outputBound(family, body), max_tokens: maxTokens }
}

/** A cost known before the call, with no output to reserve. */
function flatQuote (cost: number, promptTokens = 0): Quote {
  return { cost, promptCost: cost, outputPerMillion: 0, maxTokens: 0, n: 1, promptTokens }
}

function units (partial: Partial<Record<'pages' | 'audioSeconds' | 'characters', number>>) {
  return { promptTokens: 0, cachedTokens: 0, completionTokens: 0, audioSeconds: 0, pages: 0, characters: 0, ...partial }
}

/** Mistral's validation is lax (pydantic): "1000" is read as 1000, so the reservation must read it so too. */
function positiveInteger (value: unknown): number | undefined {
  const number = typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : value
  if (typeof number !== 'number' || !Number.isFinite(number) || number <= 0) return undefined
  return number > Number.MAX_SAFE_INTEGER ? Number.MAX_SAFE_INTEGER : Math.ceil(number)
}
