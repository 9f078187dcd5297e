import { Mistral } from '@mistralai/mistralai'
import { eq } from 'drizzle-orm'
import pg from 'pg'
import t, { type Test } from 'tap'
import { usageRecords, watchedJobs } from '../../src/db/schema.js'
import { calendarPeriods } from '../../src/limits/periods.js'
import { parseMoney } from '../../src/pricing/money.js'
import { buildTestApp, listen, TEST_REDIS_URL, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { until, watchOf } from '../helpers/watched-jobs.js'
import { createScratchDatabase } from '../helpers/database.js'
import { completeBatchJob } from '../helpers/fake-mistral/batch.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

// A batch job's charge to the spend caps that Redis does not take is kept in its watch (`charged_at`), not in the
// memory of the replica that billed it: any replica's watcher charges it later, after a restart too, and the charge
// counts once, however many times it is sent, and whether or not the counter was re-seeded from the ledger meanwhile.

const MODEL = 'mistral-small-latest'
const requests = [{ customId: '0', body: { messages: [{ role: 'user', content: 'a'.repeat(4_000) }] } }]

type Gateway = TestApp & { url: string }

async function setup (t: Test, overrides: Record<string, string> = {}, shared?: TestApp): Promise<Gateway> {
  const testApp = await buildTestApp(t, overrides, shared && { mistral: shared.mistral })
  return { ...testApp, url: await listen(testApp.app) }
}

const sdkFor = (url: string, ws: TestWorkspace) => new Mistral({ apiKey: ws.token, serverURL: url })

/** The job is due at the next poll, as it would be an interval after the last check. */
async function dueNow (s: TestApp, jobId: string) {
  await s.app.database.db.update(watchedJobs).set({ checkedAt: null }).where(eq(watchedJobs.jobId, jobId))
}

/** The spend the workspace's monthly cap counts in Redis, and the sum of its ledger, in micro-units. */
async function spendAndLedger (s: TestApp, ws: TestWorkspace) {
  await s.app.usage.flush()
  const limits = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)
  const records = await s.app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, ws.id))
  const ledger = records.reduce((sum, record) => sum + record.billedCostMicros, 0)
  return { settled: parseMoney(limits.json.workspace.caps.monthly.settled), ledger }
}

/** A gateway whose Redis the test can cut off; its command timeout short, so that a charge fails fast. */
async function gatewayBehindProxy (t: Test) {
  const target = new URL(TEST_REDIS_URL)
  const proxy = await startTcpProxy(Number(target.port || 6379), target.hostname)
  t.teardown(() => proxy.close())
  const proxied = new URL(TEST_REDIS_URL)
  proxied.hostname = '127.0.0.1'
  proxied.port = String(proxy.port)
  // it never polls on its own: the test says when it checks the job
  const gateway = await setup(t,
    { REDIS_URL: proxied.toString(), REDIS_COMMAND_TIMEOUT_MS: '300', BATCH_POLL_INTERVAL_MS: '600000' })
  return { gateway, proxy }
}

/**
 * A capped workspace whose spend counter is in Redis (one call made), and a job of it that ended and was billed by a
 * gateway that could not reach Redis, then stopped: the ledger has the job, the counter not.
 */
async function billedWhileRedisWasCut (t: Test) {
  const { gateway: first, proxy } = await gatewayBehindProxy(t)
  const ws = await first.createWorkspace()
  t.equal((await first.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { monthly: '100.00' } })).statusCode,
    200)
  await sdkFor(first.url, ws).chat.complete({ model: MODEL, messages: [{ role: 'user', content: 'hello' }] })
  const call = await until('the call settled', () => spendAndLedger(first, ws),
    ({ settled, ledger }) => settled > 0 && settled === ledger)
  const job = await sdkFor(first.url, ws).batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests })
  completeBatchJob(first.mistral.stores, job.id, { completionTokens: 300 })

  proxy.cut()
  await first.app.batchJobs.poll()
  const watch = await watchOf(first, job.id)
  t.equal(watch.status, 'recorded', 'the job is billed: the ledger has its record')
  t.ok(first.logs.some((line) => line.includes(job.id) && line.includes('charge')), 'its charge was not taken')
  t.equal(watch.chargedAt, null, 'the watch says the job is not charged yet')
  const [record] = await first.app.database.db.select().from(usageRecords)
    .where(eq(usageRecords.requestId, `batch:${job.id}`))
  t.ok(record.billedCostMicros > 0, 'the job has a cost')
  // the replica stops before Redis answers again: nothing it held in memory survives it
  await first.app.close()
  proxy.restore()
  return { first, ws, job, jobCost: record.billedCostMicros, callCost: call.ledger }
}

