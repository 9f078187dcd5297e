import { and, count, eq, lt } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { watchedJobs } from '../db/schema.js'
import { formatMoney } from '../pricing/money.js'
import { toCsv } from './csv.js'
import { ORPHAN_SCAN_MS } from './recorder.js'
import { STALE_OWNER_MS } from './spool.js'
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

export interface StatementOptions {
  /**
   * UPSTREAM_TOTAL_TIMEOUT_MS, the longest a call can run: a call's record is dated at its admission but reaches the
   * ledger when it ends, so a stream admitted in the month's last second adds to it up to this long after its end
   */
  longestCallMs: number
  now?: Date
}

/**
 * How long after its call ends a record may still reach the ledger: a replica that dies leaves it in its spool, which
 * a survivor claims once the owner file has stood still for STALE_OWNER_MS, seen by a scan every ORPHAN_SCAN_MS (40 s
 * in all), and writes on its next flush (200 ms); 20 s more for the write itself, timers late on a busy replica and
 * replicas' clocks a few seconds apart. One minute with the defaults.
 */
export const LANDING_MARGIN_MS = STALE_OWNER_MS + ORPHAN_SCAN_MS + 20_000

const LINE_FIELDS = ['model', 'operation', 'calls', 'estimatedCalls', 'promptTokens', 'cachedTokens',
  'completionTokens', 'connectorTokens', 'pages', 'audioSeconds', 'characters', 'listCostMicros', 'listCost',
  'markupMicros', 'markup', 'billedCostMicros', 'billedCost'] as const

/**
 * A workspace's monthly statement: one line per priced model and operation, with its units, its cost at list
 * price, the markup (or discount) and the billed amount, in the workspace's currency; the month runs from midnight
 * to midnight in its time zone. The markup of a line is billed − list, so it is what was applied to each call when
 * it was made, whatever the workspace's markup is now. Whole days only: it is read from the daily rollup.
 */
export async function monthlyStatement (db: Database, workspace: StatementWorkspace, month: Month,
  { longestCallMs, now = new Date() }: StatementOptions) {
  const window = await resolveWindow(db, workspace.timezone, { day: month.firstDay }, { day: month.nextDay })
  if (!window) throw new RangeError(`empty month ${month.id}`)
  const groups = await usageGroups(db, {
    workspaceId: workspace.id, timezone: workspace.timezone, ...window, dimensions: ['model', 'operation']
  })
  const pendingBatchJobs = await pendingJobsBefore(db, workspace.id, window.to)
  const closesAt = new Date(window.to.getTime() + longestCallMs + LANDING_MARGIN_MS)
  const lines = groups.map(({ key, sums }) => ({ model: key.model ?? '', operation: key.operation ?? '', ...money(sums) }))
  const total = money(addSums(groups))
  return {
    workspace: { id: workspace.id, slug: workspace.slug, name: workspace.name },
    month: month.id,
    timezone: workspace.timezone,
    currency: workspace.currency,
    periodStart: window.from.toISOString(),
    periodEnd: window.to.toISOString(),
    // closed only once nothing can add to it: every call admitted in the month has ended and its record landed, and
    // no job that may end in it is still running
    status: now < closesAt || pendingBatchJobs > 0 ? 'open' as const : 'closed' as const,
    closesAt: closesAt.toISOString(),
    pendingBatchJobs,
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

/**
 * The workspace's batch jobs still running that were created before `end`. A job is billed in the month it ends
 * (MISTRAL-NOTES §2.6), whenever it started, so any of these may yet add to a month that ends at `end`; a job created
 * later cannot end before it. A watch leaves `pending` only once the job's record is in the ledger, so with none left
 * the month's total is final. There is no lower bound: a job's record is dated when Mistral says it completed, which
 * the spec does not bound (`timeout_hours` ≤ 168, but not said to count from creation), and a watch whose Mistral
 * key was removed stays pending until it is back.
 */
async function pendingJobsBefore (db: Database, workspaceId: string, end: Date): Promise<number> {
  const [pending] = await db.select({ jobs: count() }).from(watchedJobs).where(and(
    eq(watchedJobs.workspaceId, workspaceId), eq(watchedJobs.status, 'pending'), lt(watchedJobs.createdAt, end)))
  return pending?.jobs ?? 0
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
