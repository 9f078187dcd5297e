import { getTableColumns, is, sql, SQL } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { usageRecords, type UsageRecord } from '../db/schema.js'

// Each column of the ledger read from the record's own field, as a record is serialised (and spooled); where a record
// leaves a field out or null (one spooled before the column existed), the value the table would give it. A number
// JSON cannot carry (NaN) arrives as null too: the meter's figures are finite (integer usage, exact cost arithmetic).
// From the schema only: nothing here comes from a request
const columns = Object.entries(getTableColumns(usageRecords))
const names = sql.raw(columns.map(([, column]) => `"${column.name}"`).join(', '))
const values = sql.raw(columns.map(([field, column]) => {
  // every producer sets it; the database's clock only for a record that somehow has none
  if (column.name === 'created_at') return `coalesce(r."${field}", now())`
  if (!column.hasDefault || is(column.default, SQL)) return `r."${field}"`
  if (typeof column.default !== 'number' && typeof column.default !== 'boolean') {
    throw new Error(`usage_records.${column.name}: only a number or boolean default can be written into the insert`)
  }
  return `coalesce(r."${field}", ${String(column.default)})`
}).join(', '))
const fields = sql.raw(columns.map(([field, column]) => `"${field}" ${column.getSQLType()}`).join(', '))

/**
 * Inserts a batch of usage records in one statement with one parameter: the batch as JSON, spread into rows by
 * PostgreSQL. Idempotent by request id. Building drizzle's multi-row insert cost about 150 µs of CPU a record (the
 * benchmark's profile: `is` alone was 8 % of the gateway's time under load); this costs a JSON.stringify of the
 * records as they are (renaming their fields to the columns' names first made a copy of each: the largest
 * allocation of a call, docs/benchmarks.md).
 */
export async function insertUsageRecords (db: Database, batch: UsageRecord[]): Promise<void> {
  await db.execute(sql`insert into usage_records (${names})
    select ${values} from json_to_recordset(${JSON.stringify(batch)}::json) as r(${fields})
    on conflict (request_id) do nothing`)
}
