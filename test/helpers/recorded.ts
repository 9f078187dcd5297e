import { setTimeout as sleep } from 'node:timers/promises'
import { eq } from 'drizzle-orm'
import { usageRecords } from '../../src/db/schema.js'
import type { TestApp, TestWorkspace } from './app.js'

/** The workspace's ledger rows once there are `count` (or after 2 s): the recorder writes in the background. */
export async function recordsOf (s: TestApp, ws: TestWorkspace, count = 1) {
  const deadline = Date.now() + 2_000
  for (;;) {
    await s.app.usage.flush()
    const rows = await s.app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, ws.id))
    if (rows.length >= count || Date.now() > deadline) return rows
    await sleep(25)
  }
}

/** The request line logged for a request id. */
export function requestLine (s: TestApp, requestId: string): Record<string, unknown> | undefined {
  return s.logs.map((line) => JSON.parse(line)).find((line) => line.msg === 'request' && line.reqId === requestId)
}
