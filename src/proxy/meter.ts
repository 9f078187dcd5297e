import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { UsageRecord } from '../db/schema.js'
import type { Ticket } from '../limits/admission.js'
import { costOf } from '../pricing/cost.js'
import type { TenantContext } from '../tenancy/tokens.js'
import type { Operation } from './operations.js'
import type { Priced } from './quote.js'
import type { TapResult } from './usage-tap.js'
import { emptyUsage, type Usage } from './usage.js'

interface MeterOptions {
  app: FastifyInstance
  request: FastifyRequest
  operation: Operation
  /** the key that served the call: known only once failover is done */
  keyName: () => string
  /** when the request arrived (the client's clock starts here) */
  receivedAt: number
  /** when the call was handed to Mistral, once admitted (Mistral's part starts here) */
  startedAt: number
  requestJson: unknown
  priced: Priced
  ticket: Ticket | undefined
  /** once settled, however the settlement went: the status it settled on, the total tokens (0 when not metered) */
  settled: (status: number, tokens: number) => void
}

export interface Settlement {
  status: number
  upstreamStatus: number | undefined
  tap: TapResult | undefined
  /** The upstream body ended early: cut, stalled, or the client hung up. */
  cut: boolean
  /** the answer was an event stream (`text/event-stream`) relayed with no tap; a tap says so itself */
  streamed?: boolean
}

export interface Meter {
  /** Never throws: it may run in an event listener, where a throw would end the process. */
  settle (settlement: Settlement): void
}

/**
 * One proxied call: whatever way it ends, `settle` writes exactly one usage record when the operation is metered,
 * and gives back its admission (reservation replaced by the actual cost, slot released). The first call wins, and
 * tells `settled` (for the request's log line), also when the metering fails.
 */
