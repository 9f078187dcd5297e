import { eq, sql } from 'drizzle-orm'
import t, { type Test } from 'tap'
import { usageRecords, watchedJobs } from '../../src/db/schema.js'
import { generateMasterKey } from '../../src/tenancy/master-keys.js'
import { buildTestApp, TEST_MASTER_KEYS, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { until, watchOf } from '../helpers/watched-jobs.js'
import { countTokens, startFakeMistral } from '../helpers/fake-mistral.js'
import { completeBatchJob } from '../helpers/fake-mistral/batch.js'

// A batch job outlives the Mistral key it was created with: Mistral may refuse the key (401) while the job runs, and
// the gateway then marks it invalid until the operator replaces it. The watcher never reads with such a key (each
// read would be refused again); the workspace's other keys read the job in its place.

const MODEL = 'mistral-small-latest'
const PROMPTS = ['a'.repeat(4_000), 'b'.repeat(2_000)]
const WORDS = 300
const MISTRAL_DOWN = { object: 'error', message: 'Service unavailable', type: 'service_unavailable', code: '1000' }

// a database of this file's own: every replica's watcher polls every due job of its database, and another test
// file's gateways, polling often, would check these jobs with their own fake Mistral (which knows none of them)
const databaseUrl = await createScratchDatabase(t)

async function setup (t: Test): Promise<TestApp> {
  // the test says when a poll checks the jobs
  return buildTestApp(t, { BATCH_POLL_INTERVAL_MS: '600000', DATABASE_URL: databaseUrl })
}

async function createJob (s: TestApp, ws: TestWorkspace, keyName: string): Promise<string> {
  const created = await s.app.inject({
    method: 'POST',
    url: '/v1/batch/jobs',
    headers: { ...ws.headers, 'x-tramontane-key': keyName },
    payload: {
      endpoint: '/v1/chat/completions',
      model: MODEL,
      requests: PROMPTS.map((content, i) => ({ custom_id: String(i), body: { messages: [{ role: 'user', content }] } }))
    }
  })
  if (created.statusCode !== 200) throw new Error(`job not created: ${created.statusCode} ${created.body}`)
  return String(created.json().id)
}

/** Mistral now refuses every key but `valid`; a call with `keyName` meets its 401, and the gateway marks it invalid. */
async function markInvalid (t: Test, s: TestApp, ws: TestWorkspace, keyName: string, valid: string) {
  s.mistral.validKeys.add(valid)
  const call = await s.app.inject({ url: '/v1/models', headers: { ...ws.headers, 'x-tramontane-key': keyName } })
  t.match([call.statusCode, call.json()], [502, { code: 'mistral_key_rejected' }])
  const keys = (await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data
  const key = keys.find((listed: { name: string }) => listed.name === keyName)
  t.match(key, { status: 'invalid' }, `${keyName} marked invalid`)
}

/** Forgets when the job was checked: the next poll finds it due. */
async function due (s: TestApp, jobId: string) {
  await s.app.database.db.update(watchedJobs).set({ checkedAt: null }).where(eq(watchedJobs.jobId, jobId))
}

const recordsOf = (s: TestApp, workspaceId: string) =>
  s.app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, workspaceId))

const keysSince = (s: TestApp, from: number) => s.mistral.received.slice(from).map((request) => request.apiKey)

