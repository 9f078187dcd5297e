import t from 'tap'
import { batchJobCall } from '../../src/proxy/batch-hook.js'

const CREATE = 'jobs_api_routes_batch_create_batch_job'
const GET = 'jobs_api_routes_batch_get_batch_job'
const JOB = '/v1/batch/jobs/5f0a3c9e-2b8d-4e61-9a7f-0c1d2e3f4a5b'

t.test('a read that names `inline` streams through, however Mistral would read its value', async (t) => {
  // Mistral parses the flag leniently and takes the last of several: any of these may carry every result of the job
  for (const query of ['inline=true', 'inline=1', 'inline=True', 'inline=yes', 'inline=false&inline=true',
    'inline=false', 'inline', 'inline=', 'other=1&inline=on', '%69nline=true']) {
    t.equal(batchJobCall(GET, `${JOB}?${query}`), undefined, query)
  }
})

t.test('a read without `inline` is observed; a create is always', async (t) => {
  t.equal(batchJobCall(GET, JOB), 'read')
  t.equal(batchJobCall(GET, `${JOB}?`), 'read')
  t.equal(batchJobCall(GET, `${JOB}?inlined=true&not_inline=1`), 'read', 'only the parameter itself counts')
  t.equal(batchJobCall(CREATE, '/v1/batch/jobs'), 'created')
  t.equal(batchJobCall(CREATE, '/v1/batch/jobs?inline=true'), 'created')
})

t.test('other calls are not batch job calls', async (t) => {
  t.equal(batchJobCall('jobs_api_routes_batch_get_batch_jobs', '/v1/batch/jobs'), undefined)
  t.equal(batchJobCall('chat_completion_v1_chat_completions_post', '/v1/chat/completions'), undefined)
})
