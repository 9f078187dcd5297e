import { sql, type SQL } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from './db/client.js'

/** The spend caps' periods, named as the caps and the threshold crossings name them. */
export type CapPeriod = 'daily' | 'monthly' | 'lifetime'

export interface WorkspaceSpend {
  workspace: string
  /** the workspace's currency (ISO 4217), which its spend and caps are in */
  currency: string
  /** billed micro-units of the workspace currency in the current calendar period (its time zone) */
  spent: Partial<Record<CapPeriod, number>>
  caps: Partial<Record<CapPeriod, number>>
}

export interface ScrapeFacts {
  /** workspaces with a cap or with spend this month, capped ones first, then by spend this month */
  spend: WorkspaceSpend[]
  keysByStatus: { active: number, invalid: number }
  /** workspace slug and key name of the keys asked for: labels, where an id must never be one */
  keyNames: Map<string, { workspace: string, key: string }>
}

export interface ScrapeFactsReader {
  /** The last facts read, refreshed when older than `maxAgeMs`; never waits more than `waitMs` for PostgreSQL. */
  read (keyIds: string[]): Promise<ScrapeFacts>
}

const PERIODS: CapPeriod[] = ['daily', 'monthly', 'lifetime']
const EMPTY: ScrapeFacts = { spend: [], keysByStatus: { active: 0, invalid: 0 }, keyNames: new Map() }

/**
 * What `/metrics` reads from PostgreSQL: spend per workspace and period from the usage_daily rollups (so it survives
 * restarts and agrees across replicas), the caps it is measured against, and the Mistral keys by status. A scrape
 * must stay cheap and must answer while PostgreSQL is away (the spool depth matters most then): one refresh at a
 * time, at most every `maxAgeMs`, and a slow one leaves the previous facts in place.
 */
export function createScrapeFacts (db: Database, log: FastifyBaseLogger, { maxAgeMs = 1_000, waitMs = 2_000 } = {}):
ScrapeFactsReader {
  let facts = EMPTY
  let readAt = -Infinity
  let refreshing: Promise<void> | undefined

  async function refresh (keyIds: string[]) {
    // one after the other: a scrape holds at most one pooled connection, even while PostgreSQL hangs
    const spend = await readSpend(db)
    const keysByStatus = await readKeyStatus(db)
    facts = { spend, keysByStatus, keyNames: await readKeyNames(db, keyIds) }
    readAt = Date.now()
  }

  return {
    async read (keyIds) {
      if (Date.now() - readAt < maxAgeMs) return facts
      refreshing ??= refresh(keyIds)
        .catch((err: unknown) => log.warn({ err }, 'metrics: spend and keys unread, the last values stand'))
        .finally(() => { refreshing = undefined })
      let timer: NodeJS.Timeout | undefined
      await Promise.race([refreshing, new Promise((resolve) => { timer = setTimeout(resolve, waitMs) })])
      clearTimeout(timer)
      return facts
    }
  }
}

async function readSpend (db: Database): Promise<WorkspaceSpend[]> {
  // day and month through the (workspace_id, day, ...) index; lifetime, a scan of the workspace's whole history,
  // only where a lifetime cap makes it matter
  const rows = await rowsOf<Record<string, unknown>>(db, sql`
    SELECT w.slug, w.currency, w.caps, s.day, s.month,
      CASE WHEN w.caps ? 'lifetime'
        THEN (SELECT coalesce(sum(l.billed_cost_micros), 0) FROM usage_daily l WHERE l.workspace_id = w.id) END AS lifetime
    FROM workspaces w
    -- the workspace's today in the zone its days were rolled up in (UTC where PostgreSQL does not know its own)
    -- OFFSET 0: computed once a workspace, not inlined into the filter below and called once a rollup row
    CROSS JOIN LATERAL (SELECT (now() AT TIME ZONE usage_daily_zone(w.timezone))::date AS today OFFSET 0) z
    LEFT JOIN LATERAL (
      SELECT coalesce(sum(d.billed_cost_micros) FILTER (WHERE d.day = z.today), 0) AS day,
        sum(d.billed_cost_micros) AS month
      FROM usage_daily d
      WHERE d.workspace_id = w.id AND d.day >= date_trunc('month', z.today::timestamp)::date
    ) s ON true
    WHERE w.deleted_at IS NULL AND (s.month IS NOT NULL OR w.caps ?| array['daily', 'monthly', 'lifetime'])
    ORDER BY w.caps ?| array['daily', 'monthly', 'lifetime'] DESC, s.month DESC NULLS LAST, w.slug`)
  return rows.map((row) => {
    const caps = (row.caps ?? {}) as Record<string, unknown>
    const spent: WorkspaceSpend['spent'] = { daily: Number(row.day ?? 0), monthly: Number(row.month ?? 0) }
    if (row.lifetime !== null && row.lifetime !== undefined) spent.lifetime = Number(row.lifetime)
    const capped: WorkspaceSpend['caps'] = {}
    for (const period of PERIODS) if (typeof caps[period] === 'number') capped[period] = caps[period]
    return { workspace: String(row.slug), currency: String(row.currency), spent, caps: capped }
  })
}

async function readKeyStatus (db: Database): Promise<ScrapeFacts['keysByStatus']> {
  const rows = await rowsOf<{ status: string, keys: unknown }>(db, sql`
    SELECT k.status, count(*) AS keys FROM mistral_keys k JOIN workspaces w ON w.id = k.workspace_id
    WHERE w.deleted_at IS NULL GROUP BY k.status`)
  const counts = { active: 0, invalid: 0 }
  for (const row of rows) {
    if (row.status === 'active' || row.status === 'invalid') counts[row.status] = Number(row.keys)
  }
  return counts
}

async function readKeyNames (db: Database, keyIds: string[]): Promise<ScrapeFacts['keyNames']> {
  const names: ScrapeFacts['keyNames'] = new Map()
  if (keyIds.length === 0) return names
  const rows = await rowsOf<{ id: string, name: string, slug: string }>(db, sql`
    SELECT k.id, k.name, w.slug FROM mistral_keys k JOIN workspaces w ON w.id = k.workspace_id
    WHERE w.deleted_at IS NULL AND k.id = ANY(${`{${keyIds.join(',')}}`}::uuid[])`)
  for (const row of rows) {
    names.set(row.id, { workspace: row.slug, key: row.name })
  }
  return names
}

/** node-postgres and PGlite both answer raw SQL with `{ rows }` */
async function rowsOf<T> (db: Database, query: SQL): Promise<T[]> {
  return ((await db.execute(query)) as { rows: T[] }).rows
}