export function meterCall ({
  app, request, operation, keyName, receivedAt, startedAt, requestJson, priced, ticket, settled
}: MeterOptions): Meter {
  let open = true
  // the admission, until it is given back: once, whatever the metering does
  let held = ticket
  const provisional = operation.metered ? provisionalRecord() : undefined
  if (provisional) app.usage.begin(provisional)
  // the call's record is in the ledger's queue
  let recorded = false
  app.metrics.inFlight(1)
  return {
    settle (settlement) {
      if (!open) return
      open = false
      app.metrics.inFlight(-1)
      let tokens = 0
      try {
        tokens = account(settlement)
      } catch (err) {
        // a metering fault (a usage too large to price, say) is logged, never thrown: the client gets its answer or
        // its error whatever the meter does
        request.log.error({ err }, 'metering a call failed')
        // the call is in the ledger all the same, as its start estimated it, and where spend caps apply at what it
        // holds of them (which keep that below): the ledger and the counters agree, and its spooled start is let go
        if (provisional && !recorded) {
          app.usage.record({
            ...provisional,
            status: settlement.status,
            upstreamStatus: settlement.upstreamStatus ?? null,
            latencyMs: Date.now() - receivedAt,
            billedCostMicros: held && held.spend.length > 0 ? held.reservedCost : provisional.billedCostMicros
          })
        }
      } finally {
        // a call the meter could not price keeps what it reserved, so that the caps stay hard
        if (held) release(held.reservedCost, held.reservedTokens)
        settled(settlement.status, tokens)
      }
    }
  }

  function release (cost: number, tokens: number) {
    if (held) void app.admission.settle(held, { cost, tokens })
    held = undefined
  }

  /** The metering of the call's end; the total tokens. */
  function account ({ status, upstreamStatus, tap, cut, streamed = false }: Settlement): number {
    const tenant = request.tenant as TenantContext
    const now = Date.now()
    const durationMs = now - receivedAt
    // Mistral's part of the call: from the hand-over to the end of its body, retries before the first byte included
    const upstreamMs = upstreamStatus === undefined ? undefined : now - startedAt
    if (!operation.metered) {
      release(0, 0)
      app.metrics.call({
        workspace: tenant.workspace.slug, operation: operation.area, model: undefined, status, durationMs, upstreamMs,
        streamed
      })
      return 0
    }
    const body = asObject(requestJson)
    const success = upstreamStatus !== undefined && upstreamStatus < 300
    let usage = tap?.usage
    let estimated = false
    if (!usage) {
      usage = emptyUsage()
      // Mistral bills what it produced; when its own count never arrived the ledger says it guessed
      if (success && operation.metered !== 'speech') {
        estimated = true
        usage.promptTokens = estimatePromptTokens(body)
        // a stream cut, stalled or left before Mistral's count came: Mistral bills what it produced, at least a token
        // for each event relayed after the first (each delta carries one or more; the first, the role or the
        // conversation's start, none), or hanging up would make the output free
        usage.completionTokens = tap?.streamed ? Math.max(0, tap.events - 1) : 0
        usage.totalTokens = usage.promptTokens + usage.completionTokens
        // OCR and transcription are priced only on pages and audio seconds: a client leaving before Mistral's count
        // would otherwise take the pages or the transcript for free, so the units reserved for the call are billed
        usage.pages = priced.reservedUnits?.pages ?? 0
        usage.audioSeconds = priced.reservedUnits?.audioSeconds ?? 0
      }
    }
    // non-streamed speech reports no usage at all: TTS is priced per character of input (MISTRAL-NOTES §2.6)
    if (operation.metered === 'speech' && success && typeof body?.input === 'string') {
      usage.characters = [...body.input].length
    }
    if (cut && success) estimated = estimated || tap?.usage === undefined
    const requestedModel = typeof body?.model === 'string' ? body.model : undefined
    const model = requestedModel ?? tap?.model ?? null
    const { listMicros, billedMicros, priceModel } = price(app, operation, tenant, priced, requestedModel, model, usage,
      body)
    release(billedMicros, usage.totalTokens)
    recorded = true
    app.usage.record(ledgerRow({
      model,
      priceModel,
      usage,
      listMicros,
      billedMicros,
      estimated,
      streamed: tap?.streamed ?? body?.stream === true,
      status,
      upstreamStatus: upstreamStatus ?? null,
      latencyMs: durationMs,
      ttftMs: tap?.firstByteAt === undefined ? null : tap.firstByteAt - startedAt
    }))
    app.metrics.call({
      workspace: tenant.workspace.slug,
      currency: tenant.workspace.currency,
      operation: operation.metered,
      model: priceModel,
      status,
      durationMs,
      upstreamMs,
      streamed: tap?.streamed === true,
      ttftMs: tap?.streamed && tap.firstByteAt !== undefined ? tap.firstByteAt - startedAt : undefined,
      inputTokens: usage.promptTokens,
      outputTokens: usage.completionTokens,
      billedMicros
    })
    return usage.totalTokens
  }

  /**
   * What the ledger says of this call if the gateway dies before it ends (SIGKILL, crash): the prompt's estimate,
   * flagged `estimated`, status 0 (no answer known). The spool replays it unless the real record follows.
   */
  function provisionalRecord () {
    const tenant = request.tenant as TenantContext
    const body = asObject(requestJson)
    const usage = emptyUsage()
    if (operation.metered !== 'speech') usage.promptTokens = usage.totalTokens = estimatePromptTokens(body)
    const requestedModel = typeof body?.model === 'string' ? body.model : undefined
    const { listMicros, billedMicros, priceModel } = price(app, operation, tenant, priced, requestedModel,
      requestedModel ?? null, usage, body)
    return ledgerRow({
      model: requestedModel ?? null,
      priceModel,
      usage,
      listMicros,
      billedMicros,
      estimated: true,
      streamed: body?.stream === true,
      status: 0,
      upstreamStatus: null,
      latencyMs: 0,
      ttftMs: null
    })
  }

  /** The ledger's row for this call; fields named one by one (a spread here costs microseconds a call in V8). */
  function ledgerRow (facts: RowFacts): UsageRecord {
    const tenant = request.tenant as TenantContext
    const { usage } = facts
    return {
      requestId: request.id,
      workspaceId: tenant.workspace.id,
      tokenId: tenant.token.id,
      keyName: keyName(),
      operation: operation.metered as string,
      model: facts.model === null ? null : ledgerText(facts.model),
      pricedModel: facts.priceModel ?? null,
      promptTokens: usage.promptTokens,
      cachedTokens: usage.cachedTokens,
      completionTokens: usage.completionTokens,
      totalTokens: usage.totalTokens,
      pages: usage.pages,
      audioSeconds: usage.audioSeconds,
      characters: usage.characters,
      connectorTokens: usage.connectorTokens,
      serviceTier: usage.serviceTier,
      listCostMicros: facts.listMicros,
      billedCostMicros: facts.billedMicros,
      estimated: facts.estimated,
      streamed: facts.streamed,
      status: facts.status,
      upstreamStatus: facts.upstreamStatus,
      latencyMs: facts.latencyMs,
      // billed in the day and month the spend counters hold it in: they were chosen by the store's clock, which a
      // replica's may be off from at midnight
      createdAt: new Date(ticket?.admittedAt ?? startedAt),
      ttftMs: facts.ttftMs
    }
  }
}

