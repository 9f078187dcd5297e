import { setTimeout as sleep } from 'node:timers/promises'
import { Mistral } from '@mistralai/mistralai'
import { eq } from 'drizzle-orm'
import pg from 'pg'
import t, { type Test } from 'tap'
import { usageRecords, watchedJobs } from '../../src/db/schema.js'
import { formatMoney, parseMoney } from '../../src/pricing/money.js'
import { billBeforeDeletion } from '../../src/proxy/batch-hook.js'
import { buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { until, watchOf } from '../helpers/watched-jobs.js'
import { createScratchDatabase } from '../helpers/database.js'
import { countTokens } from '../helpers/fake-mistral.js'
import { completeBatchJob } from '../helpers/fake-mistral/batch.js'
import { proxiedDatabase } from '../helpers/tcp-proxy.js'

// Issue #5: a batch job created through the gateway is billed once, when it ends, from its output, at the batch
// discount (MISTRAL-NOTES §2.6, §4), however many gateways watch it.

const MODEL = 'mistral-small-latest'
// USD per million tokens, input and output (src/pricing/default-prices.ts)
const SMALL_PRICE = { input: 150_000n, output: 600_000n } // mistral-small-2603
const CHEAP_PRICE = { input: 100_000n, output: 100_000n } // ministral-3b-2512
const DEAR_PRICE = { input: 500_000n, output: 1_500_000n } // mistral-large-2512
const PROMPTS = ['a'.repeat(4_000), 'b'.repeat(2_000), 'c'.repeat(1_000)]
const WORDS = 300

const requests = (prompts = PROMPTS) => prompts.map((content, i) => ({
  customId: String(i), body: { messages: [{ role: 'user', content }] }
}))

/** Half the list price, then the markup, rounded once, half up: what the ledger must say, worked out by hand. */
function batchCost (promptTokens: number, completionTokens: number, markupBps: number, price = SMALL_PRICE) {
  const amount = BigInt(promptTokens) * price.input + BigInt(completionTokens) * price.output
  const round = (numerator: bigint, denominator: bigint) => Number((numerator + denominator / 2n) / denominator)
  return {
    list: round(amount * 5_000n, 1_000_000n * 10_000n),
    billed: round(amount * 5_000n * BigInt(10_000 + markupBps), 1_000_000n * 10_000n * 10_000n)
  }
}

// a database of this file's own: its gateways poll every 50 ms, and every replica's watcher checks each due job of its
// database, with its own fake Mistral, which knows nothing of another file's jobs
const fileDatabaseUrl = await createScratchDatabase(t)

async function setup (t: Test, overrides: Record<string, string> = {}, shared?: TestApp) {
  const testApp = await buildTestApp(t, { DATABASE_URL: fileDatabaseUrl, ...overrides },
    shared && { mistral: shared.mistral })
  const url = await listen(testApp.app)
  return { ...testApp, url }
}

const sdkFor = (url: string, ws: TestWorkspace) => new Mistral({ apiKey: ws.token, serverURL: url })

async function recordsOf (s: TestApp, workspaceId: string) {
  return s.app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, workspaceId))
}

const jobReads = (s: TestApp, jobId: string) => s.mistral.requestsTo(`/v1/batch/jobs/${jobId}`).length

/**
 * What one gateway's metrics say of a workspace's batch jobs of one priced model. The calls to `/v1/batch/*` count
 * under the same operation with model `other` (they name none), and have durations like any call.
 */
async function batchMetrics (s: TestApp, workspace: string, model = 'mistral-small-2603') {
  const samples = async (name: string) => {
    const { values } = await s.app.metrics.registry.getSingleMetric(name)!.get()
    return values.filter(({ labels }) => labels.workspace === workspace && labels.operation === 'batch' &&
      labels.model === model)
  }
  const sum = (values: Array<{ value: number }>) => values.reduce((total, { value }) => total + value, 0)
  const tokens = await samples('tramontane_tokens_total')
  const requests = await samples('tramontane_requests_total')
  // a job's hours would skew the latency histograms: none has a series of the job's model
  let histograms = 0
  for (const name of ['gen_ai_client_operation_duration_seconds', 'gen_ai_server_request_duration_seconds',
    'gen_ai_server_time_to_first_token_seconds', 'gen_ai_client_token_usage']) {
    const { values } = await s.app.metrics.registry.getSingleMetric(name)!.get()
    histograms += values.filter(({ labels }) => labels.gen_ai_operation_name === 'batch' &&
      labels.gen_ai_request_model === model).length
  }
  return {
    requests: sum(requests),
    statuses: [...new Set(requests.map(({ labels }) => labels.status_class))],
    input: sum(tokens.filter(({ labels }) => labels.type === 'input')),
    output: sum(tokens.filter(({ labels }) => labels.type === 'output')),
    spend: sum(await samples('tramontane_spend_micros_total')),
    histograms
  }
}

