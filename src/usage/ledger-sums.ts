import { and, eq, gte, inArray, lt, sql } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import type { LedgerSums } from '../limits/admission.js'
import { usageRecords } from '../db/schema.js'
import { awaitingCharge } from './batch-charge.js'

/** What the ledger says a workspace (or one of its tokens) spent: the record spend counters are seeded from. */
export function createLedgerSums (db: Database): LedgerSums {
  const where = (workspaceId: string, tokenId: string | undefined, from?: number, to?: number) => {
    const conditions = [eq(usageRecords.workspaceId, workspaceId)]
    if (tokenId !== undefined) conditions.push(eq(usageRecords.tokenId, tokenId))
    if (from !== undefined) conditions.push(gte(usageRecords.createdAt, new Date(from)))
    if (to !== undefined) conditions.push(lt(usageRecords.createdAt, new Date(to)))
    return and(...conditions)
  }
  const sum = sql<string>`coalesce(sum(${usageRecords.billedCostMicros}), 0)`
  return {
    async spent (workspaceId, tokenId, from, to) {
      const [row] = await db.select({ spent: sum }).from(usageRecords).where(where(workspaceId, tokenId, from, to))
      return Number(row.spent)
    },
    async spentAmong (workspaceId, tokenId, from, to, among, exclude = []) {
      const left = exclude.length === 0 ? sql`true` : sql`not ${inArray(usageRecords.requestId, exclude)}`
      const kept = sql<string>`coalesce(sum(${usageRecords.billedCostMicros}) filter (where ${left}), 0)`
      const asked = among.length === 0 ? sql`false` : inArray(usageRecords.requestId, among)
      // one statement, so the sum and the list describe the same instant of the ledger; a batch job's record whose
      // charge the counters have not taken is in neither: the charge counts it
      const [row] = await db.select({
        spent: kept,
        recorded: sql<string[] | null>`array_agg(${usageRecords.requestId}) filter (where ${asked})`
      }).from(usageRecords)
        .where(and(where(workspaceId, tokenId, from, to), sql`not ${awaitingCharge(usageRecords.requestId)}`))
      return { spent: Number(row.spent), recorded: row.recorded ?? [] }
    }
  }
}
