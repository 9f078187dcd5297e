import { sql, type SQL } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { selectRows } from './sql-rows.js'

/** What usage can be grouped by; several at once group by each combination. */
export const DIMENSIONS = ['day', 'model', 'operation', 'token'] as const
export type Dimension = typeof DIMENSIONS[number]

/** One end of a window: an instant, or a calendar day (`yyyy-mm-dd`) from its midnight in the workspace's zone. */
export type Bound = { at: Date } | { day: string }

export interface UsageSums {
  calls: number
  estimatedCalls: number
  promptTokens: number
  cachedTokens: number
  completionTokens: number
  totalTokens: number
  connectorTokens: number
  pages: number
  audioSeconds: number
  characters: number
  listCostMicros: number
  billedCostMicros: number
}

export interface UsageGroup {
  /** the value of each dimension asked for: a day, a priced model, an operation, a token id (null: none) */
  key: Partial<Record<Dimension, string | null>>
  sums: UsageSums
}

const SUM_COLUMNS: Array<[keyof UsageSums, string]> = [
  ['calls', 'calls'], ['estimatedCalls', 'estimated_calls'], ['promptTokens', 'prompt_tokens'],
  ['cachedTokens', 'cached_tokens'], ['completionTokens', 'completion_tokens'], ['totalTokens', 'total_tokens'],
  ['connectorTokens', 'connector_tokens'], ['pages', 'pages'], ['audioSeconds', 'audio_seconds'],
  ['characters', 'characters'], ['listCostMicros', 'list_cost_micros'], ['billedCostMicros', 'billed_cost_micros']
]

export const emptySums = (): UsageSums =>
  Object.fromEntries(SUM_COLUMNS.map(([name]) => [name, 0])) as unknown as UsageSums

/**
 * The instants a window runs between, or undefined when it is empty or reversed (the caller's 400). A day bound is
 * resolved by PostgreSQL in the workspace's zone, as the rollup's days are (migrations/0004).
 */
export async function resolveWindow (db: Database, timezone: string, from: Bound, to: Bound) {
  const [row] = await selectRows<{ from: string, to: string }>(db, sql`SELECT
    to_json(${instant(from, timezone)})#>>'{}' AS "from", to_json(${instant(to, timezone)})#>>'{}' AS "to"`)
  const window = { from: new Date(row.from), to: new Date(row.to) }
  return window.from < window.to ? window : undefined
}

/**
 * A workspace's usage between two instants, grouped; with `tokenId`, that token's alone. Whole days of the workspace's
 * time zone are read from the `usage_daily` rollup (a few rows a day, however busy the workspace); only the partial
 * days at either end of the window are summed from the ledger itself. Both count each record once: the trigger adds a
 * record to its day's rollup in the transaction that inserts it.
 */