t.test('a job made with the Mistral SDK is pending, then billed once it ends: half price, plus markup', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '100' })
  const ws = await s.createWorkspace()
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { markupBps: 2_000 })).statusCode, 200)
  const sdk = sdkFor(s.url, ws)

  const job = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
  t.equal(job.status, 'QUEUED', 'the client gets Mistral\'s job')
  t.match(await watchOf(s, job.id), {
    workspaceId: ws.id, tokenId: ws.tokenId, keyName: 'default', endpoint: '/v1/chat/completions', model: MODEL,
    status: 'pending'
  })
  // the poll reads the running job and leaves it pending
  await until('a poll of the queued job', async () => jobReads(s, job.id), (reads) => reads >= 2)
  t.equal((await watchOf(s, job.id)).status, 'pending')
  t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed while the job runs')

  const ended = completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  const watched = await until('the job recorded', () => watchOf(s, job.id), (row) => row.status === 'recorded')
  t.equal(watched.upstreamStatus, 'SUCCESS')
  t.ok(watched.checkedAt!.getTime() <= Date.now() + 1_000, 'the check let go of the job when it ended')
  const records = await recordsOf(s, ws.id)
  t.equal(records.length, 1, 'one usage record for the job')
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  const completionTokens = WORDS * PROMPTS.length
  const { list, billed } = batchCost(promptTokens, completionTokens, 2_000)
  t.match(records[0], {
    requestId: `batch:${job.id}`,
    workspaceId: ws.id,
    tokenId: ws.tokenId,
    keyName: 'default',
    operation: 'batch',
    model: MODEL,
    pricedModel: 'mistral-small-2603',
    promptTokens,
    completionTokens,
    totalTokens: promptTokens + completionTokens,
    listCostMicros: list,
    billedCostMicros: billed,
    estimated: false,
    streamed: false
  })
  t.equal(records[0].createdAt.getTime(), (ended.completed_at as number) * 1000, 'billed when the job completed')
  t.ok(list > 0 && billed > list, 'priced, with the markup on top')
  // the metrics count the job as the ledger does: once, at its priced model
  const counted = { requests: 1, statuses: ['2xx'], input: promptTokens, output: completionTokens, spend: billed,
    histograms: 0 }
  t.same(await until('the job counted', () => batchMetrics(s, ws.slug), (seen) => seen.requests > 0), counted,
    'the counters equal the usage record, and no histogram has the job')

  // a recorded job is not read again
  const reads = jobReads(s, job.id)
  await sleep(500)
  t.equal(jobReads(s, job.id), reads, 'no more reads of a billed job')
  t.equal((await recordsOf(s, ws.id)).length, 1, 'still one record')
  t.equal((await sdk.batch.jobs.get({ jobId: job.id })).status, 'SUCCESS', 'the client reads the ended job')
  t.equal((await recordsOf(s, ws.id)).length, 1, 'and a read bills nothing more')
  t.same(await batchMetrics(s, ws.slug), counted, 'nor counts anything more')
})

t.test('a client reading its ended job bills it at once, from the inline results when there is no output file',
  async (t) => {
    // the poll would not come before the end of the test: only the read can bill the job
    const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
    const ws = await s.createWorkspace()
    const sdk = sdkFor(s.url, ws)
    const job = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
    completeBatchJob(s.mistral.stores, job.id, { outputFile: false, completionTokens: WORDS })
    const read = await sdk.batch.jobs.get({ jobId: job.id })
    t.equal(read.status, 'SUCCESS')
    t.equal(read.outputFile, null, 'the results are only inline')
    await until('the job recorded', () => watchOf(s, job.id), (row) => row.status === 'recorded', 5_000)
    const [record] = await recordsOf(s, ws.id)
    const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
    t.match(record, { requestId: `batch:${job.id}`, promptTokens, completionTokens: WORDS * PROMPTS.length })
    t.equal(record.billedCostMicros, batchCost(promptTokens, WORDS * PROMPTS.length, 0).billed)
    t.ok(s.mistral.requestsTo(`/v1/batch/jobs/${job.id}`).some((request) => request.path.endsWith('?inline=true')),
      'the gateway asked for the results inline')
  })

t.test('two gateways checking the same jobs write one record each and charge the spend cap once', async (t) => {
  const one = await setup(t, { BATCH_POLL_INTERVAL_MS: '50' })
  const two = await setup(t, { BATCH_POLL_INTERVAL_MS: '50' }, one)
  const ws = await one.createWorkspace()
  const capped = await one.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { monthly: '100.00' } })
  t.equal(capped.statusCode, 200)
  const sdk = sdkFor(one.url, ws)
  // a capped call first, so that the spend counter is in Redis when the jobs are charged
  await sdkFor(two.url, ws).chat.complete({ model: MODEL, messages: [{ role: 'user', content: 'hello' }] })
  const jobs = await Promise.all(Array.from({ length: 6 }, (_, i) =>
    sdk.batch.jobs.create({
      endpoint: '/v1/chat/completions', model: MODEL, requests: requests(PROMPTS.slice(0, 1 + (i % 3)))
    })))
  for (const job of jobs) completeBatchJob(one.mistral.stores, job.id, { completionTokens: WORDS })
  // on top of both timers: polls started together, and reads of every job through both gateways at once, each of
  // which checks the job right away
  const readers = [sdk, sdkFor(two.url, ws)]
  await Promise.all([
    one.app.batchJobs.poll(), two.app.batchJobs.poll(),
    ...jobs.flatMap((job) => [...readers, ...readers].map((reader) => reader.batch.jobs.get({ jobId: job.id })))
  ])
  await until('every job recorded', () => Promise.all(jobs.map((job) => watchOf(one, job.id))),
    (rows) => rows.every((row) => row.status === 'recorded'))
  const downloads = one.mistral.requestsTo('/v1/files/').length
  t.comment(`${downloads} output downloads for ${jobs.length} jobs`)

  // a check that outlives its lease: the other gateway checks the same job meanwhile, and both write its record
  const slow = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
  jobs.push(slow)
  const ended = completeBatchJob(one.mistral.stores, slow.id, { completionTokens: WORDS })
  const content = `/v1/files/${String(ended.output_file)}/content`
  one.mistral.enqueueDelay(3_000, content)
  const first = one.app.batchJobs.seen(ws.id, ended, 'default')
  await until('the first check reading the output', async () => one.mistral.requestsTo(content).length, (n) => n === 1)
  await one.app.database.db.update(watchedJobs).set({ checkedAt: null }).where(eq(watchedJobs.jobId, slow.id))
  // the second check: this read, or a poll of either gateway (every 50 ms here) if one claims the job first
  await two.app.batchJobs.seen(ws.id, ended, 'default')
  const second = await until('the second check', () => watchOf(one, slow.id), (row) => row.status === 'recorded')
  t.equal(second.status, 'recorded', 'the second check recorded the job while the first was still reading')
  await first
  t.equal(one.mistral.requestsTo(content).length, 2, 'both gateways read the output')
  await sleep(300)
  await Promise.all([one.app.usage.flush(), two.app.usage.flush()])
  const records = await recordsOf(one, ws.id)
  const batches = records.filter((record) => record.operation === 'batch')
  t.same(batches.map((record) => record.requestId).sort(), jobs.map((job) => `batch:${job.id}`).sort(),
    'one record a job')
  for (const record of batches) {
    const job = jobs.find((candidate) => record.requestId === `batch:${candidate.id}`)!
    const prompts = PROMPTS.slice(0, job.totalRequests)
    const promptTokens = prompts.reduce((sum, text) => sum + countTokens(text), 0)
    t.equal(record.billedCostMicros, batchCost(promptTokens, WORDS * prompts.length, 0).billed, `${job.id} priced`)
  }
  const ledger = records.reduce((sum, record) => sum + record.billedCostMicros, 0)
  const limits = await one.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)
  t.equal(parseMoney(limits.json.workspace.caps.monthly.settled), ledger, 'the spend counter learnt each job once')

  // each job is counted by the gateway that recorded it, and by that one only
  const counted = () => Promise.all([batchMetrics(one, ws.slug), batchMetrics(two, ws.slug)])
  const both = await until('every job counted', counted, (seen) => seen[0].requests + seen[1].requests >= jobs.length)
  t.comment(`jobs counted: ${both[0].requests} by one gateway, ${both[1].requests} by the other`)
  const sum = (read: (seen: Awaited<ReturnType<typeof batchMetrics>>) => number) => read(both[0]) + read(both[1])
  t.same([sum((seen) => seen.requests), sum((seen) => seen.spend), sum((seen) => seen.input),
    sum((seen) => seen.output)],
    [jobs.length, ...(['billedCostMicros', 'promptTokens', 'completionTokens'] as const)
      .map((column) => batches.reduce((total, record) => total + record[column], 0))],
    'the two gateways\' batch counters add up to the batch records')
})

