import type { ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { eq } from 'drizzle-orm'
import t, { type Test } from 'tap'
import { usageRecords, watchedJobs } from '../../src/db/schema.js'
import { buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { watchOf } from '../helpers/watched-jobs.js'
import { errorBodies } from '../helpers/fake-mistral.js'
import { completeBatchJob } from '../helpers/fake-mistral/batch.js'

// The watcher reads Mistral in the background with the workspace's own keys: a key Mistral is rate-limiting is left
// alone until its cooldown ends, as clients' calls leave it, and a 429 the watcher meets cools the key for everyone.

const MODEL = 'mistral-small-latest'
const COOLDOWN_MS = 1_500
// Mistral's 429, asking for COOLDOWN_MS (retry-after-ms: the retryAfterMs header read first)
const RATE_LIMITED = errorBodies.rateLimited.body
const RETRY_AFTER = { 'retry-after-ms': String(COOLDOWN_MS) }

// a database of this file's own: every replica's watcher polls every due job of its database, and another test
// file's gateways, polling often, would check these jobs with their own fake Mistral (which knows none of them)
const databaseUrl = await createScratchDatabase(t)

async function setup (t: Test): Promise<TestApp> {
  // the test says when a poll checks the jobs; a client's call refused by the cooldown is answered at once
  return buildTestApp(t, {
    BATCH_POLL_INTERVAL_MS: '600000', UPSTREAM_COOLDOWN_HOLD_MS: '0', DATABASE_URL: databaseUrl
  })
}

/** A job Mistral has ended, which the watcher has not read yet: its id and output file. */
async function endedJob (s: TestApp, ws: TestWorkspace): Promise<{ jobId: string, output: string }> {
  const created = await s.app.inject({
    method: 'POST',
    url: '/v1/batch/jobs',
    headers: ws.headers,
    payload: {
      endpoint: '/v1/chat/completions',
      model: MODEL,
      requests: [{ custom_id: '0', body: { messages: [{ role: 'user', content: 'hello there' }] } }]
    }
  })
  if (created.statusCode !== 200) throw new Error(`job not created: ${created.statusCode} ${created.body}`)
  const jobId = String(created.json().id)
  const ended = completeBatchJob(s.mistral.stores, jobId, { completionTokens: 5 })
  return { jobId, output: String(ended.output_file) }
}

const chat = (s: TestApp, ws: TestWorkspace) => s.app.inject({
  method: 'POST',
  url: '/v1/chat/completions',
  headers: ws.headers,
  payload: { model: MODEL, messages: [{ role: 'user', content: 'hi' }] }
})

/** Forgets when the job was checked: the next poll finds it due. */
async function due (s: TestApp, jobId: string) {
  await s.app.database.db.update(watchedJobs).set({ checkedAt: null }).where(eq(watchedJobs.jobId, jobId))
}

/** The reads of the job (and of it with its results) Mistral got with `key`. */
const jobReads = (s: TestApp, jobId: string, key: string) =>
  s.mistral.requestsTo(`/v1/batch/jobs/${jobId}`).filter((request) => request.method === 'GET' && request.apiKey === key)

/** The workspace's batch records, once the recorder has written what it holds (the client's 429 has a row too). */
async function recordsOf (s: TestApp, workspaceId: string) {
  await s.app.usage.flush()
  const rows = await s.app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, workspaceId))
  return rows.filter((record) => record.requestId.startsWith('batch:'))
}

t.test('a key cooling down after a client\'s 429 is not read with until its cooldown ends', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const { jobId } = await endedJob(s, ws)
  s.mistral.enqueueError(429, RATE_LIMITED, RETRY_AFTER, '/v1/chat/completions')
  const refused = await chat(s, ws)
  t.equal(refused.statusCode, 429, 'the client met Mistral\'s 429')
  const cooledAt = Date.now()

  await s.app.batchJobs.poll()
  t.equal(jobReads(s, jobId, ws.mistralKey).length, 0, 'the poll during the cooldown sent nothing with the key')
  t.match(await watchOf(s, jobId), { status: 'pending' }, 'the job stays pending, read again later')
  t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed yet')

  await sleep(Math.max(0, cooledAt + COOLDOWN_MS + 100 - Date.now()))
  await due(s, jobId)
  await s.app.batchJobs.poll()
  t.ok(jobReads(s, jobId, ws.mistralKey).length >= 1, 'read with the key once its cooldown ended')
  t.match(await watchOf(s, jobId), { status: 'recorded', upstreamStatus: 'SUCCESS' }, 'billed then')
  t.match(await recordsOf(s, ws.id), [{ requestId: `batch:${jobId}`, completionTokens: 5 }], 'one record')
})

