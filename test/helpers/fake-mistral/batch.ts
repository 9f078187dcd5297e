import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { FakeContext } from './context.js'
import { sendNotFound } from './errors.js'
import { addFile } from './files.js'
import { hexId, unixSeconds } from './ids.js'
import { DEFAULT_ORGANISATION, heldBy, ownedBy, type BatchJob, type Stores } from './stores.js'
import { completionUsage, countTokens, generatedWords, messagesText } from './usage.js'

interface BatchBody {
  input_files?: string[] | null
  requests?: BatchRequest[] | null
  endpoint?: string
  model?: string | null
  agent_id?: string | null
  metadata?: Record<string, string> | null
  timeout_hours?: number
}

/** `BatchRequest` of the spec: one line of an input file, or one inline request */
interface BatchRequest {
  custom_id?: string | null
  body?: Record<string, unknown>
}

interface JobParams { job_id: string }

/** The filters of `GET /v1/batch/jobs` the fake applies. */
interface ListQuery {
  status?: string | string[]
  page?: string
  page_size?: string
  created_after?: string
  order_by?: string
}

/** How a job ends, for `completeBatchJob`. */
export interface BatchEnding {
  /** a terminal `BatchJobStatus` (default SUCCESS) */
  status?: 'SUCCESS' | 'FAILED' | 'TIMEOUT_EXCEEDED' | 'CANCELLED'
  /** requests answered, first in order (default: all of them on SUCCESS, none otherwise) */
  succeeded?: number
  /** requests that errored, next in order (default: the rest on SUCCESS and FAILED; a cancelled job never ran them) */
  failed?: number
  /** write the results to an output file (default true); otherwise they are only served inline (`?inline=true`) */
  outputFile?: boolean
  /** words each chat or FIM answer runs to, unless its `max_tokens` is lower (default 12) */
  completionTokens?: number
}

const TERMINAL = new Set(['SUCCESS', 'FAILED', 'TIMEOUT_EXCEEDED', 'CANCELLED'])

// what a job was asked to do and what it answered: kept beside the job, never shown as fields of the job itself
const jobInputs = new WeakMap<Stores, Map<string, BatchRequest[]>>()
const jobOutputs = new WeakMap<Stores, Map<string, unknown[]>>()

function inputsOf (stores: Stores): Map<string, BatchRequest[]> {
  let inputs = jobInputs.get(stores)
  if (!inputs) jobInputs.set(stores, inputs = new Map())
  return inputs
}

function outputsOf (stores: Stores): Map<string, unknown[]> {
  let outputs = jobOutputs.get(stores)
  if (!outputs) jobOutputs.set(stores, outputs = new Map())
  return outputs
}

/**
 * Ends a job as Mistral's workers would: each answered request is a line `{id, custom_id, response: {status_code,
 * body}, error}` whose body is what the endpoint answers, `usage` included; the lines go to an output file (JSONL)
 * and the errored requests to an error file. The counts, `output_file`, `error_file` and `completed_at` follow.
 */