t.test('a job is created only while every spend cap has something left; Mistral never hears of a refused one',
  async (t) => {
    const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
    const ws = await s.createWorkspace()
    const sdk = sdkFor(s.url, ws)
    const create = () => sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
    const creates = () => s.mistral.requestsTo('/v1/batch/jobs').filter((request) => request.method === 'POST').length
    const cap = async (scope: 'workspace' | 'token', micros: number) => {
      const url = `/admin/v1/workspaces/${ws.slug}${scope === 'token' ? `/tokens/${ws.tokenId}` : ''}`
      t.equal((await s.admin('PATCH', url, { caps: { monthly: formatMoney(micros) } })).statusCode, 200)
    }
    /** the refusal the Mistral SDK throws, as it reads it */
    async function refusal (why: string) {
      const err = await create().then(() => undefined, (failure: unknown) => failure) as
        { statusCode: number, body: string, headers: Headers } | undefined
      if (!err) return t.fail(`${why}: the job was created`)
      t.equal(err.statusCode, 429, why)
      t.equal(err.headers.get('x-should-retry'), 'false')
      return JSON.parse(err.body)
    }

    // one micro-unit left is something left: the job starts, and costs what it costs when it ends
    await cap('workspace', 1)
    const job = await create()
    t.equal(job.status, 'QUEUED')
    completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
    await sdk.batch.jobs.get({ jobId: job.id })
    await until('the job recorded', () => watchOf(s, job.id), (row) => row.status === 'recorded', 5_000)
    const [{ billedCostMicros: spent }] = await recordsOf(s, ws.id)
    t.ok(spent > 1, `the job cost ${spent}, past the cap: charged all the same`)
    const limits = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)
    t.equal(parseMoney(limits.json.workspace.caps.monthly.settled), spent, 'the spend counter has the job')

    for (const [micros, where] of [[spent - 1, 'past the cap'], [spent, 'exactly at the cap']] as const) {
      await cap('workspace', micros)
      t.match(await refusal(where), {
        object: 'error',
        type: 'insufficient_quota',
        code: 'monthly_spend_cap_reached',
        message: `The workspace's monthly spend cap of ${formatMoney(micros)} is reached`,
        error: { type: 'insufficient_quota', code: 'monthly_spend_cap_reached' }
      }, `${where}: the same refusal as any capped call`)
    }
    t.equal(creates(), 1, 'Mistral never saw the refused jobs')

    await cap('workspace', spent + 1)
    const next = await create()
    t.equal(next.status, 'QUEUED', 'one micro-unit under the cap: created')
    t.equal((await watchOf(s, next.id)).status, 'pending', 'and watched')

    // the token's own cap holds too
    await cap('token', spent)
    t.match(await refusal('the token at its cap'), {
      type: 'insufficient_quota', message: `The token's monthly spend cap of ${formatMoney(spent)} is reached`
    })
    t.equal(creates(), 2, 'Mistral saw the two jobs created, and only them')
    const watched = await s.app.database.db.select().from(watchedJobs).where(eq(watchedJobs.workspaceId, ws.id))
    t.same(watched.map((row) => row.jobId).sort(), [job.id, next.id].sort(), 'no refused job is watched')
  })

