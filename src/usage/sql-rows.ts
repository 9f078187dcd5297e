import type { SQL } from 'drizzle-orm'
import type { Database } from '../db/client.js'

/** The rows of a raw query: node-postgres and PGlite both answer `{ rows }`, which drizzle leaves untyped. */
export async function selectRows<T> (db: Database, query: SQL): Promise<T[]> {
  return ((await db.execute(query)) as unknown as { rows: T[] }).rows
}
