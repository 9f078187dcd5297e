import { randomUUID } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { Mistral } from '@mistralai/mistralai'
import { eq } from 'drizzle-orm'
import t, { type Test } from 'tap'
import { usageRecords, watchedJobs } from '../../src/db/schema.js'
import { buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { watchOf } from '../helpers/watched-jobs.js'
import { countTokens } from '../helpers/fake-mistral.js'
import { completeBatchJob } from '../helpers/fake-mistral/batch.js'
import { proxiedDatabase } from '../helpers/tcp-proxy.js'

// A client deleting a batch job's output file (`DELETE /v1/files/{file_id}`, MISTRAL-NOTES §2.3) takes away what the
// gateway bills the job from. The gateway keeps the output file Mistral names for a watched job, and such a deletion
// of a job not billed yet is checked as the job's own deletion is: billed first, or refused while it cannot be.

// a database of this file's own: every replica's watcher polls every due job of its database, and another test
// file's gateways, polling often, would check these jobs with their own fake Mistral (which knows none of them)
const databaseUrl = await createScratchDatabase(t)

const MODEL = 'mistral-small-latest'
const PROMPTS = ['a'.repeat(4_000), 'b'.repeat(2_000)]
const WORDS = 300
const requests = PROMPTS.map((content, i) => ({ customId: String(i), body: { messages: [{ role: 'user', content }] } }))
const MISTRAL_DOWN = { object: 'error', message: 'Service unavailable', type: 'service_unavailable', code: '1000' }

type Gateway = TestApp & { url: string }

async function setup (t: Test, overrides: Record<string, string> = {}): Promise<Gateway> {
  // the test says when a poll checks the jobs
  const testApp = await buildTestApp(t, { BATCH_POLL_INTERVAL_MS: '600000', DATABASE_URL: databaseUrl, ...overrides })
  return { ...testApp, url: await listen(testApp.app) }
}

const recordsOf = (s: TestApp, workspaceId: string) =>
  s.app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, workspaceId))

const deletions = (s: TestApp) => s.mistral.received.filter((request) => request.method === 'DELETE')

const deleteFile = (s: TestApp, ws: TestWorkspace, fileId: string) =>
  s.app.inject({ method: 'DELETE', url: `/v1/files/${fileId}`, headers: ws.headers })

/**
 * A job that ended, whose output file a poll read Mistral name but could not download (Mistral answered 503): the
 * job is still pending, its output file known.
 */
async function endedNotBilled (t: Test, s: Gateway, ws: TestWorkspace) {
  const job = await new Mistral({ apiKey: ws.token, serverURL: s.url }).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests
  })
  const ended = completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
  const output = String(ended.output_file)
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, `/v1/files/${output}/content`)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, job.id), { status: 'pending', outputFile: output }, 'pending, its output file known')
  return { jobId: job.id, output }
}

t.test('deleting a pending job\'s output file bills the job first, or is refused 409 while it cannot', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const { jobId, output } = await endedNotBilled(t, s, ws)
  const content = `/v1/files/${output}/content`

  // Mistral fails the output's download once more: the job cannot be billed, and its output is not let go
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, content)
  const refused = await deleteFile(s, ws, output)
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), {
    object: 'error',
    type: 'invalid_request_error',
    code: 'conflict',
    message: `File ${output} is the output of batch job ${jobId}, which could not be billed yet; retry shortly`,
    request_id: String(refused.headers['x-request-id'])
  }, 'in the gateway\'s envelope')
  t.equal(refused.headers['retry-after'], '60')
  t.equal(deletions(s).length, 0, 'Mistral was not asked to delete the file')
  t.equal((await watchOf(s, jobId)).status, 'pending')

  const removed = await deleteFile(s, ws, output)
  t.equal(removed.statusCode, 200, 'deleted once the job is billed')
  t.same(removed.json(), { id: output, object: 'file', deleted: true }, 'Mistral\'s answer')
  t.equal(s.mistral.stores.files.has(output), false, 'Mistral deleted it')
  t.equal((await watchOf(s, jobId)).status, 'recorded', 'the job was billed')
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  t.match(await recordsOf(s, ws.id), [{
    requestId: `batch:${jobId}`, promptTokens, completionTokens: WORDS * PROMPTS.length
  }], 'from its output')
  const paths = s.mistral.received.map((request) => `${request.method} ${request.path}`)
  t.ok(paths.lastIndexOf(`GET ${content}`) < paths.indexOf(`DELETE /v1/files/${output}`),
    'its output file was read before Mistral was asked to delete it')
  t.notOk(paths.some((path) => path.includes('inline=true')), 'not its results inline')
})