t.test('a job whose Mistral key was marked invalid is read, and billed once it ends, with the workspace\'s valid key',
  async (t) => {
    const s = await setup(t)
    const ws = await s.createWorkspace({ keys: ['default', 'old'] })
    const jobId = await createJob(s, ws, 'old')
    await markInvalid(t, s, ws, 'old', ws.mistralKey)
    const marked = s.mistral.received.length

    await s.app.batchJobs.poll()
    t.match(await watchOf(s, jobId), { status: 'pending', upstreamStatus: 'QUEUED', keyName: 'old' },
      'read while it runs')

    completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS })
    await due(s, jobId)
    await s.app.batchJobs.poll()
    t.match(await watchOf(s, jobId), { status: 'recorded', upstreamStatus: 'SUCCESS' }, 'billed once it ended')
    const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
    t.match(await recordsOf(s, ws.id), [{
      requestId: `batch:${jobId}`, keyName: 'old', promptTokens, completionTokens: WORDS * PROMPTS.length
    }], 'one record, under the key that created the job')
    t.notOk(keysSince(s, marked).includes(`${ws.mistralKey}-old`), 'nothing was read with the invalid key')
    const read = s.mistral.received.slice(marked).map((request) => `${request.method} ${request.path} ${request.apiKey}`)
    t.ok(read.length >= 3 && keysSince(s, marked).every((key) => key === ws.mistralKey),
      `the job and its output were read with the valid key: ${JSON.stringify(read)} (${ws.mistralKey})`)
  })

t.test('a job no valid key reads stays watched, its deletion held back, until its key is replaced', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const jobId = await createJob(s, ws, 'default')
  // read once while its key was valid: the job ended, its output file known, but its download failed
  const output = String(completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS }).output_file)
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, `/v1/files/${output}/content`)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, jobId), { status: 'pending', outputFile: output })
  await markInvalid(t, s, ws, 'default', 'mk-replacement-of-default')
  const marked = s.mistral.received.length

  await due(s, jobId)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, jobId), { status: 'pending' }, 'pending, as a key gone leaves it')
  // neither goes: a key replaced meanwhile would have Mistral delete the job, or the output it is billed from, unbilled
  const file = await s.app.inject({ method: 'DELETE', url: `/v1/files/${output}`, headers: ws.headers })
  const job = await s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${jobId}`, headers: ws.headers })
  t.same([file.statusCode, job.statusCode], [409, 409], 'the output file and the job held back')
  t.match(file.json(), { code: 'conflict', message: `File ${output} is the output of batch job ${jobId}, which cannot ` +
    'be read: its Mistral key is marked invalid and no valid key of the workspace sees it; the key must be replaced ' +
    'so that the job can be billed before its output is deleted' })
  t.match(job.json(), {
    code: 'conflict',
    message: `Batch job ${jobId} cannot be read: its Mistral key is marked invalid and no valid key of the workspace ` +
      'sees it; the key must be replaced so that the job can be billed before it is deleted'
  })
  t.notMatch(job.body, ws.mistralKey, 'no secret in the answer')
  t.equal(s.mistral.received.length, marked, 'Mistral heard nothing: no read, no deletion, with the invalid key')
  t.match(await watchOf(s, jobId), { status: 'pending' },
    'still watched: the job is still at Mistral, where its key, once replaced, reads it')
  t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed')

  t.equal((await s.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`,
    { key: 'mk-replacement-of-default' })).statusCode, 200)
  await due(s, jobId)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, jobId), { status: 'recorded' }, 'billed with the replacement')
  t.equal((await recordsOf(s, ws.id)).length, 1, 'once')
})

/** A workspace whose job was created with 'old', marked invalid since; Mistral still takes the keys `valid` names. */
async function invalidWithSpare (t: Test, s: TestApp, valid: string[]) {
  const ws = await s.createWorkspace({ keys: ['default', 'old', 'spare'] })
  const jobId = await createJob(s, ws, 'old')
  await markInvalid(t, s, ws, 'old', ws.mistralKey)
  for (const name of valid) s.mistral.validKeys.add(`${ws.mistralKey}-${name}`)
  return { ws, jobId }
}

const jobReads = (s: TestApp, jobId: string, from: number) => s.mistral.requestsTo(`/v1/batch/jobs/${jobId}`)
  .filter((request) => request.method === 'GET').slice(from).map((request) => request.apiKey)