t.test('a failed job, a cancelled job and a timed-out one', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '50' })
  const ws = await s.createWorkspace()
  const sdk = sdkFor(s.url, ws)
  const create = () => sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
  const [failed, cancelled, timedOut] = [await create(), await create(), await create()]

  completeBatchJob(s.mistral.stores, failed.id, { status: 'FAILED' })
  t.equal((await sdk.batch.jobs.cancel({ jobId: cancelled.id })).status, 'CANCELLATION_REQUESTED')
  await until('a poll of the job being cancelled', async () => jobReads(s, cancelled.id), (reads) => reads >= 2)
  t.equal((await watchOf(s, cancelled.id)).status, 'pending', 'a cancellation under way is not an end')
  // Mistral bills what the job answered before it stopped
  completeBatchJob(s.mistral.stores, cancelled.id, { status: 'CANCELLED', succeeded: 1, completionTokens: WORDS })
  completeBatchJob(s.mistral.stores, timedOut.id, { status: 'TIMEOUT_EXCEEDED', succeeded: 0 })

  const ends = () => Promise.all([failed, cancelled, timedOut].map((job) => watchOf(s, job.id)))
  const rows = await until('every job ended', ends,
    (ended) => ended.every((row) => row.status !== 'pending'))
  t.same(rows.map((row) => [row.status, row.upstreamStatus]),
    [['failed', 'FAILED'], ['recorded', 'CANCELLED'], ['failed', 'TIMEOUT_EXCEEDED']])
  const records = await recordsOf(s, ws.id)
  t.same(records.map((record) => record.requestId), [`batch:${cancelled.id}`], 'only the job that answered is billed')
  t.match(records[0], { promptTokens: countTokens(PROMPTS[0]), completionTokens: WORDS })
})

t.test('a job of another workspace is not billed to this one', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const owner = await s.createWorkspace()
  const other = await s.createWorkspace()
  const job = await sdkFor(s.url, owner).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  completeBatchJob(s.mistral.stores, job.id)
  // the fake keeps one organisation for every key: the other workspace can read the job, and must bill nothing
  t.equal((await sdkFor(s.url, other).batch.jobs.get({ jobId: job.id })).status, 'SUCCESS')
  await sleep(500)
  t.equal((await watchOf(s, job.id)).status, 'pending', 'the other workspace\'s read did not end the watch')
  t.equal((await recordsOf(s, other.id)).length, 0, 'nothing billed to the other workspace')
  await sdkFor(s.url, owner).batch.jobs.get({ jobId: job.id })
  await until('the job recorded', () => watchOf(s, job.id), (row) => row.status === 'recorded', 5_000)
  t.same((await recordsOf(s, owner.id)).map((record) => record.requestId), [`batch:${job.id}`], 'billed to its owner')
  t.equal((await recordsOf(s, other.id)).length, 0)
  t.ok(s.mistral.received.filter((request) => request.path.startsWith(`/v1/files/`))
    .every((request) => request.apiKey === owner.mistralKey), 'the output was read with the owner\'s key only')
})

t.test('a job created before a restart is billed by the next gateway', async (t) => {
  // the first gateway never polls during the test: it stands for a replica that stopped
  const first = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await first.createWorkspace()
  const job = await sdkFor(first.url, ws).batch.jobs.create({
    endpoint: '/v1/embeddings', model: 'mistral-embed', requests: [{ customId: '0', body: { input: 'x'.repeat(400) } }]
  })
  await first.app.close()
  completeBatchJob(first.mistral.stores, job.id)
  const next = await setup(t, { BATCH_POLL_INTERVAL_MS: '50' }, first)
  await until('the job recorded', () => watchOf(next, job.id), (row) => row.status === 'recorded')
  const [record] = await recordsOf(next, ws.id)
  t.match(record, { requestId: `batch:${job.id}`, operation: 'batch', model: 'mistral-embed', promptTokens: 100 })
  t.ok(record.billedCostMicros > 0, 'priced at the embeddings price')
})

/** The message of each log line the app wrote at level error (pino: 50), with the fields it logged. */
const errorLogs = (s: TestApp) => s.logs.flatMap((line) => line.split('\n')).filter((line) => line !== '')
  .map((line) => JSON.parse(line) as { level: number, msg: string, [field: string]: unknown })
  .filter((entry) => entry.level === 50)

/** The spend the workspace's monthly cap counts in Redis, and the sum of its ledger, in micro-units. */
async function spendAndLedger (s: TestApp, ws: TestWorkspace) {
  await s.app.usage.flush()
  const limits = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)
  const ledger = (await recordsOf(s, ws.id)).reduce((sum, record) => sum + record.billedCostMicros, 0)
  return { settled: parseMoney(limits.json.workspace.caps.monthly.settled), ledger }
}

/** A capped workspace that has made one call: its spend counter is in Redis before any job is charged. */
async function cappedWorkspace (t: Test, s: TestApp & { url: string }) {
  const ws = await s.createWorkspace()
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { monthly: '100.00' } })).statusCode, 200)
  await sdkFor(s.url, ws).chat.complete({ model: MODEL, messages: [{ role: 'user', content: 'hello' }] })
  await until('the call settled', () => spendAndLedger(s, ws),
    ({ settled, ledger }) => settled > 0 && settled === ledger)
  return ws
}

