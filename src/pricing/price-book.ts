import { and, eq, sql } from 'drizzle-orm'
import type { AuditHook } from '../audit/audit-log.js'
import type { Database } from '../db/client.js'
import { modelPrices, type ModelPriceRow } from '../db/schema.js'
import { badRequest, conflict } from '../errors.js'
import type { MeteredFamily } from '../proxy/operations.js'
import type { InvalidationBus } from '../tenancy/invalidation-bus.js'
import {
  DEFAULT_OUTPUT_CEILING, DEFAULT_PRICES, PRICE_FAMILIES, cachedDefault, completePrices, priceFamilyOf,
  type DefaultModelPrice, type ModelStatus, type PriceFamily, type UnitPrices
} from './default-prices.js'

/** The model name of an operator's catch-all row: it prices models the book does not know. */
export const FALLBACK_MODEL = '*'

/** One model's price in one currency for one family, as the book serves it. */
export interface ModelPrice extends UnitPrices {
  /** the canonical id, or `*` for the fallback row */
  model: string
  family: PriceFamily
  currency: string
  aliases: readonly string[]
  /** max output tokens assumed when a request sets no `max_tokens` */
  outputCeiling: number
  /** `custom`: a model the shipped table does not have */
  status: ModelStatus | 'custom'
  /** an operator's row, not the shipped table's */
  override: boolean
  updatedAt: Date | null
}

export interface PriceOverride {
  model: string
  currency: string
  family: PriceFamily
  /** integer micro-units; a missing cached price is 10 % of input, any other missing price is 0 */
  prices: Partial<UnitPrices>
  /** more API ids at this price, on top of the shipped aliases */
  aliases?: string[]
  outputCeiling?: number | null
}

/** The shipped price table merged with the operator's overrides (`model_prices`). */
export interface PriceBook {
  /** Reads the overrides and swaps the lookup maps in one assignment. */
  load (): Promise<void>
  /**
   * The price for a call, or undefined: then the call must be refused, nothing is served unpriced. Tries the id or
   * alias as given, then lower-cased, then a fine-tuned `ft:<base>:...` id's base model, then the operator's `*` row.
   */
  resolve (model: string, family: MeteredFamily | PriceFamily, currency: string): ModelPrice | undefined
  /** The row for exactly this model (any alias or case), without the fine-tune and fallback steps. */
  entry (model: string, family: PriceFamily, currency: string): ModelPrice | undefined
  /** The effective book of one currency, by family then model. */
  list (currency: string, family?: PriceFamily): ModelPrice[]
  /** The id an override of `model` is stored under: aliases and case variants name their canonical model. */
  canonical (model: string, family: PriceFamily): string
  /**
   * `audit` writes the change's row in its transaction, given the price as the book serves it once committed; that
   * price is also what it returns, though a reload that fails after the commit leaves the book serving the old one
   * until its retry
   */
  upsert (override: PriceOverride, audit: AuditHook<ModelPrice>): Promise<ModelPrice>
  /**
   * Deletes an override (the shipped price, if any, applies again); false when there was none. `audit` writes the
   * change's row in its transaction, given the id `model` names and its price once committed (none: unpriced).
   */
  remove (model: string, currency: string, family: PriceFamily, audit: AuditHook<PriceRemoval>): Promise<boolean>
  close (): void
}

export interface PriceRemoval {
  model: string
  after: ModelPrice | undefined
}

interface PriceBookOptions {
  db: Database
  /** tells the other replicas to reload after a change, and reloads when they change it */
  bus?: InvalidationBus
  log?: { warn (details: object, message: string): void }
  retryMs?: number
}

interface State {
  names: Map<PriceFamily, Map<string, string>> // lower-case id or alias → canonical id
  prices: Map<string, Map<PriceFamily, Map<string, ModelPrice>>> // currency → family → canonical id → price
}

const NAME = /^[a-z0-9][a-z0-9._:/-]{0,199}$/
const CURRENCY = /^[A-Z]{3}$/
const MAX_ALIASES = 32
const MAX_OUTPUT_CEILING = 10_000_000
/** the prices without which a family's calls would be served free by accident */
const REQUIRED: Record<PriceFamily, ReadonlyArray<keyof UnitPrices>> = {
  chat: ['inputPerMTok', 'outputPerMTok'],
  embeddings: ['inputPerMTok'],
  moderation: ['inputPerMTok'],
  ocr: ['pagesPer1000', 'annotatedPagesPer1000'],
  transcription: ['audioPerMinute'],
  speech: ['charactersPerM']
}
const PRICE_FIELDS: ReadonlyArray<keyof UnitPrices> = ['inputPerMTok', 'outputPerMTok', 'cachedInputPerMTok',
  'audioPerMinute', 'pagesPer1000', 'annotatedPagesPer1000', 'charactersPerM']