t.test('a valid key whose read of the job Mistral fails (503) leaves the job to the next valid key', async (t) => {
  const s = await setup(t)
  const { ws, jobId } = await invalidWithSpare(t, s, ['spare'])
  completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS })
  const before = jobReads(s, jobId, 0).length
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, { path: `/v1/batch/jobs/${jobId}`, method: 'GET' })

  await s.app.batchJobs.poll()
  t.same(jobReads(s, jobId, before), [ws.mistralKey, `${ws.mistralKey}-spare`],
    'default (failover order) met the 503, spare read the job')
  t.match(await watchOf(s, jobId), { status: 'recorded', upstreamStatus: 'SUCCESS' }, 'billed in that same check')
  t.match(await recordsOf(s, ws.id), [{ requestId: `batch:${jobId}`, keyName: 'old' }])
})

t.test('a valid key Mistral failed, none other seeing the job: the check failed, not NO_VALID_KEY', async (t) => {
  const s = await setup(t)
  // spare is another organisation's: Mistral answers it 401
  const { ws, jobId } = await invalidWithSpare(t, s, [])
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, { path: `/v1/batch/jobs/${jobId}`, method: 'GET' })
  const before = jobReads(s, jobId, 0).length

  const job = await s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${jobId}`, headers: ws.headers })
  t.same(jobReads(s, jobId, before), [ws.mistralKey, `${ws.mistralKey}-spare`], 'default met the 503, spare its 401')
  t.equal(job.statusCode, 409)
  t.match(job.json(), { code: 'conflict', message: `Batch job ${jobId} could not be billed yet; retry shortly` },
    'the key that could not answer may yet see the job: not taken for one that does not')
  t.equal(job.headers['retry-after'], '60')
  t.equal(s.mistral.requestsTo(`/v1/batch/jobs/${jobId}`).filter((r) => r.method === 'DELETE').length, 0,
    'the deletion never reached Mistral')
  t.match(await watchOf(s, jobId), { status: 'pending' })
})

const readsSince = (s: TestApp, from: number) => s.mistral.received.slice(from)
  .map((request) => `${request.method} ${request.path} ${request.apiKey} ${request.status}`)

t.test('a client\'s read of the ended job with a valid key bills it from that read: the job is not read again',
  async (t) => {
    const s = await setup(t)
    const { ws, jobId } = await invalidWithSpare(t, s, ['spare'])
    const output = String(completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS }).output_file)
    const before = s.mistral.received.length

    const read = await s.app.inject({
      url: `/v1/batch/jobs/${jobId}`, headers: { ...ws.headers, 'x-tramontane-key': 'spare' }
    })
    t.match([read.statusCode, read.json()], [200, { id: jobId, status: 'SUCCESS', output_file: output }])
    await until('the job billed', () => watchOf(s, jobId), (watch) => watch?.status === 'recorded')
    t.same(readsSince(s, before), [
      `GET /v1/batch/jobs/${jobId} ${ws.mistralKey}-spare 200`,
      `GET /v1/files/${output}/content ${ws.mistralKey}-spare 200`
    ], 'the client\'s read, then the output file with the key that read the job')
    t.match(await recordsOf(s, ws.id), [{
      requestId: `batch:${jobId}`, keyName: 'old', completionTokens: WORDS * PROMPTS.length
    }], 'billed once, under the key that created the job')
  })

t.test('a key this replica cannot open is passed over by the check of a file before its deletion', async (t) => {
  // a database of its own: a key under a master key the run's ring lacks would stop any app started on it after
  const databaseUrl = await createScratchDatabase(t)
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const options = { BATCH_POLL_INTERVAL_MS: '600000', DATABASE_URL: databaseUrl }
  // a replica left behind by a rotation of the master keys, and one that has the new master key
  const behind = await buildTestApp(t, options, { mistral })
  const rotated = await buildTestApp(t, {
    ...options, TRAMONTANE_MASTER_KEYS: `${generateMasterKey('rotated')},${TEST_MASTER_KEYS}`
  }, { mistral })
  const ws = await behind.createWorkspace()
  t.equal((await rotated.admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`,
    { name: 'new', key: `${ws.mistralKey}-new` })).statusCode, 201, 'a key sealed under the new master key')
  // the oldest pending job, whose key the check tries first, is one the replica behind cannot open
  const unopened = await createJob(rotated, ws, 'new')
  const jobId = await createJob(behind, ws, 'default')
  const output = String(completeBatchJob(mistral.stores, jobId, { completionTokens: WORDS }).output_file)

  const file = await behind.app.inject({ method: 'DELETE', url: `/v1/files/${output}`, headers: ws.headers })
  t.equal(file.statusCode, 200, `the deletion went once its job was billed: ${file.body}`)
  t.equal(mistral.stores.files.has(output), false, 'Mistral deleted it')
  t.match(await watchOf(behind, jobId), { status: 'recorded', outputFile: output }, 'the job billed first')
  t.match(await recordsOf(behind, ws.id), [{ requestId: `batch:${jobId}`, keyName: 'default' }])
  t.match(await watchOf(behind, unopened), { status: 'pending' }, 'the other job still watched')
  const passed = behind.logs.map((line) => JSON.parse(line)).find((line) => line.key === 'new')
  t.match(passed, { level: 40, err: { type: 'KeyCryptoError' } }, 'the key passed over is logged with its cause')
  t.notMatch(JSON.stringify(passed), ws.mistralKey, 'never the secret')
})

