import { and, eq, gte, inArray, lt, sql } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import type { LedgerSums } from '../limits/admission.js'
import { usageRecords } from '../db/schema.js'

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
      if (among.length === 0 && exclude.length === 0) {
        return { spent: await this.spent(workspaceId, tokenId, from, to), recorded: [] }
      }
      const left = exclude.length === 0 ? sql`true` : sql`not ${inArray(usageRecords.requestId, exclude)}`
      const kept = sql<string>`coalesce(sum(${usageRecords.billedCostMicros}) filter (where ${left}), 0)`
      // one statement, so the sum and the list describe the same instant of the ledger
      const [row] = await db.select({
        spent: kept,
        recorded: sql<string[] | null>
          `array_agg(${usageRecords.requestId}) filter (where ${inArray(usageRecords.requestId, among)})`
      }).from(usageRecords).where(where(workspaceId, tokenId, from, to))
      return { spent: Number(row.spent), recorded: row.recorded ?? [] }
    }
  }
}
