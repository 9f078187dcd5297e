import type { MeteredFamily } from '../proxy/operations.js'

/**
 * What a price is keyed by besides the model: one id can carry one price per family (`voxtral-mini-2507` is a chat
 * model with audio input and a transcription model, MISTRAL-NOTES §4 "alias collisions"). `chat` covers chat, FIM,
 * agents and conversations; `moderation` covers classification too.
 */
export type PriceFamily = 'chat' | 'embeddings' | 'moderation' | 'ocr' | 'transcription' | 'speech'
export const PRICE_FAMILIES: readonly PriceFamily[] =
  ['chat', 'embeddings', 'moderation', 'ocr', 'transcription', 'speech']

export function priceFamilyOf (family: MeteredFamily | PriceFamily): PriceFamily {
  switch (family) {
    case 'fim': case 'agents_completion': case 'conversation': return 'chat'
    case 'classification': return 'moderation'
    default: return family
  }
}

/** Integer micro-units of the currency per unit; $0.15 per million tokens is `inputPerMTok: 150000`. */
export interface UnitPrices {
  inputPerMTok: number
  outputPerMTok: number
  /** 10 % of input unless the price list gives its own (third-party models do) */
  cachedInputPerMTok: number
  audioPerMinute: number
  pagesPer1000: number
  /** OCR with `bbox_annotation_format` or `document_annotation_format` */
  annotatedPagesPer1000: number
  charactersPerM: number
}

export type ModelStatus = 'current' | 'deprecated' | 'retired'

export interface DefaultModelPrice {
  /** the canonical API model id (the first one Mistral lists) */
  model: string
  /** the other API ids that are the same model at the same price */
  aliases: readonly string[]
  family: PriceFamily
  status: ModelStatus
  outputCeiling?: number
  /** USD always; EUR where Mistral gives it (missing means: no EUR price, not "convert") */
  prices: { USD: Partial<UnitPrices>, EUR?: Partial<UnitPrices> }
}

/**
 * Mistral publishes context lengths, not output maxima. A request without `max_tokens` is reserved as if it asked
 * for this many; 32768 is a guess on the high side for today's models, and an operator can set `outputCeiling` per
 * model. It only bounds the spend if the admission also forwards it as `max_tokens` when the client sent none.
 */
export const DEFAULT_OUTPUT_CEILING = 32_768

/** Price modifiers (MISTRAL-NOTES §4) in basis points, so that applying them stays integer arithmetic. */
export const MULTIPLIERS = Object.freeze({
  batchBps: 5_000, // Batch API: 50 % discount
  priorityBps: 17_500, // priority tier: 1.75× on input, output and cached tokens, after the cache discount
  regionalBps: 11_000 // api.eu / api.us: 1.1×
})

/** The cached-input default: 10 % of input, rounded half up (exact for every price in the shipped table). */
export const cachedDefault = (inputPerMTok: number) => Math.floor((inputPerMTok + 5) / 10)

export function completePrices (partial: Partial<UnitPrices>): UnitPrices {
  const inputPerMTok = partial.inputPerMTok ?? 0
  return {
    inputPerMTok,
    outputPerMTok: partial.outputPerMTok ?? 0,
    cachedInputPerMTok: partial.cachedInputPerMTok ?? cachedDefault(inputPerMTok),
    audioPerMinute: partial.audioPerMinute ?? 0,
    pagesPer1000: partial.pagesPer1000 ?? 0,
    annotatedPagesPer1000: partial.annotatedPagesPer1000 ?? 0,
    charactersPerM: partial.charactersPerM ?? 0
  }
}

const tokens = (inputPerMTok: number, outputPerMTok: number) => ({ inputPerMTok, outputPerMTok })
const input = (inputPerMTok: number) => ({ inputPerMTok })
const pages = (pagesPer1000: number, annotatedPagesPer1000: number) => ({ pagesPer1000, annotatedPagesPer1000 })
const minutes = (audioPerMinute: number) => ({ audioPerMinute })
// a free model is free in any currency, so its EUR row is not a conversion
const FREE = tokens(0, 0)

/**
 * The shipped table, transcribed from MISTRAL-NOTES §4 (Mistral's docs schema at 222f4ba, 2026-08-21): the current
 * line-up, the deprecated models and the retired ones that still have a price (for re-pricing old records). Models
 * listed without any price (Shieldstral, OCR 25.03, most retired ones) are left out: nothing is served unpriced.
 */
