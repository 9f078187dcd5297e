import { Type } from '@sinclair/typebox'

// The usage views of the admin API (and of the self-service API, which shares the workspace view). Money is integer
// micro-units of the workspace currency (`…Micros`) and the same amount as a decimal string (`listCost`, …).

const Timestamp = Type.String({ format: 'date-time' })
const NullableString = Type.Union([Type.String(), Type.Null()])
const Money = Type.String({ description: 'decimal, six places, in the workspace currency', examples: ['12.345678'] })

const Units = {
  promptTokens: Type.Integer(),
  cachedTokens: Type.Integer(),
  completionTokens: Type.Integer(),
  totalTokens: Type.Integer(),
  connectorTokens: Type.Integer({ description: 'conversations: tokens spent by built-in connectors' }),
  pages: Type.Integer(),
  audioSeconds: Type.Integer(),
  characters: Type.Integer()
}

const Sums = {
  calls: Type.Integer(),
  estimatedCalls: Type.Integer({ description: 'calls whose units the gateway had to estimate' }),
  ...Units,
  listCostMicros: Type.Integer(),
  listCost: Money,
  billedCostMicros: Type.Integer(),
  billedCost: Money
}

export const UsageTotals = Type.Object(Sums)

export const UsageRecord = Type.Object({
  requestId: Type.String(),
  tokenId: NullableString,
  keyName: Type.String(),
  operation: Type.String(),
  model: Type.Union([Type.String(), Type.Null()], { description: 'as the request named it' }),
  pricedModel: Type.Union([Type.String(), Type.Null()], { description: "the price book's id it was priced at" }),
  serviceTier: Type.Union([Type.String(), Type.Null()], { description: 'standard or priority, as Mistral reported' }),
  ...Units,
  listCostMicros: Type.Integer(),
  listCost: Money,
  billedCostMicros: Type.Integer(),
  billedCost: Money,
  estimated: Type.Boolean(),
  streamed: Type.Boolean(),
  status: Type.Integer(),
  upstreamStatus: Type.Union([Type.Integer(), Type.Null()]),
  latencyMs: Type.Integer(),
  ttftMs: Type.Union([Type.Integer(), Type.Null()]),
  createdAt: Timestamp
})

const UsageGroup = Type.Object({
  day: Type.Optional(Type.String({ description: 'yyyy-mm-dd in the workspace time zone' })),
  model: Type.Optional(Type.String({ description: "the price book's canonical id (else the model as requested)" })),
  operation: Type.Optional(Type.String()),
  token: Type.Optional(NullableString),
  tokenName: Type.Optional(NullableString),
  ...Sums
})

export const UsageView = Type.Object({
  from: Timestamp,
  to: Timestamp,
  timezone: Type.String(),
  currency: Type.String(),
  groupBy: Type.Optional(Type.Array(Type.String())),
  groups: Type.Optional(Type.Array(UsageGroup, { description: 'with groupBy: one row per group' })),
  totals: UsageTotals,
  records: Type.Optional(Type.Array(UsageRecord, { description: 'without groupBy: the newest records, up to limit' }))
}, { description: 'JSON, or CSV with format=csv or Accept: text/csv (the groups, or the records)' })

export const UsageQueryString = Type.Object({
  from: Type.Optional(Type.String({
    description: 'inclusive: a day (yyyy-mm-dd, from midnight in the workspace time zone) or an instant with its ' +
      'offset; default: 30 days before to'
  })),
  to: Type.Optional(Type.String({ description: 'exclusive, as from; default: now' })),
  groupBy: Type.Optional(Type.String({ description: 'day, model, operation or token; several comma-separated' })),
  format: Type.Optional(Type.String({ description: 'json (default) or csv' })),
  limit: Type.Optional(Type.Integer({
    minimum: 1, maximum: 10_000, default: 1000, description: 'records listed, without groupBy'
  }))
})

const MoneyLine = {
  listCostMicros: Type.Integer(),
  listCost: Money,
  markupMicros: Type.Integer({ description: 'billed − list: negative for a discount' }),
  markup: Money,
  billedCostMicros: Type.Integer(),
  billedCost: Money
}

export const Statement = Type.Object({
  workspace: Type.Object({ id: Type.String(), slug: Type.String(), name: Type.String() }),
  month: Type.String(),
  timezone: Type.String(),
  currency: Type.String(),
  periodStart: Timestamp,
  periodEnd: Timestamp,
  status: Type.Union([Type.Literal('open'), Type.Literal('closed')], {
    description: 'closed from closesAt on, once no batch job that may end in the month is running: it no longer ' +
      'changes (unless PostgreSQL was unreachable past closesAt: records that waited in the spool land when it answers)'
  }),
  closesAt: Type.String({
    format: 'date-time',
    description: 'periodEnd + UPSTREAM_TOTAL_TIMEOUT_MS + 1 minute: a call admitted in the month\'s last second is ' +
      'dated then and recorded when it ends, up to UPSTREAM_TOTAL_TIMEOUT_MS later; the minute lets a dead ' +
      'replica\'s spool be claimed and written. A batch job still running keeps the month open past it'
  }),
  pendingBatchJobs: Type.Integer({
    description: 'batch jobs still running that were created before the month ended: each is billed in the month it ' +
      'ends, so the month stays open until none is left'
  }),
  currentMarkupBps: Type.Integer({ description: "the workspace's markup now; each line's markup is what was applied" }),
  lines: Type.Array(Type.Object({ model: Type.String(), operation: Type.String(), ...Sums, ...MoneyLine })),
  totals: Type.Object({ calls: Type.Integer(), estimatedCalls: Type.Integer(), ...MoneyLine }),
  generatedAt: Timestamp
}, { description: 'JSON, or CSV with format=csv or Accept: text/csv (one line per model and operation, then TOTAL)' })

export const StatementParams = Type.Object({
  ws: Type.String({ description: 'workspace id or slug' }),
  month: Type.String({ description: 'yyyy-mm, in the workspace time zone', examples: ['2026-03'] })
})

export const FormatQuery = Type.Object({ format: Type.Optional(Type.String({ description: 'json (default) or csv' })) })

export const OperatorSummary = Type.Object({
  month: Type.String(),
  workspaces: Type.Array(Type.Object({
    id: Type.String(),
    slug: Type.String(),
    name: Type.String(),
    currency: Type.String(),
    timezone: Type.String(),
    deleted: Type.Boolean(),
    calls: Type.Integer(),
    totalTokens: Type.Integer(),
    listCostMicros: Type.Integer(),
    listCost: Money,
    billedCostMicros: Type.Integer(),
    billedCost: Money
  })),
  totals: Type.Array(Type.Object({
    currency: Type.String(),
    calls: Type.Integer(),
    listCostMicros: Type.Integer(),
    listCost: Money,
    billedCostMicros: Type.Integer(),
    billedCost: Money
  }), { description: 'one per currency: amounts in different currencies are not added' })
}, { description: 'JSON, or CSV with format=csv or Accept: text/csv (one line per workspace)' })

export const OperatorSummaryQuery = Type.Object({
  month: Type.Optional(Type.String({ description: 'yyyy-mm; default: the current month (UTC)' })),
  format: Type.Optional(Type.String({ description: 'json (default) or csv' }))
})
