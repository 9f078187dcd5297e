import { sql } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { formatMoney } from '../pricing/money.js'
import { toCsv } from './csv.js'
import { selectRows } from './sql-rows.js'
import type { Month } from './usage-query.js'

interface SummaryRow {
  id: string
  slug: string
  name: string
  currency: string
  timezone: string
  deletedAt: string | null
  calls: string
  totalTokens: string
  listCostMicros: string
  billedCostMicros: string
}

const CSV_FIELDS = ['slug', 'name', 'currency', 'timezone', 'deleted', 'calls', 'totalTokens', 'listCostMicros',
  'listCost', 'billedCostMicros', 'billedCost'] as const

/**
 * Every workspace's totals for a calendar month, each month in the workspace's own time zone (the rollup's days
 * already are), for the operator. Workspaces without usage that month are left out; deleted ones that had some are
 * kept, flagged. Amounts are in each workspace's currency, so the grand totals are per currency.
 */
export async function operatorSummary (db: Database, month: Month) {
  const rows = await selectRows<SummaryRow>(db, sql`
    SELECT w.id, w.slug, w.name, w.currency, w.timezone, to_json(w.deleted_at)#>>'{}' AS "deletedAt",
      sum(d.calls)::text AS calls, sum(d.total_tokens)::text AS "totalTokens",
      sum(d.list_cost_micros)::text AS "listCostMicros", sum(d.billed_cost_micros)::text AS "billedCostMicros"
    FROM usage_daily d JOIN workspaces w ON w.id = d.workspace_id
    WHERE d.day >= ${month.firstDay}::date AND d.day < ${month.nextDay}::date
    GROUP BY w.id ORDER BY w.slug, w.id`)
  const workspaces = rows.map((row) => {
    const listCostMicros = Number(row.listCostMicros)
    const billedCostMicros = Number(row.billedCostMicros)
    return {
      id: row.id,
      slug: row.slug,
      name: row.name,
      currency: row.currency,
      timezone: row.timezone,
      deleted: row.deletedAt !== null,
      calls: Number(row.calls),
      totalTokens: Number(row.totalTokens),
      listCostMicros,
      listCost: formatMoney(listCostMicros),
      billedCostMicros,
      billedCost: formatMoney(billedCostMicros)
    }
  })
  const byCurrency = new Map<string, { calls: number, listCostMicros: number, billedCostMicros: number }>()
  for (const workspace of workspaces) {
    const sum = byCurrency.get(workspace.currency) ?? { calls: 0, listCostMicros: 0, billedCostMicros: 0 }
    sum.calls += workspace.calls
    sum.listCostMicros += workspace.listCostMicros
    sum.billedCostMicros += workspace.billedCostMicros
    byCurrency.set(workspace.currency, sum)
  }
  const totals = [...byCurrency].sort(([a], [b]) => a.localeCompare(b)).map(([currency, sum]) => ({
    currency, ...sum, listCost: formatMoney(sum.listCostMicros), billedCost: formatMoney(sum.billedCostMicros)
  }))
  return { month: month.id, workspaces, totals }
}

export type OperatorSummary = Awaited<ReturnType<typeof operatorSummary>>

export const operatorSummaryCsv = (summary: OperatorSummary) => toCsv(CSV_FIELDS, summary.workspaces)
