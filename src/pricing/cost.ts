import type { MeteredFamily } from '../proxy/operations.js'
import type { Usage } from '../proxy/usage.js'
import { MULTIPLIERS, priceFamilyOf, type PriceFamily, type UnitPrices } from './default-prices.js'

// Every amount is kept as an exact fraction (BigInt numerator over BigInt denominator) and rounded once, at the end,
// half up to the micro-unit: rounding each line (input, cached, output) and then each modifier would let errors add
// up and make the sum depend on the order of the terms. Half up (not half even) because a fraction exactly on .5 of a
// micro-unit is vanishingly rare and the rule is the one every reader expects. BigInt because tokens × price ×
// modifiers passes 2^53 long before any realistic bill does.

/** lcm of 1,000,000 (per million tokens or characters), 60 (per minute, metered in seconds) and 1,000 (pages) */
const SCALE = 3_000_000n
const PER_MTOK = SCALE / 1_000_000n
const PER_SECOND = SCALE / 60n
const PER_PAGE = SCALE / 1_000n
const BPS = 10_000n

export interface Cost {
  /** at the price book's list price, with the tier, region and batch modifiers */
  listMicros: number
  /** what the workspace pays: list with its markup or discount */
  billedMicros: number
}

export interface CostOptions {
  family: MeteredFamily | PriceFamily
  /** `usage.service_tier` of the response: `priority` costs 1.75× (MISTRAL-NOTES §4) */
  serviceTier?: string | null
  /** basis points added to list: +2000 is a 20 % markup, -1500 a 15 % discount, -10000 free */
  markupBps: number
  /** OCR request with `bbox_annotation_format` or `document_annotation_format` */
  annotated?: boolean
  /** served by the Batch API: half price */
  batch?: boolean
  /** sent to api.eu / api.us: 1.1× */
  regional?: boolean
}

/** The units of a call; a `serviceTier` here counts when the options do not name one. */
export type MeteredUsage = Pick<Usage, 'promptTokens' | 'cachedTokens' | 'completionTokens' | 'audioSeconds' |
  'pages' | 'characters'> & { serviceTier?: string | null }

/** The cost of one metered call (MISTRAL-NOTES §2.6), in integer micro-units of the price's currency. */
export function costOf (usage: MeteredUsage, price: UnitPrices, options: CostOptions): Cost {
  const amount = listAmount(usage, price, options.annotated === true, priceFamilyOf(options.family))
  const tier = options.serviceTier ?? usage.serviceTier
  const modifiers = modifierBps({ priority: tier === 'priority', batch: options.batch, regional: options.regional })
  return priced(amount, modifiers, options.markupBps)
}

export interface WorstCaseInput {
  promptTokens: number
  /** the request's `max_tokens`, or the model's output ceiling when it gave none */
  maxOutputTokens: number
  /** choices asked for: output is paid n times, the prompt once (`n` in mistral-openapi.yaml) */
  n?: number
  price: UnitPrices
  markupBps: number
  /** the request allows priority (`service_tier: "auto"`): reserve as if it got it */
  priority?: boolean
  regional?: boolean
  /** audio in the prompt (Voxtral chat), priced by the minute besides the tokens */
  audioSeconds?: number
}

/**
 * The most a call can cost, billed: every prompt token uncached, every choice at its maximum output. It is what the
 * admission reserves against the spend caps (DESIGN.md "Spend caps are hard").
 */
export function worstCaseMicros (input: WorstCaseInput): number {
  const { numerator, denominator } = worstCase(input.promptTokens, input.maxOutputTokens, input.n ?? 1, input.price,
    modifierBps(input), input.markupBps, input.audioSeconds)
  return toNumber(roundHalfUp(numerator, denominator))
}

/**
 * The largest `max_tokens` whose worst case (billed) fits in `budgetMicros`: `worstCaseMicros` of the result is
 * ≤ the budget and of the result + 1 is not. 0 when not even the prompt fits (or the prompt fits and not one output
 * token). `Number.MAX_SAFE_INTEGER` when output costs nothing.
 */
