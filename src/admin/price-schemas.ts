import { Type, type Static } from '@sinclair/typebox'
import { PRICE_FAMILIES } from '../pricing/default-prices.js'

// Prices cross the admin API as decimal strings ("0.15" per million tokens): a float would round on its way into the
// book. (ajv's type coercion turns a JSON number into its shortest string, which parses exactly or is refused.)
// Inside the gateway they are integer micro-units (src/pricing/money.ts).

const Money = (per: string) => Type.String({
  description: `${per}; a decimal string with at most 6 decimals`, examples: ['0.15']
})

export const PriceFields = {
  inputPerMTok: Money('per million input tokens (chat: uncached ones)'),
  outputPerMTok: Money('per million output tokens'),
  cachedInputPerMTok: Money('per million cached input tokens; default 10 % of input'),
  audioPerMinute: Money('per minute of audio, billed by the second'),
  pagesPer1000: Money('per 1000 OCR pages'),
  annotatedPagesPer1000: Money('per 1000 OCR pages of a request with an annotation format'),
  charactersPerM: Money('per million characters of speech input')
}
export type PriceField = keyof typeof PriceFields
export const PRICE_FIELD_NAMES = Object.keys(PriceFields) as PriceField[]

const Family = Type.Union(PRICE_FAMILIES.map((family) => Type.Literal(family)), {
  description: 'chat covers chat, FIM, agents and conversations; moderation covers classification'
})
const Currency = Type.String({ pattern: '^[A-Z]{3}$', description: 'ISO 4217 code', examples: ['USD', 'EUR'] })

export const Price = Type.Object({
  model: Type.String({ description: 'canonical model id; * is the fallback for unknown models' }),
  family: Family,
  currency: Type.String(),
  aliases: Type.Array(Type.String()),
  status: Type.Union(['current', 'deprecated', 'retired', 'custom'].map((status) => Type.Literal(status))),
  override: Type.Boolean({ description: 'an operator row (model_prices) rather than the shipped table' }),
  outputCeiling: Type.Integer({ description: 'max output tokens reserved when a request sets no max_tokens' }),
  ...PriceFields,
  updatedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
}, { $id: 'Price' })

export const PriceList = Type.Object({
  currency: Type.String(),
  multipliers: Type.Object({
    batchBps: Type.Integer(), priorityBps: Type.Integer(), regionalBps: Type.Integer()
  }, { description: 'modifiers in basis points of list (10000 = 1×)' }),
  data: Type.Array(Price)
})

export const PricesQuery = Type.Object({
  currency: Type.Optional({ ...Currency, default: 'USD' }),
  family: Type.Optional(Family)
})

export const PriceParams = Type.Object({
  model: Type.String({ description: 'model id or alias (stored under its canonical id), or * for the fallback' })
})

export const PricePut = Type.Object({
  currency: Currency,
  family: Family,
  inputPerMTok: Type.Optional(PriceFields.inputPerMTok),
  outputPerMTok: Type.Optional(PriceFields.outputPerMTok),
  cachedInputPerMTok: Type.Optional(PriceFields.cachedInputPerMTok),
  audioPerMinute: Type.Optional(PriceFields.audioPerMinute),
  pagesPer1000: Type.Optional(PriceFields.pagesPer1000),
  annotatedPagesPer1000: Type.Optional(PriceFields.annotatedPagesPer1000),
  charactersPerM: Type.Optional(PriceFields.charactersPerM),
  aliases: Type.Optional(Type.Array(Type.String(), { maxItems: 32, description: 'more API ids at this price' })),
  outputCeiling: Type.Optional(Type.Integer({
    minimum: 1, maximum: 10_000_000, description: 'default: the shipped ceiling of the model, else 32768'
  }))
}, { additionalProperties: false })

export const PriceDeleteQuery = Type.Object({ currency: Currency, family: Family })

export type PricePutBody = Static<typeof PricePut>