export function completeBatchJob (stores: Stores, jobId: string, ending: BatchEnding = {}): BatchJob {
  const job = stores.batchJobs.get(jobId)
  if (!job) throw new Error(`no batch job ${jobId}`)
  const status = ending.status ?? 'SUCCESS'
  const requests = inputsOf(stores).get(jobId) ?? []
  const succeeded = Math.min(requests.length, ending.succeeded ?? (status === 'SUCCESS' ? requests.length : 0))
  const failed = Math.min(requests.length - succeeded,
    ending.failed ?? (status === 'SUCCESS' || status === 'FAILED' ? requests.length - succeeded : 0))
  const words = ending.completionTokens ?? 12
  const outputs = requests.slice(0, succeeded).map((request) => ({
    id: `batch-${hexId()}`,
    custom_id: request.custom_id ?? null,
    response: {
      status_code: 200, body: answerOf(String(job.endpoint), request.body ?? {}, job.model as string | null, words)
    },
    error: null
  }))
  const errors = requests.slice(succeeded, succeeded + failed).map((request) => ({
    id: `batch-${hexId()}`,
    custom_id: request.custom_id ?? null,
    response: {
      status_code: 400, body: { object: 'error', message: 'Invalid request', type: 'invalid_request_error' }
    },
    error: { message: 'Invalid request', code: 400 }
  }))
  const jsonl = (lines: unknown[]) => lines.map((line) => JSON.stringify(line) + '\n').join('')
  // the job's files are its organisation's
  const organisation = stores.owners.get(jobId)
  outputsOf(stores).set(jobId, outputs)
  const now = unixSeconds()
  Object.assign(job, {
    status,
    output_file: outputs.length > 0 && ending.outputFile !== false
      ? addFile(stores, {
        content: jsonl(outputs), filename: `${jobId}.jsonl`, numLines: outputs.length, ...written('batch_result'),
        organisation
      }).id
      : null,
    error_file: errors.length > 0
      ? addFile(stores, {
        content: jsonl(errors), filename: `${jobId}_error.jsonl`, numLines: errors.length, ...written('batch_error'),
        organisation
      }).id
      : null,
    errors: errors.length > 0 ? [{ message: 'Invalid request', count: errors.length }] : [],
    completed_requests: succeeded + failed,
    succeeded_requests: succeeded,
    failed_requests: failed,
    started_at: job.started_at ?? now,
    completed_at: now
  })
  return job
}

/** How Mistral marks the files a job writes (the example of `GET /v1/files` in its spec). */
const written = (sampleType: string) => ({ purpose: 'batch', sampleType, source: 'mistral' })

/** The body the endpoint would have answered the request with (MISTRAL-NOTES §2.5 for the usage shapes). */
function answerOf (endpoint: string, body: Record<string, unknown>, jobModel: string | null, words: number) {
  const model = typeof body.model === 'string' ? body.model : jobModel ?? ''
  if (endpoint === '/v1/chat/completions' || endpoint === '/v1/fim/completions') {
    const prompt = endpoint === '/v1/fim/completions'
      ? String(body.prompt ?? '') + String(body.suffix ?? '')
      : messagesText(body.messages)
    const limit = typeof body.max_tokens === 'number' ? body.max_tokens : words
    const content = generatedWords(Math.min(words, limit))
    return {
      id: hexId(),
      object: 'chat.completion',
      created: unixSeconds(),
      model,
      choices: [{
        index: 0, message: { role: 'assistant', content: content.join(''), tool_calls: null }, finish_reason: 'stop'
      }],
      usage: completionUsage(countTokens(prompt), content.length)
    }
  }
  // embeddings, moderations, classifications: the input is counted, nothing is generated
  const inputs = [body.input ?? body.inputs ?? ''].flat()
    .map((item) => typeof item === 'string' ? item : JSON.stringify(item))
  const promptTokens = inputs.reduce((sum, text) => sum + countTokens(text), 0)
  return {
    id: hexId(),
    object: endpoint === '/v1/embeddings' ? 'list' : 'moderation',
    model,
    data: [],
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0, prompt_audio_seconds: null }
  }
}

/**
 * The lines of the job's input files the fake holds the bytes of; an uploaded file's lines are unknown, so empty.
 * Undefined when the organisation does not have one of the files (another's, or none's).
 */
function fileRequests (stores: Stores, fileIds: string[], organisation: string): BatchRequest[] | undefined {
  const requests: BatchRequest[] = []
  for (const id of fileIds) {
    const file = ownedBy(stores, stores.files, id, organisation)
    if (!file) return undefined
    const content = stores.fileContents.get(id)
    if (!content) {
      requests.push(...Array.from({ length: file.num_lines ?? 0 }, () => ({ body: {} })))
      continue
    }
    requests.push(...content.toString('utf8').split('\n').filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as BatchRequest))
  }
  return requests
}

