// The ledger insert on both databases the gateway runs on: what a record leaves out or sets to null takes the
// column's default, a record replayed twice counts once, the largest exact bigint survives, unknown fields are ignored;
// and the daily rollup the database keeps from the records each insert adds.
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sql } from 'drizzle-orm'
import t, { type Test } from 'tap'
import { openDatabase, type DatabaseHandle } from '../../src/db/client.js'
import type { UsageRecord } from '../../src/db/schema.js'
import { insertUsageRecords } from '../../src/usage/ledger-insert.js'
import { TEST_DATABASE_URL } from '../helpers/app.js'

function contract (t: Test, open: () => Promise<DatabaseHandle>) {
  t.test('defaults, nulls, duplicates, extremes and strangers', async (t) => {
    const handle = await open()
    const { db } = handle
    const workspaceId = randomUUID()
    const full = {
      requestId: `full-${randomUUID()}`,
      workspaceId,
      tokenId: randomUUID(),
      keyName: 'default',
      operation: 'chat',
      model: 'it\'s "quoted"',
      pricedModel: 'mistral-small-latest',
      promptTokens: 15,
      cachedTokens: 3,
      completionTokens: 20,
      totalTokens: 35,
      pages: 0,
      audioSeconds: 0,
      characters: 0,
      connectorTokens: 0,
      serviceTier: 'priority',
      listCostMicros: Number.MAX_SAFE_INTEGER,
      billedCostMicros: 12,
      estimated: true,
      streamed: true,
      status: 200,
      upstreamStatus: 200,
      latencyMs: 7,
      createdAt: new Date('2026-12-06T10:00:00.000Z'),
      ttftMs: 3
    } satisfies UsageRecord
    // a record spooled before some columns existed, with nulls where the table has defaults, and a field it ignores
    const sparse = {
      requestId: `sparse-${randomUUID()}`,
      workspaceId,
      keyName: 'default',
      operation: 'embeddings',
      status: 200,
      latencyMs: 4,
      cachedTokens: null,
      estimated: null,
      prompt_tokens: 99,
      createdAt: '2026-12-06T11:00:00.000Z'
    } as unknown as UsageRecord
    await insertUsageRecords(db, [full, sparse, { ...full, billedCostMicros: 999 }])
    await insertUsageRecords(db, [{ ...sparse, status: 500 }])
    const result = await db.execute(sql`select * from usage_records where workspace_id = ${workspaceId}
      order by request_id`) as unknown as { rows: Array<Record<string, unknown>> }
    const rows = result.rows
    t.equal(rows.length, 2, 'one row per request id, however often it is inserted')
    const [first, second] = rows
    t.match(first, {
      request_id: full.requestId, model: full.model, prompt_tokens: 15, cached_tokens: 3, service_tier: 'priority',
      billed_cost_micros: 12, estimated: true, streamed: true, ttft_ms: 3, connector_tokens: 0
    }, 'every field as the record has it; the first insert of an id wins')
    t.equal(Number(first.list_cost_micros), Number.MAX_SAFE_INTEGER, 'the largest exact bigint')
    t.equal(new Date(first.created_at as string).toISOString(), '2026-12-06T10:00:00.000Z')
    t.match(second, {
      request_id: sparse.requestId, token_id: null, model: null, prompt_tokens: 0, cached_tokens: 0,
      completion_tokens: 0, estimated: false, streamed: false, status: 200, upstream_status: null, ttft_ms: null
    }, 'left out or null: the column\'s default (or null); a stranger field is not read')
    t.equal(new Date(second.created_at as string).toISOString(), '2026-12-06T11:00:00.000Z')
    await db.execute(sql`delete from usage_records where workspace_id = ${workspaceId}`)
    await db.execute(sql`delete from usage_daily where workspace_id = ${workspaceId}`)
    await handle.close()
  })

  t.test('the daily rollup adds each batch\'s inserted records once, by day, token, model and operation', async (t) => {
    const handle = await open()
    const { db } = handle
    const workspaceId = randomUUID()
    const tokenId = randomUUID()
    const record = (id: string, fields: Partial<UsageRecord>): UsageRecord => ({
      requestId: `${id}-${workspaceId}`,
      workspaceId,
      tokenId,
      keyName: 'default',
      operation: 'chat',
      model: 'mistral-small-2506',
      pricedModel: 'mistral-small-latest',
      status: 200,
      latencyMs: 5,
      createdAt: new Date('2026-12-06T10:00:00.000Z'),
      ...fields
    }) as UsageRecord
    const a = record('a', { promptTokens: 10, completionTokens: 5, totalTokens: 15, billedCostMicros: 100, listCostMicros: 80 })
    const b = record('b', { promptTokens: 1, totalTokens: 3, billedCostMicros: 7, estimated: true })
    const noToken = record('c', { tokenId: null, totalTokens: 2, billedCostMicros: 1 })
    const embeddings = record('d', { operation: 'embeddings', pricedModel: 'mistral-embed', totalTokens: 4 })
    const nextDay = record('e', { totalTokens: 6, createdAt: new Date('2026-12-07T00:00:01.000Z') })
    const later = record('f', { totalTokens: 30, billedCostMicros: 50 })
    const later2 = record('g', { totalTokens: 20, billedCostMicros: 5, estimated: true })
    // replays (the same request id again, whatever it says now) count nothing, within a batch or across batches
    await insertUsageRecords(db, [a, b, { ...a, totalTokens: 1_000, billedCostMicros: 1_000 }, noToken])
    await insertUsageRecords(db, [{ ...b, totalTokens: 1_000 }, embeddings, nextDay, later, later2,
      { ...noToken, estimated: true }])
    const result = await db.execute(sql`select day::text as day, token_id, model, operation, calls, estimated_calls,
        prompt_tokens, completion_tokens, total_tokens, list_cost_micros, billed_cost_micros
      from usage_daily where workspace_id = ${workspaceId} order by day, operation, token_id nulls last`) as unknown as
      { rows: Array<Record<string, unknown>> }
    const rows = result.rows.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) =>
      [k, typeof v === 'bigint' || (typeof v === 'string' && /^\d+$/.test(v)) ? Number(v) : v])))
    const day = { model: 'mistral-small-latest', prompt_tokens: 0, completion_tokens: 0, list_cost_micros: 0 }
    t.same(rows, [
      { ...day, day: '2026-12-06', token_id: tokenId, operation: 'chat', calls: 4, estimated_calls: 2, prompt_tokens: 11,
        completion_tokens: 5, total_tokens: 68, list_cost_micros: 80, billed_cost_micros: 162 },
      { ...day, day: '2026-12-06', token_id: null, operation: 'chat', calls: 1, estimated_calls: 0, total_tokens: 2,
        billed_cost_micros: 1 },
      { ...day, day: '2026-12-06', token_id: tokenId, model: 'mistral-embed', operation: 'embeddings', calls: 1,
        estimated_calls: 0, total_tokens: 4, billed_cost_micros: 0 },
      { ...day, day: '2026-12-07', token_id: tokenId, operation: 'chat', calls: 1, estimated_calls: 0, total_tokens: 6,
        billed_cost_micros: 0 }
    ], 'one row per group, the sums of the records inserted, a second batch added to the first')
    const trigger = await db.execute(sql`select action_orientation from information_schema.triggers
      where trigger_name = 'usage_records_daily'`) as unknown as { rows: Array<{ action_orientation: string }> }
    t.same(trigger.rows.map((row) => row.action_orientation), ['STATEMENT'],
      'kept once per insert statement, not once per record')
    await db.execute(sql`delete from usage_records where workspace_id = ${workspaceId}`)
    await db.execute(sql`delete from usage_daily where workspace_id = ${workspaceId}`)
    await handle.close()
  })

  t.test('a workspace whose zone the database does not know is rolled up in UTC, and holds back no one', async (t) => {
    const handle = await open()
    const { db } = handle
    const odd = randomUUID()
    const tokyo = randomUUID()
    // stored before the admin API asked the database (US/Pacific-New: a name later tzdata dropped, which ICU keeps)
    await db.execute(sql`insert into workspaces (id, slug, name, timezone) values
      (${odd}, ${`odd-${odd}`}, 'odd', 'US/Pacific-New'), (${tokyo}, ${`tokyo-${tokyo}`}, 'tokyo', 'Asia/Tokyo')`)
    const record = (workspaceId: string): UsageRecord => ({
      requestId: `zone-${randomUUID()}`, workspaceId, tokenId: null, keyName: 'default', operation: 'chat',
      model: 'm', pricedModel: 'm', status: 200, latencyMs: 1, totalTokens: 3,
      createdAt: new Date('2026-12-06T23:30:00.000Z')
    }) as UsageRecord
    await insertUsageRecords(db, [record(odd), record(tokyo)])
    const days = await db.execute(sql`select workspace_id, day::text as day, calls::int as calls from usage_daily
      where workspace_id in (${odd}, ${tokyo})`) as unknown as { rows: Array<{ workspace_id: string, day: string }> }
    t.same(Object.fromEntries(days.rows.map((row) => [row.workspace_id, row.day])),
      { [odd]: '2026-12-06', [tokyo]: '2026-12-07' }, 'UTC\'s day for the unknown zone, Tokyo\'s for Tokyo, in one insert')
    await db.execute(sql`delete from usage_records where workspace_id in (${odd}, ${tokyo})`)
    await db.execute(sql`delete from usage_daily where workspace_id in (${odd}, ${tokyo})`)
    await db.execute(sql`delete from workspaces where id in (${odd}, ${tokyo})`)
    await handle.close()
  })
}

t.test('postgresql', async (t) => {
  contract(t, async () => {
    const handle = await openDatabase({ url: TEST_DATABASE_URL, dataDir: '.' })
    await handle.migrate()
    return handle
  })
})

t.test('embedded (PGlite)', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'tramontane-ledger-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  contract(t, async () => {
    const handle = await openDatabase({ dataDir })
    await handle.migrate()
    return handle
  })
})