t.test('a 429 answered to the watcher\'s read cools the key for clients and for the watcher', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const { jobId } = await endedJob(s, ws)
  s.mistral.enqueueError(429, RATE_LIMITED, RETRY_AFTER, { method: 'GET', path: `/v1/batch/jobs/${jobId}` })

  await s.app.batchJobs.poll()
  const cooledAt = Date.now()
  t.equal(jobReads(s, jobId, ws.mistralKey).length, 1, 'the watcher read the job once, and met the 429')
  t.match(await watchOf(s, jobId), { status: 'pending' }, 'the job stays pending')

  const chats = s.mistral.requestsTo('/v1/chat/completions').length
  const refused = await chat(s, ws)
  t.match([refused.statusCode, refused.json()], [429, { code: 'upstream_rate_limited' }],
    'a client\'s call right after gets the gateway\'s cooldown answer')
  t.equal(s.mistral.requestsTo('/v1/chat/completions').length, chats, 'the client\'s call did not reach Mistral')

  await due(s, jobId)
  await s.app.batchJobs.poll()
  t.equal(jobReads(s, jobId, ws.mistralKey).length, 1, 'the next poll during the cooldown sent nothing with the key')
  t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed yet')

  await sleep(Math.max(0, cooledAt + COOLDOWN_MS + 100 - Date.now()))
  await due(s, jobId)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, jobId), { status: 'recorded', upstreamStatus: 'SUCCESS' }, 'billed once the cooldown ended')
  t.match(await recordsOf(s, ws.id), [{ requestId: `batch:${jobId}`, completionTokens: 5 }], 'one record')
})

t.test('a file deletion does not read Mistral with a key cooling down: the file is left unchecked', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const { output } = await endedJob(s, ws)
  s.mistral.enqueueError(429, RATE_LIMITED, RETRY_AFTER, '/v1/chat/completions')
  t.equal((await chat(s, ws)).statusCode, 429, 'the client met Mistral\'s 429')

  const files = s.mistral.requestsTo('/v1/files').length
  const deleted = await s.app.inject({ method: 'DELETE', url: `/v1/files/${output}`, headers: ws.headers })
  t.equal(deleted.statusCode, 409, 'held back: the file may be the pending job\'s output, which no key could check')
  t.equal(s.mistral.requestsTo('/v1/files').length, files, 'Mistral heard nothing of the file')
})

/**
 * The only key's breaker opened by a client's 503, its open time over: the watcher's read takes the probe and meets
 * `fail`. The breaker is open again at once, for a whole BREAKER_OPEN_MS: a client's call right after is refused with
 * that wait, not with the second a call waiting on another's probe is told.
 */
async function probeFails (t: Test, fail: (res: ServerResponse) => void) {
  const openMs = 2_000
  const s = await buildTestApp(t, {
    BATCH_POLL_INTERVAL_MS: '600000', UPSTREAM_COOLDOWN_HOLD_MS: '0', DATABASE_URL: databaseUrl,
    BREAKER_THRESHOLD: '1', BREAKER_OPEN_MS: String(openMs), UPSTREAM_RETRIES: '0'
  })
  const ws = await s.createWorkspace()
  const { jobId } = await endedJob(s, ws)
  s.mistral.enqueueError(503, { object: 'error', message: 'overloaded' }, {}, '/v1/chat/completions')
  t.equal((await chat(s, ws)).statusCode, 503, 'the client met Mistral\'s 503, which opened the breaker')
  await sleep(openMs + 100)

  s.mistral.enqueue((_req, res) => fail(res), { method: 'GET', path: `/v1/batch/jobs/${jobId}` })
  await s.app.batchJobs.poll()
  t.equal(jobReads(s, jobId, ws.mistralKey).length, 1, 'the watcher\'s read took the probe')
  t.match(await watchOf(s, jobId), { status: 'pending' }, 'the job stays pending')

  const chats = s.mistral.requestsTo('/v1/chat/completions').length
  const refused = await chat(s, ws)
  t.match([refused.statusCode, refused.json()], [503, { code: 'upstream_unavailable' }],
    'a client\'s call right after meets the breaker')
  t.ok(Number(refused.headers['retry-after-ms']) > openMs - 500,
    `open again for its whole time (retry-after-ms ${String(refused.headers['retry-after-ms'])})`)
  t.equal(s.mistral.requestsTo('/v1/chat/completions').length, chats, 'the client\'s call did not reach Mistral')
}

t.test('a probe the watcher\'s read takes and Mistral fails (5xx) opens the breaker again at once', async (t) => {
  await probeFails(t, (res) => {
    res.writeHead(502, { 'content-type': 'application/json' })
    res.end('{"object":"error","message":"bad gateway"}')
  })
})

t.test('so does one that gets no answer (the connection dropped)', async (t) => {
  await probeFails(t, (res) => res.socket?.destroy())
})
