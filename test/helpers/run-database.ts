import { createHash } from 'node:crypto'
import pg from 'pg'

/** The server the suite creates its databases on; its own database is only used to connect. */
export const TEST_POSTGRES_URL = process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

/**
 * The suite's database: created empty before every run (test/run/before.ts) and dropped after it, so that a run never
 * sees rows left by an earlier one (the machine's `test` database may hold anything). The name follows the checkout,
 * so two clones can run side by side; TEST_DATABASE_URL, when set, is used as it is and never dropped.
 */
export const RUN_DATABASE_NAME = `tmt_run_${createHash('sha256').update(process.cwd()).digest('hex').slice(0, 12)}`

export function runDatabaseUrl (): string {
  if (process.env.TEST_DATABASE_URL !== undefined) return process.env.TEST_DATABASE_URL
  const url = new URL(TEST_POSTGRES_URL)
  url.pathname = `/${RUN_DATABASE_NAME}`
  return url.toString()
}

async function onServer (sql: string[]): Promise<void> {
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL })
  await client.connect()
  try {
    for (const statement of sql) await client.query(statement)
  } finally {
    await client.end()
  }
}

export async function recreateRunDatabase (): Promise<void> {
  if (process.env.TEST_DATABASE_URL !== undefined) return
  await onServer([`drop database if exists ${RUN_DATABASE_NAME} with (force)`, `create database ${RUN_DATABASE_NAME}`])
}

export async function dropRunDatabase (): Promise<void> {
  if (process.env.TEST_DATABASE_URL !== undefined) return
  await onServer([`drop database if exists ${RUN_DATABASE_NAME} with (force)`])
}