export function createPriceBook ({ db, bus, log, retryMs = 5_000 }: PriceBookOptions): PriceBook {
  // the shipped table serves until the first load, so that pure users (tests, tools) need no database
  let state = build([])
  // overlapping loads: the one that started last wins, whichever finishes first
  let started = 0
  let applied = 0
  let retry: NodeJS.Timeout | undefined
  let closed = false

  async function load () {
    const generation = ++started
    const rows = await db.select().from(modelPrices)
    if (generation < applied) return
    state = build(rows)
    applied = generation
  }

  function reloadSoon () {
    if (closed) return
    load().catch(reloadLater)
  }

  function reloadLater (err: unknown) {
    if (closed || retry) return
    // until it succeeds this replica prices with what it had: say so, and try again
    log?.warn({ err }, 'price book reload failed; retrying')
    retry = setTimeout(() => { retry = undefined; reloadSoon() }, retryMs)
    retry.unref()
  }
  bus?.subscribe((message) => { if (message === null || message.type === 'prices') reloadSoon() })

  // The change is committed and audited by now: the other replicas are told first, and a reload that fails is
  // retried rather than thrown, or the change would be answered as failed and go unannounced
  async function changed () {
    await bus?.publish({ type: 'prices' }) // never rejects; Redis down: its reconnect makes every replica reload
    await load().catch(reloadLater)
  }

  // `of`: the book as a change's transaction sees it, for its audit row
  function canonical (model: string, family: PriceFamily, of = state) {
    const lower = model.toLowerCase()
    if (lower === FALLBACK_MODEL) return lower
    return of.names.get(family)?.get(lower) ?? lower
  }

  function entry (model: string, family: PriceFamily, currency: string, of = state) {
    return of.prices.get(currency)?.get(family)?.get(canonical(model, family, of))
  }

  return {
    load,
    entry,
    canonical,
    resolve (model, meteredFamily, currency) {
      const family = priceFamilyOf(meteredFamily)
      const book = state.prices.get(currency)?.get(family)
      if (!book) return undefined
      const names = state.names.get(family) as Map<string, string>
      // ids are lower case: the exact lookup is the hot path; a case variant must land on the same price, not dodge it
      let id = names.get(model) ?? names.get(model.toLowerCase())
      if (id === undefined && model.slice(0, 3).toLowerCase() === 'ft:') {
        id = names.get(model.slice(3).split(':', 1)[0].toLowerCase()) // MISTRAL-NOTES §2.6: ft models → base
      }
      return (id === undefined ? undefined : book.get(id)) ?? book.get(FALLBACK_MODEL)
    },
    list (currency, family) {
      const byFamily = state.prices.get(currency)
      if (!byFamily) return []
      const families = family ? [family] : PRICE_FAMILIES
      return families.flatMap((name) => [...(byFamily.get(name)?.values() ?? [])]
        .sort((a, b) => a.model < b.model ? -1 : a.model > b.model ? 1 : 0))
    },
    async upsert (override, audit) {
      const values = checkOverride(override, canonical(override.model, override.family))
      for (const alias of values.aliases) {
        const owner = state.names.get(values.family)?.get(alias)
        if (owner !== undefined && owner !== values.model) {
          throw conflict(`'${alias}' already names ${values.family} model '${owner}'`, { param: 'aliases' })
        }
      }
      // the price as committed: the reload that follows may fail, and the book still serve the old one a while
      const committed = await db.transaction(async (tx) => {
        await tx.insert(modelPrices).values(values).onConflictDoUpdate({
          target: [modelPrices.model, modelPrices.currency, modelPrices.family],
          set: { ...values, updatedAt: sql`now()` }
        })
        const after = build(await tx.select().from(modelPrices))
        const price = entry(values.model, values.family, values.currency, after) as ModelPrice
        await audit(tx, price)
        return price
      })
      await changed()
      return committed
    },
    async remove (model, currency, family, audit) {
      const removed = await db.transaction(async (tx) => {
        const deleted = await tx.delete(modelPrices).where(and(eq(modelPrices.model, canonical(model, family)),
          eq(modelPrices.currency, currency), eq(modelPrices.family, family))).returning({ id: modelPrices.id })
        if (deleted.length === 0) return false
        const after = build(await tx.select().from(modelPrices))
        await audit(tx, { model: canonical(model, family, after), after: entry(model, family, currency, after) })
        return true
      })
      if (removed) await changed()
      return removed
    },
    close () {
      closed = true
      clearTimeout(retry)
    }
  }
}

