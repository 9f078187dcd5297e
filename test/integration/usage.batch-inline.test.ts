import { once } from 'node:events'
import { Mistral } from '@mistralai/mistralai'
import { eq } from 'drizzle-orm'
import t from 'tap'
import { usageRecords, watchedJobs } from '../../src/db/schema.js'
import { buildTestApp, listen } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { completeBatchJob } from '../helpers/fake-mistral/batch.js'

// A job's results inline are as large as its output file: the watcher reads them as they download, as it reads the
// file, never whole.

// a database of this file's own: every replica's watcher polls every due job of its database, and another test
// file's gateways, polling often, would check these jobs with their own fake Mistral (which knows none of them)
const databaseUrl = await createScratchDatabase(t)

const MODEL = 'mistral-small-latest'

t.test('results inline past the longest string V8 can hold are billed, read as they download', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t,
    { BATCH_POLL_INTERVAL_MS: '600000', DATABASE_URL: databaseUrl })
  const url = await listen(app)
  const ws = await createWorkspace()
  const sdk = new Mistral({ apiKey: ws.token, serverURL: url })
  const job = await sdk.batch.jobs.create({
    endpoint: '/v1/chat/completions', model: MODEL, requests: [{ customId: '0', body: { messages: [] } }]
  })
  const ended = completeBatchJob(mistral.stores, job.id, { outputFile: false })

  // 530 answers of 1 MiB each: more than V8's longest string (2^29 - 24 characters), which reading the answer
  // whole would need
  const answers = 530
  const content = 'x'.repeat(1 << 20)
  const line = (i: number) => JSON.stringify({
    id: `batch-${i}`,
    custom_id: String(i),
    response: {
      status_code: 200,
      body: {
        model: MODEL,
        choices: [{ index: 0, message: { role: 'assistant', content: `"\\${content}` } }],
        usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 }
      }
    },
    error: null
  })
  let sent = 0
  mistral.enqueue(async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    const { outputs, ...rest } = ended
    const head = JSON.stringify({ ...rest, errors: [{ message: 'a "quoted" [bracket] {brace}', count: 0 }] })
    res.write(`${head.slice(0, -1)}, "outputs" : [`)
    for (let i = 0; i < answers; i++) {
      sent += 1
      if (!res.write(`${i === 0 ? '' : ','}\n  ${line(i)}`)) await once(res, 'drain')
    }
    res.end('],"tail":{"outputs":[1]}}')
  }, `/v1/batch/jobs/${job.id}`)

  await app.batchJobs.seen(ws.id, ended, 'default')
  t.equal(sent, answers, 'the whole answer was sent')
  const [watched] = await app.database.db.select().from(watchedJobs).where(eq(watchedJobs.jobId, job.id))
  t.equal(watched.status, 'recorded')
  const [record] = await app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, ws.id))
  t.match(record, { requestId: `batch:${job.id}`, promptTokens: 10 * answers, completionTokens: 5 * answers })
})