t.test('a job whose lines name their own models bills each model\'s answers at its own price', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { markupBps: 2_000 })).statusCode, 200)
  const sdk = sdkFor(s.url, ws)
  // no model for the job: each line runs on the one its body names, a cheap one first, a dear one on the others
  const lines = PROMPTS.map((content, i) => ({
    customId: String(i),
    body: { model: i === 0 ? 'ministral-3b-latest' : 'mistral-large-latest', messages: [{ role: 'user', content }] }
  }))
  const job = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', requests: lines })
  t.equal(job.model, null, 'the job names no model')
  completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  await sdk.batch.jobs.get({ jobId: job.id })
  await until('the job recorded', () => watchOf(s, job.id), (row) => row.status === 'recorded', 5_000)

  const [record] = await recordsOf(s, ws.id)
  const [first, ...rest] = PROMPTS.map(countTokens)
  const cheap = batchCost(first, WORDS, 2_000, CHEAP_PRICE)
  const dear = batchCost(rest[0] + rest[1], 2 * WORDS, 2_000, DEAR_PRICE)
  t.match(record, {
    requestId: `batch:${job.id}`, model: null, pricedModel: null, promptTokens: first + rest[0] + rest[1],
    completionTokens: WORDS * PROMPTS.length
  }, 'one record for the job, which names no single priced model')
  t.equal(record.listCostMicros, cheap.list + dear.list, 'each model\'s answers at its own list price')
  t.equal(record.billedCostMicros, cheap.billed + dear.billed, 'and with the markup')
  const allCheap = batchCost(first + rest[0] + rest[1], WORDS * PROMPTS.length, 2_000, CHEAP_PRICE).billed
  t.ok(record.billedCostMicros > 2 * allCheap, 'far more than the whole job at the first line\'s price')
})

t.test('a job of a workspace deleted while it runs is billed to its ledger, which its id still reads', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '100' })
  const ws = await cappedWorkspace(t, s)
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  t.equal((await s.admin('DELETE', `/admin/v1/workspaces/${ws.slug}`)).statusCode, 204)
  const redisKeys = () => s.app.redis!.client.keys(`tmt:{ws:${ws.id}}*`)
  t.same(await redisKeys(), [], 'its state in Redis went with it')

  const ended = completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  const watched = await until('the job ended', () => watchOf(s, job.id), (row) => row.status !== 'pending')
  t.equal(watched.status, 'recorded', 'billed')
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  const billed = batchCost(promptTokens, WORDS * PROMPTS.length, 0).billed
  const month = new Date((ended.completed_at as number) * 1000).toISOString().slice(0, 7)
  const statement = await s.admin('GET', `/admin/v1/workspaces/${ws.id}/statements/${month}`)
  t.equal(statement.statusCode, 200)
  t.match(statement.json.lines.find((line: { operation: string }) => line.operation === 'batch'),
    { model: 'mistral-small-2603', calls: 1, billedCostMicros: billed }, 'the statement read by id shows the job')
  t.same(await redisKeys(), [], 'and billing it brought none of its spend counters back')
})

t.test('a job whose output file the client deleted is billed from its results inline', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const sdk = sdkFor(s.url, ws)
  const job = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
  const ended = completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  s.mistral.stores.files.delete(String(ended.output_file))
  await sdk.batch.jobs.get({ jobId: job.id })
  const watched = await until('the job ended', () => watchOf(s, job.id), (row) => row.status !== 'pending', 5_000)
  t.equal(watched.status, 'recorded')
  const [record] = await recordsOf(s, ws.id)
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  t.match(record, { requestId: `batch:${job.id}`, promptTokens, completionTokens: WORDS * PROMPTS.length })
  t.equal(record.billedCostMicros, batchCost(promptTokens, WORDS * PROMPTS.length, 0).billed)
  t.same(s.mistral.requestsTo(`/v1/files/${String(ended.output_file)}/content`).length, 1, 'the file was tried')
  t.ok(s.mistral.requestsTo(`/v1/batch/jobs/${job.id}`).some((request) => request.path.endsWith('?inline=true')),
    'then the results inline')
})

t.test('a job whose output is gone, file and results inline, ends OUTPUT_GONE with an error logged', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const sdk = sdkFor(s.url, ws)
  const create = () => sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
  const answers: Array<[string, (ended: Record<string, unknown>) => void]> = [
    ['the job read inline is not found', (ended) => {
      s.mistral.enqueueError(404, { detail: 'Batch job not found' }, {}, `/v1/batch/jobs/${String(ended.id)}`)
    }],
    ['the job read inline has no results', (ended) => {
      s.mistral.enqueue((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ ...ended, outputs: [] }))
      }, `/v1/batch/jobs/${String(ended.id)}`)
    }]
  ]
  for (const [how, answer] of answers) {
    const job = await create()
    const ended = completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
    // it completed two hours ago: past the hour its output may be missing before it is taken as deleted
    ended.completed_at = (ended.completed_at as number) - 2 * 3600
    s.mistral.stores.files.delete(String(ended.output_file))
    answer(ended)
    // the job as a client's read showed it: the next read of it upstream is the watcher's, inline
    await s.app.batchJobs.seen(ws.id, ended, 'default')
    t.match(await watchOf(s, job.id), { status: 'failed', upstreamStatus: 'OUTPUT_GONE' }, how)
    t.ok(s.mistral.requestsTo(`/v1/batch/jobs/${job.id}`).some((request) => request.path.endsWith('?inline=true')),
      `${how}: it was asked for`)
    t.match(errorLogs(s).filter((entry) => entry.job === job.id), [{ workspaceId: ws.id, msg: /will not be billed/ }],
      `${how}: logged as an error, with the job and its workspace`)
  }
  t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed')
  t.notOk(s.logs.some((line) => line.includes(ws.mistralKey)), 'no secret in the logs')
})