t.test('a job whose charge Redis did not take is charged by the next gateway after a restart, once', async (t) => {
  const { first, ws, job, jobCost, callCost } = await billedWhileRedisWasCut(t)
  const next = await setup(t, { BATCH_POLL_INTERVAL_MS: '100' }, first)
  const charged = await until('the job charged', () => watchOf(next, job.id), (row) => row.chargedAt !== null)
  t.equal(charged.status, 'recorded')
  t.same(await spendAndLedger(next, ws), { settled: callCost + jobCost, ledger: callCost + jobCost },
    'the spend counter holds the call and the job, once each')

  // the same charge sent again (a replica that stopped between the charge and its note of it) counts nothing more
  await next.app.database.db.update(watchedJobs).set({ chargedAt: null, checkedAt: null })
    .where(eq(watchedJobs.jobId, job.id))
  await until('the job charged again', () => watchOf(next, job.id), (row) => row.chargedAt !== null)
  t.same(await spendAndLedger(next, ws), { settled: callCost + jobCost, ledger: callCost + jobCost },
    'charged twice, counted once')
})

t.test('a job billed but not yet charged is deleted through the gateway as a billed job is', async (t) => {
  const { first, ws, job } = await billedWhileRedisWasCut(t)
  const next = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' }, first)
  const removed = await next.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${job.id}`, headers: ws.headers })
  t.equal(removed.statusCode, 200, 'the ledger has it: nothing holds its deletion back')
  t.equal(next.mistral.stores.batchJobs.has(job.id), false, 'Mistral deleted it')
  // the charge needs the ledger's record only, not the job
  await dueNow(next, job.id)
  await next.app.batchJobs.poll()
  t.not((await watchOf(next, job.id)).chargedAt, null, 'charged all the same')
  const { settled, ledger } = await spendAndLedger(next, ws)
  t.equal(settled, ledger, 'the counter holds the job once')
})

t.test('a spend counter re-seeded from the ledger before a job\'s charge counts the job once', async (t) => {
  const { first, ws, job, jobCost, callCost } = await billedWhileRedisWasCut(t)
  const next = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' }, first)
  // the counter is lost (evicted), and re-seeded from the ledger by the next capped call, which holds the job
  const month = calendarPeriods(Date.now(), 'UTC').month.id
  t.equal(await next.app.redis!.client.del(`tmt:{ws:${ws.id}}:w:spend:m:${month}`), 1, 'the counter is gone')
  await sdkFor(next.url, ws).chat.complete({ model: MODEL, messages: [{ role: 'user', content: 'hello' }] })
  await until('the second call settled', () => spendAndLedger(next, ws),
    ({ ledger }) => ledger === 2 * callCost + jobCost)
  await dueNow(next, job.id)
  await next.app.batchJobs.poll()
  t.not((await watchOf(next, job.id)).chargedAt, null, 'the job is charged')
  t.same(await spendAndLedger(next, ws), { settled: 2 * callCost + jobCost, ledger: 2 * callCost + jobCost },
    'the seed left the job to its charge: counted once')
})

/** What the gateway's metrics counted of the workspace's batch jobs: requests, and spend in micro-units. */
async function batchMetrics (s: TestApp, ws: TestWorkspace) {
  const sum = async (name: string) => {
    const { values } = await s.app.metrics.registry.getSingleMetric(name)!.get()
    return values.filter(({ labels }) => labels.workspace === ws.slug && labels.operation === 'batch' &&
      labels.model !== 'other').reduce((total, { value }) => total + value, 0)
  }
  return { requests: await sum('tramontane_requests_total'), spend: await sum('tramontane_spend_micros_total') }
}

/**
 * A gateway on a database of its own, where the test makes PostgreSQL refuse one statement (a trigger) as a failover
 * would; a capped workspace with a call settled, and a job of it that ended at Mistral.
 */
async function jobOnScratchDatabase (t: Test) {
  const databaseUrl = await createScratchDatabase(t)
  const s = await setup(t, { DATABASE_URL: databaseUrl, BATCH_POLL_INTERVAL_MS: '600000' })
  const sql = new pg.Client({ connectionString: databaseUrl })
  await sql.connect()
  t.teardown(() => sql.end())
  await sql.query(`create function refuse_row () returns trigger language plpgsql as $$
    begin raise exception 'the test refuses this statement'; end $$`)
  const ws = await s.createWorkspace({ keys: ['default', 'batch'] })
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { monthly: '100.00' } })).statusCode, 200)
  await sdkFor(s.url, ws).chat.complete({ model: MODEL, messages: [{ role: 'user', content: 'hello' }] })
  const call = await until('the call settled', () => spendAndLedger(s, ws),
    ({ settled, ledger }) => settled > 0 && settled === ledger)
  // on a key of its own, which the operator may remove
  const created = await s.app.inject({
    method: 'POST',
    url: '/v1/batch/jobs',
    headers: { ...ws.headers, 'x-tramontane-key': 'batch' },
    payload: { endpoint: '/v1/chat/completions', model: MODEL, requests: [{ custom_id: '0', body: requests[0].body }] }
  })
  const jobId = String(created.json().id)
  completeBatchJob(s.mistral.stores, jobId, { completionTokens: 300 })
  return { s, sql, ws, jobId, callCost: call.ledger }
}

const billedLines = (s: TestApp, jobId: string) =>
  s.logs.filter((line) => line.includes('"batch job billed"') && line.includes(jobId)).length

t.test('a job billed whose charge PostgreSQL does not let the watch note is in the metrics at once, once, and ' +
  'charged once', async (t) => {
  const { s, sql, ws, jobId, callCost } = await jobOnScratchDatabase(t)
  await sql.query(`create trigger refuse_charge before update on watched_jobs for each row
    when (new.job_id = '${jobId}' and new.charged_at is not null) execute function refuse_row()`)
  await s.app.batchJobs.poll()
  const watch = await watchOf(s, jobId)
  t.match(watch, { status: 'recorded', chargedAt: null }, 'billed; its charge not noted')
  const [record] = await s.app.database.db.select().from(usageRecords)
    .where(eq(usageRecords.requestId, `batch:${jobId}`))
  const total = callCost + record.billedCostMicros
  t.same(await batchMetrics(s, ws), { requests: 1, spend: record.billedCostMicros }, 'the metrics count the job')
  t.equal(billedLines(s, jobId), 1, 'its billing is logged')
  t.same(await spendAndLedger(s, ws), { settled: total, ledger: total }, 'the spend counter took the charge')

  // PostgreSQL lets the note through again: the next poll sends the charge again, which counts nothing more
  await sql.query('drop trigger refuse_charge on watched_jobs')
  await dueNow(s, jobId)
  await s.app.batchJobs.poll()
  t.not((await watchOf(s, jobId)).chargedAt, null, 'the charge is noted')
  t.same(await batchMetrics(s, ws), { requests: 1, spend: record.billedCostMicros }, 'the metrics counted it once')
  t.equal(billedLines(s, jobId), 1, 'billed once')
  t.same(await spendAndLedger(s, ws), { settled: total, ledger: total }, 'the spend counter holds it once')
})

t.test('a job whose record reached the ledger after its check, and which then could not be read, is billed from ' +
  'that record and charged once', async (t) => {
  const { s, sql, ws, jobId, callCost } = await jobOnScratchDatabase(t)
  // the record does not reach the ledger while the check runs: it waits in the recorder, and the job stays pending
  await sql.query(`create trigger refuse_record before insert on usage_records for each row
    when (new.request_id = 'batch:${jobId}') execute function refuse_row()`)
  await s.app.batchJobs.poll()
  t.equal((await watchOf(s, jobId)).status, 'pending', 'not billed: its record is not in the ledger')
  await sql.query('drop trigger refuse_record on usage_records')
  const [record] = await until('the record in the ledger', () =>
    s.app.database.db.select().from(usageRecords).where(eq(usageRecords.requestId, `batch:${jobId}`)),
  (rows) => rows.length === 1)
  t.equal((await watchOf(s, jobId)).status, 'pending', 'the job is still pending')

  // the operator removes the key the job was made with, and the client deletes the job: no check can read it now
  t.equal((await s.admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/batch`)).statusCode, 204)
  const removed = await s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${jobId}`, headers: ws.headers })
  t.equal(removed.statusCode, 200, 'the job goes')
  const watch = await watchOf(s, jobId)
  t.equal(watch.status, 'recorded', 'billed: the ledger holds its record')
  t.not(watch.chargedAt, null, 'and charged')
  const total = callCost + record.billedCostMicros
  t.same(await spendAndLedger(s, ws), { settled: total, ledger: total }, 'the spend counter holds the job once')
  t.same(await batchMetrics(s, ws), { requests: 1, spend: record.billedCostMicros }, 'the metrics count it once')
})