export function affordableOutputTokens (budgetMicros: number, promptTokens: number, n: number, price: UnitPrices,
  markupBps: number, options: { priority?: boolean, regional?: boolean } = {}): number {
  if (!(budgetMicros >= 0)) return 0
  const modifiers = modifierBps(options)
  const base = worstCase(promptTokens, 0, n, price, modifiers, markupBps)
  const step = worstCase(0, 1, n, price, modifiers, markupBps).numerator
  const denominator = base.denominator
  // round half up of x/d is ≤ B exactly when x ≤ (B + 1)·d − d/2 − 1 (d is even: SCALE is)
  const budget = BigInt(Math.floor(Math.min(budgetMicros, Number.MAX_SAFE_INTEGER)))
  const limit = (budget + 1n) * denominator - denominator / 2n - 1n
  if (base.numerator > limit) return 0
  if (step === 0n) return Number.MAX_SAFE_INTEGER
  const tokens = (limit - base.numerator) / step
  return tokens > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(tokens)
}

function listAmount (usage: MeteredUsage, price: UnitPrices, annotated: boolean, family: PriceFamily): bigint {
  const n = (value: number) => BigInt(Math.max(0, Math.trunc(value)))
  switch (family) {
    case 'chat': {
      const prompt = n(usage.promptTokens)
      // `prompt_tokens` contains the cached ones (MISTRAL-NOTES §2.5); a report saying more cached than prompt
      // tokens must not turn into a negative uncached count
      const cached = n(Math.min(usage.cachedTokens, usage.promptTokens))
      const tokens = (prompt - cached) * n(price.inputPerMTok) + cached * n(price.cachedInputPerMTok) +
        n(usage.completionTokens) * n(price.outputPerMTok)
      // audio input (Voxtral chat) is priced by the minute next to the tokens
      return tokens * PER_MTOK + n(usage.audioSeconds) * n(price.audioPerMinute) * PER_SECOND
    }
    case 'embeddings': case 'moderation':
      return n(usage.promptTokens) * n(price.inputPerMTok) * PER_MTOK
    case 'ocr':
      return n(usage.pages) * n(annotated ? price.annotatedPagesPer1000 : price.pagesPer1000) * PER_PAGE
    case 'transcription':
      // whether Mistral rounds up to whole minutes is unknown (MISTRAL-NOTES §2.6): bill per second, / 60
      return n(usage.audioSeconds) * n(price.audioPerMinute) * PER_SECOND
    case 'speech':
      return n(usage.characters) * n(price.charactersPerM) * PER_MTOK
  }
}

function worstCase (promptTokens: number, maxOutputTokens: number, n: number, price: UnitPrices,
  modifiers: number[], markupBps: number, audioSeconds = 0) {
  const count = (value: number) => BigInt(Math.max(0, Math.trunc(value)))
  const amount = (count(promptTokens) * BigInt(price.inputPerMTok) +
    count(Math.max(1, n)) * count(maxOutputTokens) * BigInt(price.outputPerMTok)) * PER_MTOK +
    count(audioSeconds) * BigInt(price.audioPerMinute) * PER_SECOND
  return fraction(amount, [...modifiers, 10_000 + checkMarkup(markupBps)])
}

function modifierBps ({ priority, batch, regional }: { priority?: boolean, batch?: boolean, regional?: boolean }) {
  const modifiers: number[] = []
  if (priority) modifiers.push(MULTIPLIERS.priorityBps)
  if (batch) modifiers.push(MULTIPLIERS.batchBps)
  if (regional) modifiers.push(MULTIPLIERS.regionalBps)
  return modifiers
}

function priced (amount: bigint, modifiers: number[], markupBps: number): Cost {
  const list = fraction(amount, modifiers)
  const billed = fraction(amount, [...modifiers, 10_000 + checkMarkup(markupBps)])
  return {
    listMicros: toNumber(roundHalfUp(list.numerator, list.denominator)),
    billedMicros: toNumber(roundHalfUp(billed.numerator, billed.denominator))
  }
}

function fraction (amount: bigint, bps: number[]) {
  let numerator = amount
  let denominator = SCALE
  for (const factor of bps) {
    numerator *= BigInt(factor)
    denominator *= BPS
  }
  return { numerator, denominator }
}

function checkMarkup (markupBps: number): number {
  if (!Number.isInteger(markupBps) || markupBps < -10_000) {
    throw new RangeError(`markupBps must be an integer ≥ -10000, got ${markupBps}`)
  }
  return markupBps
}

// amounts are never negative (the markup cannot go below -100 %), so half up is floor((x + d/2) / d)
const roundHalfUp = (numerator: bigint, denominator: bigint) => (numerator + denominator / 2n) / denominator

function toNumber (micros: bigint): number {
  if (micros > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('cost exceeds Number.MAX_SAFE_INTEGER micro-units')
  return Number(micros)
}