t.test('an output file not found right after its job ended leaves the job pending, to be billed later', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  const ended = completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  const content = `/v1/files/${String(ended.output_file)}/content`
  // the file is not served yet, and the results inline hold nothing yet either
  s.mistral.enqueueError(404, { detail: 'File not found' }, {}, content)
  s.mistral.enqueue((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ ...ended, outputs: [] }))
  }, `/v1/batch/jobs/${job.id}`)
  await s.app.batchJobs.seen(ws.id, ended, 'default')
  t.equal((await watchOf(s, job.id)).status, 'pending', 'not given up on')
  t.equal(errorLogs(s).filter((entry) => entry.job === job.id).length, 0, 'no error logged')
  t.equal((await recordsOf(s, ws.id)).length, 0)

  // the next check finds the file
  await s.app.batchJobs.seen(ws.id, ended, 'default')
  t.equal((await watchOf(s, job.id)).status, 'recorded')
  t.equal(s.mistral.requestsTo(content).length, 2, 'the file was read at both checks')
  const [record] = await recordsOf(s, ws.id)
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  t.equal(record.billedCostMicros, batchCost(promptTokens, WORDS * PROMPTS.length, 0).billed, 'billed in full')
})

t.test('a job shown without completed_at is given up an hour after its output was first found missing', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  const ended = completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  ended.completed_at = null
  s.mistral.stores.files.delete(String(ended.output_file))
  const check = async () => {
    s.mistral.enqueue((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ ...ended, outputs: [] }))
    }, `/v1/batch/jobs/${job.id}`)
    await s.app.batchJobs.seen(ws.id, ended, 'default')
    return watchOf(s, job.id)
  }
  const first = await check()
  t.equal(first.status, 'pending')
  t.ok(first.completedAt, 'the watch keeps when its output was first found missing')
  const hourAgo = new Date(first.completedAt!.getTime() - 3_600_000)
  await s.app.database.db.update(watchedJobs).set({ completedAt: hourAgo }).where(eq(watchedJobs.jobId, job.id))
  t.match(await check(), { status: 'failed', upstreamStatus: 'OUTPUT_GONE' }, 'an hour later')
  t.match(errorLogs(s).filter((entry) => entry.job === job.id), [{ msg: /will not be billed/ }])
})

t.test('a job deleted upstream before it was read is logged as an error, its watch failed', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  s.mistral.stores.batchJobs.delete(job.id)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, job.id), { status: 'failed', upstreamStatus: 'NOT_FOUND' })
  t.match(errorLogs(s).filter((entry) => entry.job === job.id), [{ workspaceId: ws.id, msg: /not found upstream/ }])
})

t.test('the spend cap learns a job\'s cost even when the token lookup failed at a check', async (t) => {
  // a database of its own: its token table goes away for a while
  const databaseUrl = await createScratchDatabase(t)
  const s = await setup(t, { DATABASE_URL: databaseUrl, BATCH_POLL_INTERVAL_MS: '100' })
  const ws = await cappedWorkspace(t, s)
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query('alter table workspace_tokens rename to workspace_tokens_away')
  completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  const reads = jobReads(s, job.id)
  // two checks of the ended job, the first of which has surely looked the token up and failed (or one check that
  // ended the watch all the same)
  const checks = async () => ({ reads: jobReads(s, job.id), watch: await watchOf(s, job.id) })
  await until('two checks of the ended job', checks, ({ reads: now, watch }) => now >= reads + 2 ||
    watch.status !== 'pending')
  await client.query('alter table workspace_tokens_away rename to workspace_tokens')
  await until('the job recorded', () => watchOf(s, job.id), (row) => row.status === 'recorded')
  t.ok(s.logs.some((line) => line.includes('batch job check failed') && line.includes(job.id)), 'the lookup failed')
  const { settled, ledger } = await spendAndLedger(s, ws)
  t.ok((await recordsOf(s, ws.id)).some((record) => record.requestId === `batch:${job.id}`), 'the job is billed')
  t.equal(settled, ledger, 'the spend counter learnt the job\'s cost, once')
})

t.test('a pending job is read about once an interval', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '200' })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  await until('a first read', async () => jobReads(s, job.id), (n) => n >= 1)
  const before = jobReads(s, job.id)
  await sleep(3_000)
  const reads = jobReads(s, job.id) - before
  t.comment(`${reads} reads in 3 s at a 200 ms interval`)
  // a job read every other interval would be read about 7 times; a loaded machine may delay a poll or two
  t.ok(reads >= 10 && reads <= 16, `about 15 reads in 3 s, not 7 (${reads})`)
})

t.test('one poll checks every job that is due, however many', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const sdk = sdkFor(s.url, ws)
  // more than one claim's worth (20)
  const jobs = await Promise.all(Array.from({ length: 45 }, () =>
    sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests(PROMPTS.slice(0, 1)) })))
  await s.app.batchJobs.poll()
  t.same(jobs.map((job) => jobReads(s, job.id)), jobs.map(() => 1), 'each job read once')
  await s.app.batchJobs.poll()
  t.same(jobs.map((job) => jobReads(s, job.id)), jobs.map(() => 1), 'and none again before the interval has passed')
})

