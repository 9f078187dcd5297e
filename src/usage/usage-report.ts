import type { Database } from '../db/client.js'
import { badRequest } from '../errors.js'
import { formatMoney } from '../pricing/money.js'
import { toCsv } from './csv.js'
import { recentRecords } from './queries.js'
import { addSums, resolveWindow, usageGroups, type Dimension } from './usage-groups.js'
import type { UsageQuery } from './usage-query.js'

export interface ReportedWorkspace {
  id: string
  timezone: string
  currency: string
}

/** Sums or a record, with its money also as decimal strings of the workspace currency (micro-units for machines). */
const withMoney = <T extends { listCostMicros: number, billedCostMicros: number }>(amounts: T) =>
  ({ ...amounts, listCost: formatMoney(amounts.listCostMicros), billedCost: formatMoney(amounts.billedCostMicros) })

const SUM_FIELDS = ['calls', 'estimatedCalls', 'promptTokens', 'cachedTokens', 'completionTokens', 'totalTokens',
  'connectorTokens', 'pages', 'audioSeconds', 'characters', 'listCostMicros', 'listCost', 'billedCostMicros',
  'billedCost'] as const
const RECORD_FIELDS = ['createdAt', 'requestId', 'tokenId', 'keyName', 'operation', 'model', 'pricedModel',
  'serviceTier', 'promptTokens', 'cachedTokens', 'completionTokens', 'totalTokens', 'connectorTokens', 'pages',
  'audioSeconds', 'characters', 'listCostMicros', 'listCost', 'billedCostMicros', 'billedCost', 'estimated', 'streamed',
  'status', 'upstreamStatus', 'latencyMs', 'ttftMs'] as const

/** Whose calls a report counts: the whole workspace's, or only those made with the token `tokenId`. */
export interface ReportScope {
  tokenId?: string
}

/**
 * The usage view of one workspace (`GET /admin/v1/workspaces/{ws}/usage`) or of one of its tokens
 * (`GET /tramontane/v1/usage`): totals of a window and its newest records, or, with `groupBy`, one row per day, model,
 * operation or token. `tokenNames` names the token ids of a `token` grouping.
 */
export async function usageReport (db: Database, workspace: ReportedWorkspace, query: UsageQuery,
  tokenNames: () => Promise<Map<string, string>>, { tokenId }: ReportScope = {}) {
  const window = await resolveWindow(db, workspace.timezone, query.from, query.to)
  if (!window) throw badRequest('from must be before to', { param: 'from' })
  const head = {
    from: window.from.toISOString(),
    to: window.to.toISOString(),
    timezone: workspace.timezone,
    currency: workspace.currency
  }
  const groups = await usageGroups(db, { workspaceId: workspace.id, tokenId, timezone: workspace.timezone, ...window,
    dimensions: query.dimensions })
  const totals = withMoney(addSums(groups))
  if (query.dimensions.length === 0) {
    const records = await recentRecords(db, { workspaceId: workspace.id, tokenId, ...window, limit: query.limit })
    return { ...head, totals, records: records.map(withMoney) }
  }
  const names = query.dimensions.includes('token') ? await tokenNames() : undefined
  const rows = groups.map(({ key, sums }) => ({
    ...key,
    ...(names ? { tokenName: key.token ? names.get(key.token) ?? null : null } : {}),
    ...withMoney(sums)
  }))
  return { ...head, groupBy: query.dimensions, groups: rows, totals }
}

export type UsageReport = Awaited<ReturnType<typeof usageReport>>

/** The same view as CSV: the groups, or the records when nothing is grouped. */
export function usageCsv (report: UsageReport): string {
  if ('groups' in report) {
    const keys: string[] = [...report.groupBy as Dimension[]]
    if (keys.includes('token')) keys.splice(keys.indexOf('token') + 1, 0, 'tokenName')
    return toCsv([...keys, ...SUM_FIELDS] as never[], report.groups)
  }
  return toCsv(RECORD_FIELDS, report.records.map((record) => ({ ...record, createdAt: record.createdAt.toISOString() })))
}