t.test('a file that is no pending job\'s output is deleted as it comes, with no read of any job', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const other = await s.createWorkspace()
  const { jobId, output } = await endedNotBilled(t, s, ws)
  const reads = () => s.mistral.received.filter((request) => request.method === 'GET').length
  const before = reads()

  const upload = s.mistral.addFile({ filename: 'notes.jsonl', bytes: 10 })
  const uploaded = await deleteFile(s, ws, upload.id)
  t.same([uploaded.statusCode, uploaded.json()], [200, { id: upload.id, object: 'file', deleted: true }])
  // another workspace's deletion of the file leaves the job alone, as its deletion of the job would
  const foreign = await deleteFile(s, other, output)
  t.equal(foreign.statusCode, 200)
  t.equal(reads(), before, 'nothing was read from Mistral for either')
  t.equal((await watchOf(s, jobId)).status, 'pending', 'the job was not checked')
  t.same(deletions(s).map((request) => request.path), [`/v1/files/${upload.id}`, `/v1/files/${output}`])
})

t.test('the output file of a billed job, or of one whose key was removed, is deleted as it comes', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace({ keys: ['default', 'batch'] })
  const billed = await endedNotBilled(t, s, ws)
  await s.app.database.db.update(watchedJobs).set({ checkedAt: null }).where(eq(watchedJobs.jobId, billed.jobId))
  await s.app.batchJobs.poll()
  t.equal((await watchOf(s, billed.jobId)).status, 'recorded', 'billed by the next poll')
  const reads = s.mistral.requestsTo(`/v1/batch/jobs/${billed.jobId}`).length
  t.equal((await deleteFile(s, ws, billed.output)).statusCode, 200)
  t.equal(s.mistral.requestsTo(`/v1/batch/jobs/${billed.jobId}`).length, reads, 'without reading the job again')

  // a job whose key is gone cannot be read: its output file goes, but the job stays watched, as it stays at Mistral
  const created = await s.app.inject({
    method: 'POST',
    url: '/v1/batch/jobs',
    headers: { ...ws.headers, 'x-tramontane-key': 'batch' },
    payload: { endpoint: '/v1/chat/completions', model: MODEL, requests }
  })
  const jobId = String(created.json().id)
  const output = String(completeBatchJob(s.mistral.stores, jobId, { completionTokens: WORDS }).output_file)
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, `/v1/files/${output}/content`)
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, jobId), { status: 'pending', outputFile: output })
  t.equal((await s.admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/batch`)).statusCode, 204)
  t.equal((await deleteFile(s, ws, output)).statusCode, 200, 'the gateway could not bill it first: it goes')
  t.match(await watchOf(s, jobId), { status: 'pending', keyName: 'batch' }, 'the job is still watched')
})

t.test('should Mistral name a running job\'s output file, its deletion is refused while the job runs', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const job = await new Mistral({ apiKey: ws.token, serverURL: s.url }).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests
  })
  const file = s.mistral.addFile({ filename: `${job.id}.jsonl`, bytes: 10 })
  s.mistral.stores.batchJobs.get(job.id)!.output_file = file.id
  await s.app.batchJobs.poll()
  t.match(await watchOf(s, job.id), { status: 'pending', upstreamStatus: 'QUEUED', outputFile: file.id })
  const refused = await deleteFile(s, ws, file.id)
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), {
    code: 'conflict',
    message: `File ${file.id} is the output of batch job ${job.id}, which is still running (QUEUED): ` +
      'delete it once the job has ended'
  })
  t.equal(deletions(s).length, 0)
})

t.test('a file deletion while PostgreSQL does not answer is refused 503 with Retry-After, then goes on', async (t) => {
  const { proxy, url: proxiedUrl } = await proxiedDatabase(t, databaseUrl)
  const s = await setup(t, { DATABASE_URL: proxiedUrl })
  const ws = await s.createWorkspace()
  // a first deletion while PostgreSQL answers: the token is then known to the gateway, which need not read it again
  t.equal((await deleteFile(s, ws, s.mistral.addFile({ filename: 'old.jsonl', bytes: 10 }).id)).statusCode, 200)
  const upload = s.mistral.addFile({ filename: 'notes.jsonl', bytes: 10 })

  proxy.cut()
  const refused = await deleteFile(s, ws, upload.id)
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), {
    object: 'error',
    type: 'server_error',
    code: 'not_ready',
    message: /^The file cannot be checked before its deletion right now \(the database does not answer\)/,
    request_id: String(refused.headers['x-request-id'])
  })
  t.equal(refused.headers['retry-after'], '5')
  t.equal(deletions(s).length, 1, 'Mistral was not asked to delete it')

  proxy.restore()
  // the pool may first meet a connection the cut broke: the client retries, as told
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(50)) {
    const res = await deleteFile(s, ws, upload.id)
    if (res.statusCode === 503) continue
    t.equal(res.statusCode, 200, 'deleted once PostgreSQL answers')
    break
  }
  t.equal(deletions(s).length, 2)
})

/** What Mistral was asked, in order, as `METHOD path`. */
const asked = (s: TestApp) => s.mistral.received.map((request) => `${request.method} ${request.path}`)

t.test('an output file a read named without the gateway looking (the jobs list, a read with inline) is billed ' +
  'before its deletion', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const sdk = new Mistral({ apiKey: ws.token, serverURL: s.url })
  const promptTokens = PROMPTS.reduce((sum, text) => sum + countTokens(text), 0)
  for (const read of ['the jobs list', 'a read with inline'] as const) {
    const job = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests })
    completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS })
    const shown = read === 'the jobs list'
      ? (await sdk.batch.jobs.list()).data?.find((each) => each.id === job.id)
      : await sdk.batch.jobs.get({ jobId: job.id, inline: true })
    const output = String(shown?.outputFile)
    t.match(await watchOf(s, job.id), { status: 'pending', outputFile: null }, `${read}: the gateway read none of it`)

    const removed = await deleteFile(s, ws, output)
    t.same([removed.statusCode, removed.json()], [200, { id: output, object: 'file', deleted: true }], read)
    t.match(await watchOf(s, job.id), { status: 'recorded', outputFile: output },
      `${read}: the job was billed before its output went`)
    const paths = asked(s)
    t.ok(paths.lastIndexOf(`GET /v1/files/${output}/content`) < paths.indexOf(`DELETE /v1/files/${output}`) &&
      paths.includes(`GET /v1/files/${output}/content`), `${read}: its output was read before it was deleted`)
    const [record] = await s.app.database.db.select().from(usageRecords)
      .where(eq(usageRecords.requestId, `batch:${job.id}`))
    t.match(record, { promptTokens, completionTokens: WORDS * PROMPTS.length }, `${read}: billed from its output`)
  }
})

t.test('a read of a job that ended, then its output\'s deletion at once: the job is billed before the file goes',
  async (t) => {
    const s = await setup(t)
    const ws = await s.createWorkspace()
    const sdk = new Mistral({ apiKey: ws.token, serverURL: s.url })
    for (let round = 0; round < 5; round++) {
      const job = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests })
      const output = String(completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS }).output_file)
      // the read's answer names the output file while the check it started is still under way
      const read = await s.app.inject({ method: 'GET', url: `/v1/batch/jobs/${job.id}`, headers: ws.headers })
      t.equal(read.json().output_file, output)
      const removed = await deleteFile(s, ws, output)
      t.equal(removed.statusCode, 200, `round ${round}: deleted`)
      t.equal((await watchOf(s, job.id)).status, 'recorded', `round ${round}: the job was billed first`)
      const paths = asked(s)
      t.ok(paths.includes(`GET /v1/files/${output}/content`) &&
        paths.lastIndexOf(`GET /v1/files/${output}/content`) < paths.indexOf(`DELETE /v1/files/${output}`),
      `round ${round}: its output was read before it was deleted`)
    }
  })

t.test('while jobs run, a file deletion reads the file from Mistral, and no job unless it is a job\'s output',
  async (t) => {
    const s = await setup(t)
    const ws = await s.createWorkspace()
    const sdk = new Mistral({ apiKey: ws.token, serverURL: s.url })
    const billed = await endedNotBilled(t, s, ws)
    await s.app.database.db.update(watchedJobs).set({ checkedAt: null }).where(eq(watchedJobs.jobId, billed.jobId))
    await s.app.batchJobs.poll()
    t.equal((await watchOf(s, billed.jobId)).status, 'recorded')
    const running = await sdk.batch.jobs.create({ endpoint: '/v1/chat/completions', model: MODEL, requests })
    const before = asked(s).length

    // the output of a job billed, which its watch names: nothing is read from Mistral
    t.equal((await deleteFile(s, ws, billed.output)).statusCode, 200)
    t.same(asked(s).slice(before), [`DELETE /v1/files/${billed.output}`], 'the billed job\'s output: no read')

    // an upload is no job's output, as Mistral's file says: the running job is not read
    const upload = s.mistral.addFile({ filename: 'notes.jsonl', bytes: 10 })
    t.equal((await deleteFile(s, ws, upload.id)).statusCode, 200)
    t.same(asked(s).slice(before + 1), [`GET /v1/files/${upload.id}`, `DELETE /v1/files/${upload.id}`],
      'an upload: its file read, no job')
    t.equal(s.mistral.requestsTo(`/v1/batch/jobs/${running.id}`).length, 0, 'the running job was not read')
    t.match(await watchOf(s, running.id), { status: 'pending', outputFile: null })
  })

t.test('a file that may be a pending job\'s output is not deleted while Mistral cannot say whose it is', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const job = await new Mistral({ apiKey: ws.token, serverURL: s.url }).batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests
  })
  const output = String(completeBatchJob(s.mistral.stores, job.id, { completionTokens: WORDS }).output_file)
  // the list of the jobs that ended, which would name the job as the file's
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, { method: 'GET', path: '/v1/batch/jobs' })
  const refused = await deleteFile(s, ws, output)
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), {
    code: 'conflict',
    message: 'The file may be the output of a batch job of the workspace not billed yet, which could not be ' +
      'checked; retry shortly'
  })
  t.equal(refused.headers['retry-after'], '60')
  t.equal(deletions(s).length, 0, 'Mistral was not asked to delete it')

  t.equal((await deleteFile(s, ws, output)).statusCode, 200, 'deleted once Mistral answers')
  t.equal((await watchOf(s, job.id)).status, 'recorded', 'the job was billed first')
})

/** A file Mistral wrote as a batch job's output, of a job the gateway never saw. */
const batchResult = { filename: 'out.jsonl', purpose: 'batch', sampleType: 'batch_result', source: 'mistral' }

async function createJob (s: TestApp, ws: TestWorkspace, keyName = 'default'): Promise<string> {
  const created = await s.app.inject({
    method: 'POST',
    url: '/v1/batch/jobs',
    headers: { ...ws.headers, 'x-tramontane-key': keyName },
    payload: {
      endpoint: '/v1/chat/completions', model: MODEL, requests: [{ body: { messages: [{ role: 'user', content: 'hi' }] } }]
    }
  })
  if (created.statusCode !== 200) throw new Error(`job not created: ${created.statusCode} ${created.body}`)
  return String(created.json().id)
}

t.test('a pending job whose Mistral key Mistral refuses, or the gateway marked invalid, holds back no other file',
  async (t) => {
    const s = await setup(t)
    const ws = await s.createWorkspace({ keys: ['default', 'old'] })
    const jobId = await createJob(s, ws, 'old')
    // Mistral has since revoked the key the job was created with: only the default one is valid
    s.mistral.validKeys.add(ws.mistralKey)

    const upload = s.mistral.addFile({ filename: 'notes.jsonl', bytes: 10 })
    t.equal((await deleteFile(s, ws, upload.id)).statusCode, 200, 'an upload goes')
    const elsewhere = s.mistral.addFile(batchResult)
    t.equal((await deleteFile(s, ws, elsewhere.id)).statusCode, 200, 'the output of a job the gateway never saw goes')

    // a call meets Mistral's 401: the key is marked invalid, and no check reads with it again
    const call = await s.app.inject({ url: '/v1/models', headers: { ...ws.headers, 'x-tramontane-key': 'old' } })
    t.match([call.statusCode, call.json()], [502, { code: 'mistral_key_rejected' }])
    const keys = (await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json
    t.match(keys, { data: [{ name: 'default', status: 'active' }, { name: 'old', status: 'invalid' }] })
    const before = s.mistral.received.length
    const another = s.mistral.addFile(batchResult)
    t.equal((await deleteFile(s, ws, another.id)).statusCode, 200)
    t.notOk(s.mistral.received.slice(before).some((request) => request.apiKey === `${ws.mistralKey}-old`),
      'nothing was read with the invalid key')
    t.match(await watchOf(s, jobId), { status: 'pending', outputFile: null }, 'the job is still watched')
  })

t.test('a key Mistral cannot answer for leaves the check to the workspace\'s other keys; refused only when none ' +
  'could answer', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace({ keys: ['default', 'batch'] })
  const jobId = await createJob(s, ws, 'batch')
  const output = String(completeBatchJob(s.mistral.stores, jobId).output_file)
  const batchKey = `${ws.mistralKey}-batch`

  // the job's key is rate limited: the default key reads the file, and the jobs that ended, in its place; the job
  // itself is read with its own key, which cools down for the second Mistral asks: the file goes once it is billed
  s.mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: `/v1/files/${output}` })
  const held = await deleteFile(s, ws, output)
  t.match([held.statusCode, held.json()], [409, { code: 'conflict' }], 'held back while the job\'s key cools down')
  t.match(s.mistral.requestsTo(`/v1/files/${output}`), [{ method: 'GET', apiKey: batchKey, status: 429 },
    { method: 'GET', apiKey: ws.mistralKey, status: 200 }], 'the default key read the file in its place')
  await sleep(1_100)
  t.equal((await deleteFile(s, ws, output)).statusCode, 200, 'deleted once the cooldown ended')
  t.equal((await watchOf(s, jobId)).status, 'recorded', 'the job was billed before its output went')

  // neither key answers: the file may be a job's output, which could not be checked
  const other = await createJob(s, ws, 'batch')
  const second = String(completeBatchJob(s.mistral.stores, other).output_file)
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, `/v1/files/${second}`)
  s.mistral.enqueueError(503, MISTRAL_DOWN, {}, `/v1/files/${second}`)
  const refused = await deleteFile(s, ws, second)
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { code: 'conflict', message: /which could not be checked; retry shortly$/ })
  t.equal(refused.headers['retry-after'], '60')
  t.same(s.mistral.requestsTo(`/v1/files/${second}`).map((request) => [request.apiKey, request.status]),
    [[batchKey, 503], [ws.mistralKey, 503]], 'each key was asked once')
  t.equal((await deleteFile(s, ws, second)).statusCode, 200, 'deleted once Mistral answers')
  t.equal((await watchOf(s, other)).status, 'recorded')
})

t.test('a file deletion reads the jobs that ended in one list, not each running job, and deletions at once share it',
  async (t) => {
    const s = await setup(t)
    const ws = await s.createWorkspace()
    const running: string[] = []
    for (let i = 0; i < 30; i++) running.push(await createJob(s, ws))
    const ended = await createJob(s, ws)
    const output = String(completeBatchJob(s.mistral.stores, ended).output_file)
    const gets = (from: number) => s.mistral.received.slice(from).filter((request) => request.method === 'GET')
      .map((request) => request.path.split('?')[0])

    // the output of a job the gateway never saw, deleted ten times at once
    const elsewhere = s.mistral.addFile(batchResult)
    const before = s.mistral.received.length
    const answers = await Promise.all(Array.from({ length: 10 }, () => deleteFile(s, ws, elsewhere.id)))
    t.same(answers.map((answer) => answer.statusCode).sort(), [200, ...Array(9).fill(404)], 'deleted once')
    t.same(gets(before), [`/v1/files/${elsewhere.id}`, '/v1/batch/jobs'], 'one check: the file, then one list')
    const [list] = s.mistral.received.slice(before).filter((request) => request.path.startsWith('/v1/batch/jobs?'))
    const query = new URL(list.path, 'http://x').searchParams
    t.same(query.getAll('status').sort(), ['CANCELLATION_REQUESTED', 'CANCELLED', 'FAILED', 'SUCCESS',
      'TIMEOUT_EXCEEDED'], 'of the jobs that may have an output')
    t.ok(query.has('created_after'), 'created since the oldest job the check looks for')
    t.match(await watchOf(s, ended), { status: 'pending', outputFile: output },
      'the list named the ended job\'s output')

    // which then goes as the job's own: billed first, with no list
    const next = s.mistral.received.length
    t.equal((await deleteFile(s, ws, output)).statusCode, 200)
    t.equal((await watchOf(s, ended)).status, 'recorded')
    t.notOk(gets(next).includes('/v1/batch/jobs'), 'no list')
    t.notOk(running.some((jobId) => s.mistral.requestsTo(`/v1/batch/jobs/${jobId}`).length > 0),
      'no running job was read')
  })

/** The next read of the file at Mistral stalls until `release()`, then answers the file as Mistral would. */
function stallFileRead (s: TestApp, fileId: string) {
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  s.mistral.enqueue(async (_req, res) => {
    await gate
    if (res.destroyed) return
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(s.mistral.stores.files.get(fileId)))
  }, `/v1/files/${fileId}`)
  return { release, read: () => s.mistral.requestsTo(`/v1/files/${fileId}`)[0] }
}

async function until (condition: () => boolean, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(20)) if (condition()) return true
  return condition()
}

t.test('a check Mistral does not answer ends within its budget, in a 409 with Retry-After', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  await createJob(s, ws)
  const file = s.mistral.addFile(batchResult)
  const stalled = stallFileRead(s, file.id)
  // without a budget, the deletion would wait on Mistral for as long as the read takes
  const released = setTimeout(stalled.release, 15_000)
  t.teardown(() => clearTimeout(released))
  const started = Date.now()
  const refused = await deleteFile(s, ws, file.id)
  const took = Date.now() - started
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { code: 'conflict', message: /which could not be checked; retry shortly$/ })
  t.equal(refused.headers['retry-after'], '60')
  t.ok(took >= 9_500 && took < 12_000, `answered after the check's 10 s (${took} ms)`)
  t.ok(await until(() => stalled.read().aborted, 2_000), 'the read at Mistral was cut')
  stalled.release()
  t.equal(deletions(s).length, 0)
})