t.test('a job whose key is invalid is read by a valid key of its organisation, never of another one', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace({ keys: ['default', 'old', 'spare'] })
  // default is another organisation's key: Mistral answers it 404 for old's and spare's jobs and files
  s.mistral.organisations.set(ws.mistralKey, 'another')
  const jobId = await createJob(s, ws, 'old')
  const output = String(completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS }).output_file)
  // Mistral now refuses old, and spare for a while (401): default alone is taken
  await markInvalid(t, s, ws, 'old', ws.mistralKey)
  const marked = s.mistral.received.length

  await s.app.batchJobs.poll()
  t.same(readsSince(s, marked), [
    `GET /v1/batch/jobs/${jobId} ${ws.mistralKey} 404`,
    `GET /v1/batch/jobs/${jobId} ${ws.mistralKey}-spare 401`
  ], 'read with the valid keys only: another organisation\'s does not see it')
  t.match(await watchOf(s, jobId), { status: 'pending', upstreamStatus: null, outputFile: null },
    'pending, not taken for a job gone from Mistral')
  const job = await s.app.inject({ method: 'DELETE', url: `/v1/batch/jobs/${jobId}`, headers: ws.headers })
  t.match([job.statusCode, job.json()], [409, { code: 'conflict', message: /its Mistral key is marked invalid/ }],
    'its deletion held back')
  // no valid key sees the file: it is none of the workspace's jobs' as far as the gateway can tell, and goes to
  // Mistral, which answers default's deletion of another organisation's file 404
  const file = await s.app.inject({ method: 'DELETE', url: `/v1/files/${output}`, headers: ws.headers })
  t.equal(file.statusCode, 404, 'the output file\'s deletion answered by Mistral')
  t.equal(s.mistral.stores.files.has(output), true, 'the output file is still there')
  t.equal(s.mistral.requestsTo(`/v1/batch/jobs/${jobId}`).filter((r) => r.method === 'DELETE').length, 0,
    'the job\'s deletion never reached Mistral')
  t.equal((await recordsOf(s, ws.id)).length, 0, 'nothing billed')

  // Mistral takes spare again: a key of the job's organisation
  s.mistral.validKeys.add(`${ws.mistralKey}-spare`)
  const taken = s.mistral.received.length
  await due(s, jobId)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, jobId), { status: 'recorded', upstreamStatus: 'SUCCESS', outputFile: output },
    'read and billed with the key of its organisation')
  t.match(await recordsOf(s, ws.id), [{
    requestId: `batch:${jobId}`, keyName: 'old', completionTokens: WORDS * PROMPTS.length
  }], 'once, under the key that created it')
  t.same(readsSince(s, taken), [
    `GET /v1/batch/jobs/${jobId} ${ws.mistralKey} 404`,
    `GET /v1/batch/jobs/${jobId} ${ws.mistralKey}-spare 200`,
    `GET /v1/files/${output}/content ${ws.mistralKey}-spare 200`
  ], 'the job and its output read with spare')
})

