import { and, desc, eq, gte, lt } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { usageRecords } from '../db/schema.js'

export interface RecordsWindow {
  workspaceId: string
  /** that token's records alone */
  tokenId?: string
  from: Date
  to: Date
  limit: number
}

/** A workspace's newest usage records between two instants (the index on workspace and time serves it). */
export function recentRecords (db: Database, { workspaceId, tokenId, from, to, limit }: RecordsWindow) {
  return db.select().from(usageRecords)
    .where(and(eq(usageRecords.workspaceId, workspaceId),
      tokenId === undefined ? undefined : eq(usageRecords.tokenId, tokenId),
      gte(usageRecords.createdAt, from), lt(usageRecords.createdAt, to)))
    .orderBy(desc(usageRecords.createdAt))
    .limit(limit)
}
