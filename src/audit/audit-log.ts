import { desc, lt } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { auditLog, type AuditEntry } from '../db/schema.js'

export interface AuditEvent {
  actor: string
  action: string
  targetType: string
  targetId?: string | null
  workspaceId?: string | null
  /** Facts only (names, fields changed); callers never pass a secret. */
  details?: Record<string, unknown>
}

/**
 * Writes a change's audit row in `tx`, the transaction that makes the change, before it commits: the change and its
 * row commit together or not at all (README: every admin change is in the audit log). Stores run it; callers say
 * what the row holds, from what the change returned.
 */
export type AuditHook<T> = (tx: Database, result: T) => Promise<void>

export interface AuditLog {
  /** In `tx` when one is given (see AuditHook), else on its own. */
  record (event: AuditEvent, tx?: Database): Promise<void>
  list (options: { limit: number, before?: number }): Promise<AuditEntry[]>
}

export function createAuditLog ({ db }: { db: Database }): AuditLog {
  return {
    async record (event, tx = db) {
      await tx.insert(auditLog).values({
        actor: event.actor,
        action: event.action,
        targetType: event.targetType,
        targetId: event.targetId ?? null,
        workspaceId: event.workspaceId ?? null,
        details: event.details ?? {}
      })
    },
    list ({ limit, before }) {
      const query = db.select().from(auditLog)
      const filtered = before === undefined ? query : query.where(lt(auditLog.id, before))
      return filtered.orderBy(desc(auditLog.id)).limit(limit)
    }
  }
}