/**
 * An app on a database of its own whose replica holds the rows of the keys `held` names (calls with them), not the
 * others': PostgreSQL then refuses a lookup of those, the keys' table having lost a column (42703), as it refuses
 * a statement that no retry makes pass.
 */
async function refusingLookups (t: Test, held: string[], keys: string[]) {
  const s = await buildTestApp(t, { BATCH_POLL_INTERVAL_MS: '600000', DATABASE_URL: await createScratchDatabase(t) })
  const ws = await s.createWorkspace({ keys })
  return {
    s,
    ws,
    async refuse () {
      for (const name of held) await s.app.tenancy.keys.resolve(ws.id, name)
      await s.app.database.db.execute(sql`alter table mistral_keys rename column last4 to last4_gone`)
    }
  }
}

const logsOf = (s: TestApp) => s.logs.map((line) => JSON.parse(line))

t.test('a key whose lookup PostgreSQL refuses is no key to pass over in the check of a file before its deletion',
  async (t) => {
    const { s, ws, refuse } = await refusingLookups(t, ['default'], ['default', 'spare'])
    // the oldest pending job, whose key the check tries first, is spare's
    const other = await createJob(s, ws, 'spare')
    const jobId = await createJob(s, ws, 'default')
    const output = String(completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS }).output_file)
    // a key added: the replica forgets what it held of the workspace's keys, then reads default's again
    t.equal((await s.admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`,
      { name: 'added', key: `${ws.mistralKey}-added` })).statusCode, 201)
    await refuse()
    const before = s.mistral.received.length

    const file = await s.app.inject({ method: 'DELETE', url: `/v1/files/${output}`, headers: ws.headers })
    // not the 409 of a file that could not be checked, which a client retries for good
    t.equal(file.statusCode, 500, `the deletion failed as the gateway's own fault: ${file.body}`)
    t.match(file.json(), { code: 'internal_error', request_id: String(file.headers['x-request-id']) })
    t.same(readsSince(s, before), [], 'Mistral heard nothing: no read with default, no deletion')
    t.equal(s.mistral.stores.files.has(output), true, 'the output file is still there')
    t.match(await watchOf(s, jobId), { status: 'pending' }, 'its job not billed past the failure')
    t.match(await watchOf(s, other), { status: 'pending' })
    t.notOk(logsOf(s).find((line) => line.key === 'spare' && /cannot open/.test(line.msg)),
      'not logged as a key this replica cannot open')
  })

t.test('a key whose lookup PostgreSQL refuses ends the check of a job whose key is invalid: no other key reads it',
  async (t) => {
    const { s, ws, refuse } = await refusingLookups(t, ['old', 'spare'], ['default', 'old', 'spare'])
    const jobId = await createJob(s, ws, 'old')
    completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS })
    // Mistral takes spare alone; marking old invalid made the replica forget the keys it held
    await markInvalid(t, s, ws, 'old', `${ws.mistralKey}-spare`)
    await refuse()
    const before = s.mistral.received.length

    await s.app.batchJobs.poll()
    t.same(readsSince(s, before), [], 'spare, after default in failover order, never read the job')
    t.match(await watchOf(s, jobId), { status: 'pending' }, 'not billed past the failure')
    t.equal((await recordsOf(s, ws.id)).length, 0)
    const logs = logsOf(s)
    t.match(logs.find((line) => line.job === jobId && /^batch job check failed/.test(line.msg)), { level: 40 },
      'the check failed, to be tried again at the next poll')
    t.notOk(logs.find((line) => line.key === 'default' && /trying the next/.test(line.msg)),
      'default not passed over as a key that could not answer')
  })