t.test('a client that leaves stops the check, unless another deletion of the file waits on it', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  await createJob(s, ws)
  /** A deletion by a client that leaves once Mistral has been asked about the file. */
  const leaving = async (fileId: string, read: () => unknown) => {
    const client = httpRequest(new URL(`/v1/files/${fileId}`, s.url), { method: 'DELETE', headers: ws.headers })
    client.on('error', () => {})
    client.end()
    t.ok(await until(() => read() !== undefined, 5_000), 'Mistral was asked about the file')
    client.destroy()
  }

  const shared = s.mistral.addFile({ filename: 'notes.jsonl', bytes: 10 })
  const waited = stallFileRead(s, shared.id)
  const staying = deleteFile(s, ws, shared.id)
  await leaving(shared.id, waited.read)
  await sleep(500)
  t.equal(waited.read().aborted, false, 'the read goes on for the deletion still waiting')
  waited.release()
  t.equal((await staying).statusCode, 200, 'which goes')
  t.equal(s.mistral.requestsTo(`/v1/files/${shared.id}`).filter((request) => request.method === 'GET').length, 1,
    'both shared one read')

  const alone = s.mistral.addFile({ filename: 'notes.jsonl', bytes: 10 })
  const left = stallFileRead(s, alone.id)
  t.teardown(left.release)
  await leaving(alone.id, left.read)
  t.ok(await until(() => left.read().aborted, 2_000), 'the read at Mistral was cut when the client left')
  await sleep(200)
  t.notOk(deletions(s).some((request) => request.path === `/v1/files/${alone.id}`), 'the file was not deleted')
})