export async function batchRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  const jobs = ctx.stores.batchJobs

  app.post('/v1/batch/jobs', async function createJob (request, reply) {
    const body = ctx.body<BatchBody>(request)
    const inputFiles = body.input_files ?? []
    const organisation = ctx.organisation(request)
    // one request per line of each input file, or one per inline request
    const requests = body.requests ?? fileRequests(ctx.stores, inputFiles, organisation)
    // Mistral's answer to a file it does not have is not documented: the fake answers as its files routes do
    if (!requests) return sendNotFound(reply, 'File not found')
    const job: BatchJob = {
      id: randomUUID(),
      object: 'batch',
      input_files: inputFiles,
      metadata: body.metadata ?? null,
      endpoint: body.endpoint ?? '',
      model: body.model ?? null,
      agent_id: body.agent_id ?? null,
      output_file: null,
      error_file: null,
      errors: [],
      outputs: null,
      status: 'QUEUED',
      created_at: unixSeconds(),
      total_requests: requests.length,
      completed_requests: 0,
      succeeded_requests: 0,
      failed_requests: 0,
      started_at: null,
      completed_at: null
    }
    jobs.set(job.id, job)
    if (organisation !== DEFAULT_ORGANISATION) ctx.stores.owners.set(job.id, organisation)
    inputsOf(ctx.stores).set(job.id, requests)
    return job
  })

  app.get<{ Querystring: ListQuery }>('/v1/batch/jobs',
    async function listJobs (request) {
      const statuses = [request.query.status ?? []].flat()
      const { created_after: createdAfter } = request.query
      const after = createdAfter === undefined ? -Infinity : Date.parse(createdAfter) / 1000
      // newest first unless `order_by=created`
      const order = request.query.order_by === 'created' ? 1 : -1
      const organisation = ctx.organisation(request)
      const all = [...jobs.values()]
        .filter((job) => heldBy(ctx.stores, job.id, organisation) &&
          (statuses.length === 0 || statuses.includes(job.status)) && job.created_at > after)
        .sort((a, b) => order * (a.created_at - b.created_at))
      const page = Number(request.query.page ?? 0)
      const size = Number(request.query.page_size ?? 100)
      return { data: all.slice(page * size, (page + 1) * size), object: 'list', total: all.length }
    })

  app.get<{ Params: JobParams, Querystring: { inline?: string } }>('/v1/batch/jobs/:job_id',
    async function getJob (request, reply) {
      const job = ownedBy(ctx.stores, jobs, request.params.job_id, ctx.organisation(request))
      if (!job) return sendNotFound(reply, 'Batch job not found')
      // `inline=true`: the results in the job itself, once it has ended
      if (request.query.inline !== 'true' || !TERMINAL.has(job.status)) return job
      return { ...job, outputs: outputsOf(ctx.stores).get(job.id) ?? [] }
    })

  app.post<{ Params: JobParams }>('/v1/batch/jobs/:job_id/cancel', async function cancelJob (request, reply) {
    const job = ownedBy(ctx.stores, jobs, request.params.job_id, ctx.organisation(request))
    if (!job) return sendNotFound(reply, 'Batch job not found')
    // cancelling is asynchronous upstream: the job first shows the request
    if (job.status === 'QUEUED' || job.status === 'RUNNING') job.status = 'CANCELLATION_REQUESTED'
    return job
  })

  app.delete<{ Params: JobParams }>('/v1/batch/jobs/:job_id', async function deleteJob (request, reply) {
    const job = ownedBy(ctx.stores, jobs, request.params.job_id, ctx.organisation(request))
    if (!job) return sendNotFound(reply, 'Batch job not found')
    jobs.delete(job.id)
    ctx.stores.owners.delete(job.id)
    return { id: job.id, object: 'batch', deleted: true }
  })
}