t.test('a job about to be deleted through the gateway is billed first; a running one is refused', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const sdk = sdkFor(s.url, ws)
  const create = () => sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
  // what the route calls before it forwards `DELETE /v1/batch/jobs/{id}`
  const deleting = (path: string, workspaceId = ws.id) =>
    billBeforeDeletion(s.app.batchJobs, path, workspaceId).then(() => undefined, (err: unknown) => err)

  const job = await create()
  t.match(await deleting(`/v1/batch/jobs/${job.id}`), {
    statusCode: 409,
    code: 'conflict',
    message: `Batch job ${job.id} is still running (QUEUED): cancel it, and delete it once it has ended`
  }, 'a running job: its deletion would lose what it answers')
  t.match(await watchOf(s, job.id), { status: 'pending', upstreamStatus: 'QUEUED' }, 'it was read, and is watched')

  completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  // another workspace's deletion of the job leaves it alone
  const other = await s.createWorkspace()
  t.equal(await deleting(`/v1/batch/jobs/${job.id}`, other.id), undefined)
  t.equal((await watchOf(s, job.id)).status, 'pending')
  // the owner's: billed before the deletion goes on, the id as Mistral will decode it
  t.equal(await deleting(`/v1/batch/jobs/%${job.id.charCodeAt(0).toString(16)}${job.id.slice(1)}?x=1`), undefined)
  t.equal((await watchOf(s, job.id)).status, 'recorded', 'billed before the deletion was let through')
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  t.match(await recordsOf(s, ws.id), [{
    requestId: `batch:${job.id}`, promptTokens, completionTokens: WORDS * PROMPTS.length,
    billedCostMicros: batchCost(promptTokens, WORDS * PROMPTS.length, 0).billed
  }])
  const reads = jobReads(s, job.id)
  t.equal(await deleting(`/v1/batch/jobs/${job.id}`), undefined, 'a billed job is deleted as it comes')
  t.equal(jobReads(s, job.id), reads, 'without reading it again')

  // a job another check holds: the deletion waits for that check to end, then bills the job
  const held = await create()
  completeBatchJob(s.mistral.stores, held.id, { completionTokens: WORDS })
  const lease = new Date(Date.now() + 60_000)
  await s.app.database.db.update(watchedJobs).set({ checkedAt: lease }).where(eq(watchedJobs.jobId, held.id))
  const waiting = deleting(`/v1/batch/jobs/${held.id}`)
  await sleep(300)
  t.equal((await watchOf(s, held.id)).status, 'pending', 'not taken from the check that holds it')
  await s.app.database.db.update(watchedJobs).set({ checkedAt: null }).where(eq(watchedJobs.jobId, held.id))
  t.equal(await waiting, undefined)
  t.equal((await watchOf(s, held.id)).status, 'recorded', 'billed once that check let go of it')
})

t.test('a job whose creation the client stopped waiting for is watched and billed all the same', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  // Mistral has the whole request, and creates the job, however long its answer takes
  s.mistral.enqueueDelay(600, { path: '/v1/batch/jobs', method: 'POST' })
  const gone = new AbortController()
  setTimeout(() => gone.abort(), 200).unref()
  const sent = await fetch(`${s.url}/v1/batch/jobs`, {
    method: 'POST',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    body: JSON.stringify({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() }),
    signal: gone.signal
  }).then(() => 'answered', (err: Error) => err.name)
  t.equal(sent, 'AbortError', 'the client left before the answer')
  const watched = await until('the job is watched',
    () => s.app.database.db.select().from(watchedJobs).where(eq(watchedJobs.workspaceId, ws.id)),
    (rows) => rows.length === 1)
  completeBatchJob(s.mistral.stores, watched[0].jobId, { completionTokens: WORDS })
  await s.app.batchJobs.poll()
  t.match(await recordsOf(s, ws.id), [{ requestId: `batch:${watched[0].jobId}`, completionTokens: WORDS * PROMPTS.length }],
    'billed when it ended')
})