export const DEFAULT_PRICES: readonly DefaultModelPrice[] = Object.freeze([
  // current line-up
  { model: 'codestral-2508', aliases: ['codestral-latest'], family: 'chat', status: 'current',
    prices: { USD: tokens(300_000, 900_000), EUR: tokens(260_000, 790_000) } },
  { model: 'codestral-embed-2505', aliases: ['codestral-embed'], family: 'embeddings', status: 'current',
    prices: { USD: input(150_000), EUR: input(150_000) } },
  { model: 'labs-leanstral-1-5', aliases: [], family: 'chat', status: 'current', prices: { USD: FREE, EUR: FREE } },
  { model: 'ministral-14b-2512', aliases: ['ministral-14b-latest'], family: 'chat', status: 'current',
    prices: { USD: tokens(200_000, 200_000), EUR: tokens(180_000, 180_000) } },
  { model: 'ministral-3b-2512', aliases: ['ministral-3b-latest'], family: 'chat', status: 'current',
    prices: { USD: tokens(100_000, 100_000), EUR: tokens(88_000, 88_000) } },
  { model: 'ministral-8b-2512', aliases: ['ministral-8b-latest'], family: 'chat', status: 'current',
    prices: { USD: tokens(150_000, 150_000), EUR: tokens(130_000, 130_000) } },
  { model: 'mistral-embed-2312', aliases: ['mistral-embed'], family: 'embeddings', status: 'current',
    prices: { USD: input(100_000), EUR: input(100_000) } },
  { model: 'mistral-large-2512', aliases: ['mistral-large-latest'], family: 'chat', status: 'current',
    prices: { USD: tokens(500_000, 1_500_000), EUR: tokens(440_000, 1_300_000) } },
  { model: 'mistral-medium-3-5', aliases: ['mistral-medium-3', 'mistral-medium-latest'],
    family: 'chat', status: 'current',
    prices: { USD: tokens(1_500_000, 7_500_000), EUR: tokens(1_250_000, 6_400_000) } },
  { model: 'mistral-moderation-2603', aliases: [], family: 'moderation', status: 'current',
    prices: { USD: input(0), EUR: input(0) } },
  { model: 'mistral-small-2603', aliases: ['mistral-small-latest'], family: 'chat', status: 'current',
    prices: { USD: tokens(150_000, 600_000), EUR: tokens(120_000, 500_000) } },
  { model: 'mistral-ocr-2512', aliases: [], family: 'ocr', status: 'current',
    prices: { USD: pages(2_000_000, 3_000_000), EUR: pages(1_750_000, 2_630_000) } },
  { model: 'mistral-ocr-4-0', aliases: [], family: 'ocr', status: 'current',
    prices: { USD: pages(4_000_000, 5_000_000), EUR: pages(3_500_000, 4_380_000) } },
  { model: 'mistral-ocr-4-1', aliases: ['mistral-ocr-4', 'mistral-ocr-latest'], family: 'ocr', status: 'current',
    prices: { USD: pages(4_000_000, 5_000_000), EUR: pages(3_500_000, 4_380_000) } },
  // `voxtral-mini-latest` now names Transcribe 2 (MISTRAL-NOTES §4), no longer Voxtral Mini 25.07
  { model: 'voxtral-mini-2602', aliases: ['voxtral-mini-latest'], family: 'transcription', status: 'current',
    prices: { USD: minutes(3_000), EUR: minutes(2_600) } },
  { model: 'voxtral-mini-transcribe-realtime-2602', aliases: ['voxtral-mini-transcribe-realtime-latest'],
    family: 'transcription', status: 'current', prices: { USD: minutes(6_000), EUR: minutes(5_300) } },
  // chat with audio input: audio by the minute, text by the token
  { model: 'voxtral-small-2507', aliases: ['voxtral-small-latest'], family: 'chat', status: 'current',
    prices: {
      USD: { ...minutes(4_000), ...tokens(100_000, 400_000) },
      EUR: { ...minutes(3_500), ...tokens(88_000, 350_000) }
    } },
  // $0 per million input characters, $16 per million output characters: billed on the characters of `input`
  { model: 'voxtral-mini-tts-2603', aliases: ['voxtral-mini-tts-latest'], family: 'speech', status: 'current',
    prices: { USD: { charactersPerM: 16_000_000 }, EUR: { charactersPerM: 10_000_000 } } },
  // third-party hosted: its own cached-input price instead of the 10 % rule
  { model: 'zai-glm-5-2', aliases: [], family: 'chat', status: 'current',
    prices: {
      USD: { ...tokens(1_400_000, 4_400_000), cachedInputPerMTok: 140_000 },
      EUR: { ...tokens(1_190_000, 3_740_000), cachedInputPerMTok: 119_000 }
    } },

  // deprecated: still served until their retirement date
  { model: 'devstral-2512', aliases: ['devstral-latest', 'devstral-medium-latest'], family: 'chat',
    status: 'deprecated',
    prices: { USD: tokens(400_000, 2_000_000), EUR: tokens(350_000, 1_750_000) } },
  { model: 'devstral-medium-2507', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(400_000, 2_000_000) } },
  { model: 'devstral-small-2507', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(100_000, 300_000) } },
  { model: 'labs-devstral-small-2512', aliases: ['devstral-small-latest'], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(100_000, 300_000), EUR: tokens(88_000, 260_000) } },
  { model: 'magistral-medium-2509', aliases: ['magistral-medium-latest'], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(2_000_000, 5_000_000), EUR: tokens(1_750_000, 4_380_000) } },
  { model: 'magistral-small-2509', aliases: ['magistral-small-latest'], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(500_000, 1_500_000), EUR: tokens(440_000, 1_310_000) } },
  { model: 'ministral-3b-2410', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(40_000, 40_000) } },
  { model: 'ministral-8b-2410', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(100_000, 100_000) } },
  { model: 'mistral-large-2411', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(2_000_000, 6_000_000) } },
  { model: 'mistral-medium-2505', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(400_000, 2_000_000), EUR: tokens(400_000, 2_000_000) } },
  { model: 'mistral-medium-2508', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(400_000, 2_000_000) } },
  { model: 'mistral-moderation-2411', aliases: [], family: 'moderation', status: 'deprecated',
    prices: { USD: input(100_000) } },
  { model: 'open-mistral-nemo-2407', aliases: ['open-mistral-nemo'], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(150_000, 150_000), EUR: tokens(150_000, 150_000) } },
  { model: 'mistral-small-2506', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(100_000, 300_000), EUR: tokens(100_000, 300_000) } },
  { model: 'labs-mistral-small-creative', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(100_000, 300_000), EUR: tokens(100_000, 300_000) } },
  { model: 'mistral-ocr-2505', aliases: [], family: 'ocr', status: 'deprecated',
    prices: { USD: pages(1_000_000, 3_000_000) } },
  { model: 'pixtral-12b-2409', aliases: [], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(150_000, 150_000), EUR: tokens(130_000, 130_000) } },
  // EUR is given for its output only (€5.4): half a price is no price, so no EUR row
  { model: 'pixtral-large-2411', aliases: ['pixtral-large-latest'], family: 'chat', status: 'deprecated',
    prices: { USD: tokens(2_000_000, 6_000_000) } },
  // no `voxtral-mini-latest`: that alias has moved to Transcribe 2, whose chat price is not published
  { model: 'voxtral-mini-2507', aliases: [], family: 'chat', status: 'deprecated',
    prices: {
      USD: { ...minutes(1_000), ...tokens(40_000, 40_000) },
      EUR: { ...minutes(880), ...tokens(30_000, 40_000) }
    } },
  { model: 'voxtral-mini-2507', aliases: [], family: 'transcription', status: 'deprecated',
    prices: { USD: minutes(2_000) } },

  // retired: upstream rejects them; kept to re-price old records
  { model: 'codestral-2501', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(300_000, 900_000), EUR: tokens(260_000, 790_000) } },
  { model: 'devstral-small-2505', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(100_000, 300_000) } },
  { model: 'labs-leanstral-2603', aliases: [], family: 'chat', status: 'retired', prices: { USD: FREE, EUR: FREE } },
  { model: 'magistral-medium-2506', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(2_000_000, 5_000_000) } },
  { model: 'magistral-medium-2507', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(2_000_000, 5_000_000) } },
  { model: 'magistral-small-2506', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(500_000, 1_500_000) } },
  { model: 'magistral-small-2507', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(500_000, 1_500_000) } },
  { model: 'mistral-small-2409', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(100_000, 300_000) } },
  { model: 'mistral-small-2501', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(100_000, 300_000) } },
  { model: 'mistral-small-2503', aliases: [], family: 'chat', status: 'retired',
    prices: { USD: tokens(100_000, 300_000) } }
] satisfies DefaultModelPrice[])
