import { and, count, eq, gte, lt } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { watchedJobs } from '../db/schema.js'
import { formatMoney } from '../pricing/money.js'
import { toCsv } from './csv.js'
import { addSums, resolveWindow, usageGroups, type UsageSums } from './usage-groups.js'
import type { Month } from './usage-query.js'

export interface StatementWorkspace {
  id: string
  slug: string
  name: string
  timezone: string
  currency: string
  markupBps: number
}

const LINE_FIELDS = ['model', 'operation', 'calls', 'estimatedCalls', 'promptTokens', 'cachedTokens',
  'completionTokens', 'connectorTokens', 'pages', 'audioSeconds', 'characters', 'listCostMicros', 'listCost',
  'markupMicros', 'markup', 'billedCostMicros', 'billedCost'] as const

/**
 * A workspace's monthly statement: one line per priced model and operation, with its units, its cost at list
 * price, the markup (or discount) and the billed amount, in the workspace's currency; the month runs from midnight
 * to midnight in its time zone. The markup of a line is billed − list, so it is what was applied to each call when
 * it was made, whatever the workspace's markup is now. Whole days only: it is read from the daily rollup.
 */
export async function monthlyStatement (db: Database, workspace: StatementWorkspace, month: Month, now = new Date()) {
  const window = await resolveWindow(db, workspace.timezone, { day: month.firstDay }, { day: month.nextDay })
  if (!window) throw new RangeError(`empty month ${month.id}`)
  const groups = await usageGroups(db, {
    workspaceId: workspace.id, timezone: workspace.timezone, ...window, dimensions: ['model', 'operation']
  })
  const [pending] = await db.select({ jobs: count() }).from(watchedJobs).where(and(
    eq(watchedJobs.workspaceId, workspace.id), eq(watchedJobs.status, 'pending'),
    gte(watchedJobs.createdAt, window.from), lt(watchedJobs.createdAt, window.to)))
  const lines = groups.map(({ key, sums }) => ({ model: key.model ?? '', operation: key.operation ?? '', ...money(sums) }))
  const total = money(addSums(groups))
  return {
    workspace: { id: workspace.id, slug: workspace.slug, name: workspace.name },
    month: month.id,
    timezone: workspace.timezone,
    currency: workspace.currency,
    periodStart: window.from.toISOString(),
    periodEnd: window.to.toISOString(),
    // an open month still grows; a closed one is final unless a batch job started in it is still running
    status: now < window.to ? 'open' as const : 'closed' as const,
    // batch jobs are billed when they end (MISTRAL-NOTES §2.6): these may still add to the month they started in
    pendingBatchJobs: pending?.jobs ?? 0,
    currentMarkupBps: workspace.markupBps,
    lines,
    totals: {
      calls: total.calls,
      estimatedCalls: total.estimatedCalls,
      listCostMicros: total.listCostMicros,
      listCost: total.listCost,
      markupMicros: total.markupMicros,
      markup: total.markup,
      billedCostMicros: total.billedCostMicros,
      billedCost: total.billedCost
    },
    generatedAt: now.toISOString()
  }
}

export type Statement = Awaited<ReturnType<typeof monthlyStatement>>

/** The lines as CSV, with a last line of totals (model `TOTAL`). */
export function statementCsv (statement: Statement): string {
  const total = { model: 'TOTAL', operation: '', ...statement.totals }
  return toCsv(LINE_FIELDS, [...statement.lines, total as typeof statement.lines[number]])
}

function money (sums: UsageSums) {
  const markupMicros = sums.billedCostMicros - sums.listCostMicros
  return {
    ...sums,
    listCost: formatMoney(sums.listCostMicros),
    markupMicros,
    markup: formatMoney(markupMicros),
    billedCost: formatMoney(sums.billedCostMicros)
  }
}