t.test('DELETE /v1/batch/jobs/{id} through the gateway: refused while the job runs, billed before it goes on', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
  const remove = () => s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${job.id}`, headers: ws.headers })
  const deletions = () => s.mistral.received.filter((request) => request.method === 'DELETE').length

  const running = await remove()
  t.equal(running.statusCode, 409, 'a running job')
  t.match(running.json(), { code: 'conflict', request_id: String, message: /still running \(QUEUED\)/ }, 'in the envelope')
  t.equal(deletions(), 0, 'Mistral was not asked to delete it')

  completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  const ended = await remove()
  t.equal(ended.statusCode, 200, 'an ended job is deleted')
  t.equal(deletions(), 1)
  t.equal((await watchOf(s, job.id)).status, 'recorded', 'and was billed before')
  t.equal((await recordsOf(s, ws.id)).length, 1)
})

t.test('a job shown with an empty `outputs` list and no output file is billed from its results inline', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  const ended = completeBatchJob(s.mistral.stores, job.id, { outputFile: false, completionTokens: WORDS })
  // a read without `inline` may carry `outputs: []`: that is not the job's results
  await s.app.batchJobs.seen(ws.id, { ...ended, outputs: [] }, 'default')
  t.equal((await watchOf(s, job.id)).status, 'recorded')
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  t.match(await recordsOf(s, ws.id), [{ promptTokens, completionTokens: WORDS * PROMPTS.length }])
  t.ok(s.mistral.requestsTo(`/v1/batch/jobs/${job.id}`).some((request) => request.path.endsWith('?inline=true')),
    'the results were asked for inline')
})

/** The log lines the app wrote at one level (pino: 40 warn, 50 error) about one job. */
const jobLogs = (s: TestApp, jobId: string, level: number) => s.logs.flatMap((line) => line.split('\n'))
  .filter((line) => line !== '')
  .map((line) => JSON.parse(line) as { level: number, msg: string, [field: string]: unknown })
  .filter((entry) => entry.level === level && entry.job === jobId)

t.test('a job Mistral says answered requests is not closed as answering nothing when its output holds none',
  async (t) => {
    const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
    const ws = await s.createWorkspace()
    const sdk = sdkFor(s.url, ws)
    const create = () => sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests: requests() })
    const inlineAnswers = (ended: Record<string, unknown>, outputs: unknown[]) => {
      s.mistral.enqueue((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ ...ended, outputs }))
      }, `/v1/batch/jobs/${String(ended.id)}`)
    }
    const noUsage = { custom_id: '0', response: { status_code: 200, body: { model: MODEL, choices: [] } }, error: null }
    const cases: Array<[string, (ended: Record<string, unknown>) => void, number]> = [
      ['no output file, and no results inline', (ended) => inlineAnswers(ended, []), 0],
      ['no output file, and results inline without usage', (ended) => inlineAnswers(ended, [noUsage, noUsage]), 2],
      ['an output file whose answered lines carry no usage', (ended) => {
        s.mistral.enqueue((_req, res) => {
          res.writeHead(200, { 'content-type': 'application/octet-stream' })
          res.end(`${JSON.stringify(noUsage)}\nnot json\n`)
        }, `/v1/files/${String(ended.output_file)}/content`)
      }, 2]
    ]
    for (const [how, answer, unreadable] of cases) {
      const job = await create()
      const ended = completeBatchJob(s.mistral.stores, job.id, {
        outputFile: how.startsWith('an output file'), completionTokens: WORDS
      })
      t.equal(ended.succeeded_requests, PROMPTS.length)
      answer(ended)
      await s.app.batchJobs.seen(ws.id, ended, 'default')
      t.equal((await watchOf(s, job.id)).status, 'pending', `${how}: not closed within the hour`)
      t.equal(jobLogs(s, job.id, 50).length, 0, `${how}: no error yet`)
      t.match(jobLogs(s, job.id, 40), [
        ...(unreadable > 0 ? [{ lines: unreadable, msg: /usage could not be read/ }] : []),
        { succeededRequests: PROMPTS.length, msg: /read again at the next check/ }
      ], `${how}: warned`)

      // an hour past its end, the output is taken as gone, loudly
      answer(ended)
      await s.app.batchJobs.seen(ws.id, { ...ended, completed_at: (ended.completed_at as number) - 2 * 3600 },
        'default')
      t.match(await watchOf(s, job.id), { status: 'failed', upstreamStatus: 'OUTPUT_GONE' }, `${how}: given up`)
      t.match(jobLogs(s, job.id, 50), [{ workspaceId: ws.id, msg: /will not be billed/ }], `${how}: logged as an error`)
    }
    t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed')
  })

t.test('a job whose output file holds only errored lines ends failed at once, with Mistral\'s status', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  const ended = completeBatchJob(s.mistral.stores, job.id, { status: 'FAILED' })
  // Mistral writes a line for every request to the output file, those that answered 400 too
  ended.output_file = ended.error_file
  t.equal(ended.succeeded_requests, 0)
  await s.app.batchJobs.seen(ws.id, ended, 'default')
  t.match(await watchOf(s, job.id), { status: 'failed', upstreamStatus: 'FAILED' }, 'ended, not held for the hour')
  t.same(s.mistral.requestsTo(`/v1/files/${String(ended.output_file)}/content`).length, 1, 'its output was read')
  t.equal(jobLogs(s, job.id, 50).length, 0, 'no error logged: nothing was lost')
  t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed')
})

t.test('a job whose Mistral key was removed is let go to its deletion, with a warning naming it', async (t) => {
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000' })
  const ws = await s.createWorkspace({ keys: ['default', 'batch'] })
  const created = await s.app.inject({
    method: 'POST',
    url: '/v1/batch/jobs',
    headers: { ...ws.headers, 'x-tramontane-key': 'batch' },
    payload: { endpoint: '/v1/chat/completions', model: MODEL, requests: requests() }
  })
  t.equal(created.statusCode, 200)
  const jobId = String(created.json().id)
  t.match(await watchOf(s, jobId), { status: 'pending', keyName: 'batch' })
  completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS })
  t.equal((await s.admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/batch`)).statusCode, 204)

  const removed = await s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${jobId}`, headers: ws.headers })
  t.equal(removed.statusCode, 200, 'the gateway could never bill it: the deletion goes on')
  t.equal(s.mistral.received.filter((request) => request.method === 'DELETE').length, 1)
  t.match(await watchOf(s, jobId), { status: 'failed', upstreamStatus: 'KEY_GONE' },
    'its watch ends: nothing could bill the job once Mistral has deleted it, and its month can close')
  t.match(jobLogs(s, jobId, 40).at(-1), { key: 'batch', msg: /deletion.*will not be billed/ }, 'warned, naming the job')
  t.equal((await recordsOf(s, ws.id)).length, 0)
})

t.test('a deletion while PostgreSQL does not answer is refused 503 with Retry-After, then goes on', async (t) => {
  const { proxy, url: databaseUrl } = await proxiedDatabase(t, fileDatabaseUrl)
  const s = await setup(t, { BATCH_POLL_INTERVAL_MS: '600000', DATABASE_URL: databaseUrl })
  const ws = await s.createWorkspace()
  const job = await sdkFor(s.url, ws).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: requests()
  })
  completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  const remove = () => s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${job.id}`, headers: ws.headers })
  const deletions = () => s.mistral.received.filter((request) => request.method === 'DELETE').length

  proxy.cut()
  const refused = await remove()
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), {
    object: 'error',
    type: 'server_error',
    code: 'not_ready',
    message: /^The batch job cannot be billed before its deletion right now \(the database does not answer\)/,
    request_id: String(refused.headers['x-request-id'])
  }, 'in the envelope')
  t.equal(refused.headers['retry-after'], '5')
  t.equal(deletions(), 0, 'Mistral was not asked to delete it')
  t.match(jobLogs(s, job.id, 40), [{ err: Object, msg: /database/ }], 'the cause is logged, naming the job')

  proxy.restore()
  // the pool may first meet a connection the cut broke: the client retries, as told
  const ended = await until('a deletion PostgreSQL answers', remove, (res) => res.statusCode !== 503)
  t.equal(ended.statusCode, 200, 'deleted once PostgreSQL answers')
  t.equal(deletions(), 1)
  t.equal((await watchOf(s, job.id)).status, 'recorded', 'and billed before')
})