export async function usageGroups (db: Database, { workspaceId, tokenId, timezone, from, to, dimensions }: {
  workspaceId: string
  tokenId?: string
  timezone: string
  from: Date
  to: Date
  dimensions: readonly Dimension[]
}): Promise<UsageGroup[]> {
  const tz = await rollupZone(db, timezone)
  const local = (column: SQL) => sql`(${column} AT TIME ZONE ${tz})`
  const f = sql`${from.toISOString()}::timestamptz`
  const t = sql`${to.toISOString()}::timestamptz`
  // the first whole day starts at `from` or after it; the last whole day ends at or before `to`
  const fromDay = sql`(${local(f)})::date`
  const start = (day: SQL) => sql`(${day}::timestamp AT TIME ZONE ${tz})`
  const firstDay = sql`(CASE WHEN ${start(fromDay)} = ${f} THEN ${fromDay} ELSE ${fromDay} + 1 END)`
  const endDay = sql`(${local(t)})::date`
  // no whole day in the window: the ledger alone, [from, to)
  const split = sql`${firstDay} < ${endDay}`
  const rollupKeys = keyColumns(dimensions, {
    day: sql`d.day::text`, model: sql`d.model`, operation: sql`d.operation`, token: sql`d.token_id::text`
  })
  const ledgerKeys = keyColumns(dimensions, {
    day: sql`(${local(sql`r.created_at`)})::date::text`,
    // as the rollup keys its rows: the price book's id, else the model as requested
    model: sql`coalesce(r.priced_model, r.model, '')`,
    operation: sql`r.operation`,
    token: sql`r.token_id::text`
  })
  const rollupSums = sql.join(SUM_COLUMNS.map(([name, column]) =>
    sql`sum(${sql.raw(`d.${column}`)}) AS ${sql.identifier(name)}`), sql`, `)
  const ledgerSums = sql.join(SUM_COLUMNS.map(([name, column]) => {
    if (name === 'calls') return sql`count(*) AS "calls"`
    if (name === 'estimatedCalls') return sql`count(*) FILTER (WHERE r.estimated) AS "estimatedCalls"`
    return sql`sum(${sql.raw(`r.${column}`)}) AS ${sql.identifier(name)}`
  }), sql`, `)
  const ledger = (after: SQL, before: SQL) => sql`SELECT ${ledgerKeys.select} ${ledgerSums} FROM usage_records r
    WHERE r.workspace_id = ${workspaceId} ${ofToken(sql`r.token_id`, tokenId)}
      AND r.created_at >= ${after} AND r.created_at < ${before}
    ${ledgerKeys.groupBy}`
  const keys = dimensions.length > 0 ? sql.join(dimensions.map((name) => sql.identifier(name)), sql`, `) : undefined
  // as text: a month of a busy workspace passes 2^31 tokens; the sums fit a double exactly long before 2^53
  const outerSums = sql.join(SUM_COLUMNS.map(([name]) =>
    sql`sum(${sql.identifier(name)})::text AS ${sql.identifier(name)}`), sql`, `)
  const rows = await selectRows<Record<string, string | null>>(db, sql`
    WITH parts AS (
      SELECT ${rollupKeys.select} ${rollupSums} FROM usage_daily d
        WHERE d.workspace_id = ${workspaceId} ${ofToken(sql`d.token_id`, tokenId)}
          AND d.day >= ${firstDay} AND d.day < ${endDay} ${rollupKeys.groupBy}
      UNION ALL
      ${ledger(f, sql`(CASE WHEN ${split} THEN ${start(firstDay)} ELSE ${t} END)`)}
      UNION ALL
      ${ledger(sql`(CASE WHEN ${split} THEN ${start(endDay)} ELSE ${t} END)`, t)}
    )
    SELECT ${keys ? sql`${keys},` : sql``} ${outerSums} FROM parts
    ${keys ? sql`GROUP BY ${keys} ORDER BY ${keys}` : sql``}`)
  // without a dimension there is always one row (the ledger parts count 0); an empty sum reads as 0
  return rows.map((row) => ({
    key: Object.fromEntries(dimensions.map((dimension) => [dimension, row[dimension]])),
    sums: Object.fromEntries(SUM_COLUMNS.map(([name]) => [name, Number(row[name])])) as unknown as UsageSums
  }))
}

/** Adds the sums of several groups. */
export function addSums (groups: Iterable<{ sums: UsageSums }>): UsageSums {
  const total = emptySums()
  for (const { sums } of groups) {
    for (const name of Object.keys(total) as Array<keyof UsageSums>) total[name] += sums[name]
  }
  return total
}

function keyColumns (dimensions: readonly Dimension[], expressions: Record<Dimension, SQL>) {
  if (dimensions.length === 0) return { select: sql``, groupBy: sql`` }
  const select = sql.join(dimensions.map((dimension) =>
    sql`${expressions[dimension]} AS ${sql.identifier(dimension)}`), sql`, `)
  const positions = sql.raw(dimensions.map((_, i) => String(i + 1)).join(', '))
  return { select: sql`${select},`, groupBy: sql`GROUP BY ${positions}` }
}

// the rollup keeps one row per token (usage_daily_key), so a token's share of it is exact
function ofToken (column: SQL, tokenId: string | undefined): SQL {
  return tokenId === undefined ? sql`` : sql`AND ${column} = ${tokenId}`
}

function instant (bound: Bound, timezone: string): SQL {
  return 'day' in bound
    ? sql`(${bound.day}::date::timestamp AT TIME ZONE usage_daily_zone(${timezone}))`
    : sql`${bound.at.toISOString()}::timestamptz`
}

/**
 * The zone the rollup counts the workspace's days in (migration 0008): its own, or UTC where PostgreSQL does not know
 * it, so that its usage reads as it was rolled up instead of failing.
 */
async function rollupZone (db: Database, timezone: string): Promise<string> {
  const [row] = await selectRows<{ zone: string }>(db, sql`SELECT usage_daily_zone(${timezone}) AS zone`)
  return row.zone
}