/** The lookup maps: shipped rows first, then the operator's rows, which win. */
function build (rows: ModelPriceRow[]): State {
  const shipped = new Map<string, DefaultModelPrice>()
  const aliases = new Map<string, Set<string>>()
  const names = new Map(PRICE_FAMILIES.map((family) => [family, new Map<string, string>()]))
  const prices: State['prices'] = new Map()
  const familyModel = (family: string, model: string) => `${family} ${model}`
  const name = (family: PriceFamily, model: string, alias: string) => {
    names.get(family)?.set(alias, model)
    const set = aliases.get(familyModel(family, model)) ?? new Set<string>()
    if (alias !== model) set.add(alias)
    aliases.set(familyModel(family, model), set)
  }
  const put = (price: ModelPrice) => {
    const byFamily = prices.get(price.currency) ?? new Map<PriceFamily, Map<string, ModelPrice>>()
    prices.set(price.currency, byFamily)
    const book = byFamily.get(price.family) ?? new Map<string, ModelPrice>()
    byFamily.set(price.family, book)
    book.set(price.model, price)
  }

  for (const row of DEFAULT_PRICES) {
    shipped.set(familyModel(row.family, row.model), row)
    for (const alias of [row.model, ...row.aliases]) name(row.family, row.model, alias)
  }
  for (const row of rows) {
    if (row.model === FALLBACK_MODEL) continue
    for (const alias of [row.model, ...row.aliases]) name(row.family, row.model, alias)
  }
  // aliases are facts about names, not currencies: every currency's row lists them all
  const aliasesOf = (family: string, model: string) => [...(aliases.get(familyModel(family, model)) ?? [])].sort()

  for (const row of DEFAULT_PRICES) {
    for (const [currency, partial] of Object.entries(row.prices)) {
      if (!partial) continue
      put({
        model: row.model,
        family: row.family,
        currency,
        aliases: aliasesOf(row.family, row.model),
        ...completePrices(partial),
        outputCeiling: row.outputCeiling ?? DEFAULT_OUTPUT_CEILING,
        status: row.status,
        override: false,
        updatedAt: null
      })
    }
  }
  for (const row of rows) {
    const base = shipped.get(familyModel(row.family, row.model))
    put({
      model: row.model,
      family: row.family,
      currency: row.currency,
      aliases: aliasesOf(row.family, row.model),
      inputPerMTok: row.inputPerMTok,
      outputPerMTok: row.outputPerMTok,
      cachedInputPerMTok: row.cachedInputPerMTok ?? cachedDefault(row.inputPerMTok),
      audioPerMinute: row.audioPerMinute,
      pagesPer1000: row.pagesPer1000,
      annotatedPagesPer1000: row.annotatedPagesPer1000,
      charactersPerM: row.charactersPerM,
      outputCeiling: row.outputCeiling ?? base?.outputCeiling ?? DEFAULT_OUTPUT_CEILING,
      status: base?.status ?? 'custom',
      override: true,
      updatedAt: row.updatedAt
    })
  }
  return { names, prices }
}

/** Validates an override; the row it becomes is keyed by the canonical id. */
function checkOverride (override: PriceOverride, model: string) {
  const { currency, family, prices } = override
  if (model !== FALLBACK_MODEL && !NAME.test(model)) {
    throw badRequest('model must be 1-200 characters of a-z, 0-9 and . _ : / - (or * for the fallback)',
      { param: 'model' })
  }
  if (!CURRENCY.test(currency)) throw badRequest('currency must be an ISO 4217 code such as USD', { param: 'currency' })
  if (!PRICE_FAMILIES.includes(family)) {
    throw badRequest(`family must be one of ${PRICE_FAMILIES.join(', ')}`, { param: 'family' })
  }
  for (const field of PRICE_FIELDS) {
    const value = prices[field]
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 0)) {
      throw badRequest(`${field} must be a non-negative whole number of micro-units`, { param: field })
    }
  }
  const missing = REQUIRED[family].filter((field) => prices[field] === undefined)
  if (missing.length > 0) throw badRequest(`a ${family} price needs ${missing.join(' and ')}`, { param: missing[0] })

  const aliases = [...new Set((override.aliases ?? []).map((alias) => alias.toLowerCase()))]
    .filter((alias) => alias !== model)
  if (model === FALLBACK_MODEL && aliases.length > 0) {
    throw badRequest('the * fallback has no aliases', { param: 'aliases' })
  }
  if (aliases.length > MAX_ALIASES) throw badRequest(`at most ${MAX_ALIASES} aliases`, { param: 'aliases' })
  const bad = aliases.find((alias) => !NAME.test(alias))
  if (bad !== undefined) throw badRequest(`aliases: '${bad.slice(0, 60)}' is not a model id`, { param: 'aliases' })

  const ceiling = override.outputCeiling ?? null
  if (ceiling !== null && (!Number.isInteger(ceiling) || ceiling < 1 || ceiling > MAX_OUTPUT_CEILING)) {
    throw badRequest(`outputCeiling must be a whole number from 1 to ${MAX_OUTPUT_CEILING}`, { param: 'outputCeiling' })
  }
  return {
    model,
    currency,
    family,
    inputPerMTok: prices.inputPerMTok ?? 0,
    outputPerMTok: prices.outputPerMTok ?? 0,
    cachedInputPerMTok: prices.cachedInputPerMTok ?? null,
    audioPerMinute: prices.audioPerMinute ?? 0,
    pagesPer1000: prices.pagesPer1000 ?? 0,
    annotatedPagesPer1000: prices.annotatedPagesPer1000 ?? 0,
    charactersPerM: prices.charactersPerM ?? 0,
    outputCeiling: ceiling,
    aliases
  }
}
