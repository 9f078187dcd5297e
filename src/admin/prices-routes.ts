import type { FastifyInstance, FastifyRequest } from 'fastify'
import { Type } from '@sinclair/typebox'
import type { Database } from '../db/client.js'
import { badRequest, notFound } from '../errors.js'
import { acceptJsonBodies } from '../json-body.js'
import { MULTIPLIERS, type PriceFamily, type UnitPrices } from '../pricing/default-prices.js'
import { formatMoney, parseMoney } from '../pricing/money.js'
import type { ModelPrice } from '../pricing/price-book.js'
import { requireAdminToken } from './admin-auth.js'
import {
  PRICE_FIELD_NAMES, Price, PriceDeleteQuery, PriceList, PriceParams, PricePut, PricesQuery, type PricePutBody
} from './price-schemas.js'

const errors = {
  400: Type.Ref('Error'), 401: Type.Ref('Error'), 404: Type.Ref('Error'), 409: Type.Ref('Error')
}
const security = [{ adminToken: [] }]
const tags = ['prices']

/** `/admin/v1/prices`: the effective price book, and the operator's overrides of the shipped table. */
export async function pricesRoutes (app: FastifyInstance, { adminToken }: { adminToken: string }) {
  acceptJsonBodies(app, 64 * 1024)
  requireAdminToken(app, adminToken)
  const book = app.prices

  // prices are not secrets: the audit entry keeps both sides of the change, for billing disputes. Written by the book
  // in the change's transaction: no change without its entry
  const audit = (tx: Database, request: FastifyRequest, action: string, model: string,
    details: Record<string, unknown>) => app.audit.record({
    actor: 'admin', action, targetType: 'model_price', targetId: model, details: { ...details, requestId: request.id }
  }, tx)

  app.get('/prices', {
    schema: {
      tags, summary: 'The effective price book of a currency: shipped prices merged with overrides', security,
      querystring: PricesQuery, response: { 200: PriceList, ...errors }
    }
  }, async (request) => {
    const { currency = 'USD', family } = request.query as { currency?: string, family?: PriceFamily }
    return { currency, multipliers: MULTIPLIERS, data: book.list(currency, family).map(view) }
  })

  app.put('/prices/:model', {
    schema: {
      tags, summary: 'Override the price of a model (an alias writes its canonical model)', security,
      params: PriceParams, body: PricePut, response: { 200: Price, ...errors }
    }
  }, async (request) => {
    const { model } = request.params as { model: string }
    const body = request.body as PricePutBody
    const prices: Partial<UnitPrices> = {}
    for (const field of PRICE_FIELD_NAMES) {
      const text = body[field]
      if (text !== undefined) prices[field] = money(text, field)
    }
    const before = book.entry(model, body.family, body.currency) // for the audit entry
    const { currency, family, aliases, outputCeiling } = body
    const price = await book.upsert({ model, currency, family, prices, aliases, outputCeiling },
      (tx, after) => audit(tx, request, 'model_price.update', after.model, {
        currency: after.currency, family: after.family, before: before ? view(before) : null, after: view(after)
      }))
    return view(price)
  })

  app.delete('/prices/:model', {
    schema: {
      tags, summary: 'Remove an override: the shipped price, if any, applies again', security,
      params: PriceParams, querystring: PriceDeleteQuery, response: { 204: Type.Null(), ...errors }
    }
  }, async (request, reply) => {
    const { model } = request.params as { model: string }
    const { currency, family } = request.query as { currency: string, family: PriceFamily }
    const before = book.entry(model, family, currency)
    const removed = await book.remove(model, currency, family, (tx, { model: id, after }) =>
      audit(tx, request, 'model_price.delete', id, {
        currency, family, before: before ? view(before) : null, after: after ? view(after) : null
      }))
    if (!removed) throw notFound(`No ${currency} ${family} override for '${model}'`, { param: 'model' })
    return reply.code(204).send()
  })
}

function money (text: string, field: string): number {
  try {
    return parseMoney(text)
  } catch (err) {
    throw badRequest(`${field}: ${(err as Error).message}`, { param: field })
  }
}

/** The API shape of a price: decimal strings in the units the field names say. */
function view (price: ModelPrice) {
  return {
    model: price.model,
    family: price.family,
    currency: price.currency,
    aliases: [...price.aliases],
    status: price.status,
    override: price.override,
    outputCeiling: price.outputCeiling,
    ...Object.fromEntries(PRICE_FIELD_NAMES.map((field) => [field, formatMoney(price[field])])),
    updatedAt: price.updatedAt?.toISOString() ?? null
  }
}