/** At the request's model's price, or, where the request named none, at the price of the model Mistral answered with. */
function price (app: FastifyInstance, operation: Operation, tenant: TenantContext, priced: Priced,
  requestedModel: string | undefined, model: string | null, usage: Usage, body: Record<string, unknown> | undefined) {
  const family = operation.metered as NonNullable<Operation['metered']>
  const unit = (requestedModel === undefined && model !== null
    ? app.prices.resolve(model, family, tenant.workspace.currency)
    : undefined) ?? priced.price
  if (!unit) return { listMicros: 0, billedMicros: 0, priceModel: undefined }
  const annotated = body?.bbox_annotation_format != null || body?.document_annotation_format != null
  // the canonical id of the price used: a metric label bounded by the price book
  // the tier comes with the usage (1.75× when priority); the region with the deployment's upstream (1.1×)
  const cost = costOf(usage, unit, { family, markupBps: tenant.workspace.markupBps, annotated, regional: priced.regional })
  return { listMicros: cost.listMicros, billedMicros: cost.billedMicros, priceModel: unit.model }
}

interface RowFacts {
  model: string | null
  priceModel: string | undefined
  usage: Usage
  listMicros: number
  billedMicros: number
  estimated: boolean
  streamed: boolean
  status: number
  upstreamStatus: number | null
  latencyMs: number
  ttftMs: number | null
}

/**
 * A model name as the client or Mistral wrote it, as text the ledger can hold: PostgreSQL refuses a NUL and half a
 * surrogate pair (and with them the whole batch the record is in), and no model's name is longer than this. The
 * request's log line holds it so too.
 */
export function ledgerText (text: string): string {
  return text.slice(0, 200).replace(CONTROL, '').replace(LONE_SURROGATE, '\ufffd')
}

const CONTROL = /[\u0000-\u001f\u007f]/g
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g

function asObject (value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' ? value as Record<string, unknown> : undefined
}

/**
 * About four characters a token, the usual ratio on prose: what a call whose usage Mistral never sent is billed at,
 * flagged `estimated`. Not the reservation's estimate (src/pricing/estimate.ts), which over-counts on purpose so that
 * a cap holds; billing a client for a guess should not.
 */
function estimatePromptTokens (body: Record<string, unknown> | undefined): number {
  if (!body) return 0
  const text = JSON.stringify(body.messages ?? body.inputs ?? body.input ?? body.prompt ?? '')
  return Math.ceil(text.length / 4)
}