t.test('the list holds only the jobs that could have written the file, and a few pages of it at most', async (t) => {
  const s = await setup(t)
  const ws = await s.createWorkspace()
  const jobId = await createJob(s, ws)
  const output = String(completeBatchJob(s.mistral.stores, jobId).output_file)
  const now = Math.floor(Date.now() / 1000)
  /** Jobs of the organisation that ended, created at `createdAt` (Unix seconds), each with an output. */
  const organisationJobs = (count: number, createdAt: number) => {
    for (let i = 0; i < count; i++) {
      const id = randomUUID()
      s.mistral.stores.batchJobs.set(id, {
        id, status: 'SUCCESS', created_at: createdAt, output_file: s.mistral.addFile(batchResult).id
      })
    }
  }
  const lists = () => s.mistral.received.filter((request) => request.path.startsWith('/v1/batch/jobs?'))
  // created an hour before the job, and an hour after the file: none of them can be the file's
  organisationJobs(400, now - 3_600)
  organisationJobs(400, now + 3_600)
  const file = s.mistral.addFile(batchResult)
  t.equal((await deleteFile(s, ws, file.id)).statusCode, 200)
  t.equal(lists().length, 1, 'one page')
  t.equal((await watchOf(s, jobId)).outputFile, output, 'the job that ended was on it')

  // more jobs than three pages ended while the workspace's could have been the file's: it could not be checked
  const running = await createJob(s, ws)
  organisationJobs(350, now)
  const busy = s.mistral.addFile(batchResult)
  const before = lists().length
  const refused = await deleteFile(s, ws, busy.id)
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { code: 'conflict', message: /which could not be checked; retry shortly$/ })
  t.equal(lists().length - before, 3, 'three pages, no more')
  t.match(await watchOf(s, running), { status: 'pending', outputFile: null })
})
