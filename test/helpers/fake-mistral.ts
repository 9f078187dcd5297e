import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify'
import { errorBodies } from '../fixtures/mistral/error-bodies.js'
import { loadStrictBodies } from '../fixtures/mistral/request-fields.js'
import { agentRoutes } from './fake-mistral/agents.js'
import { batchRoutes } from './fake-mistral/batch.js'
import { installBodyParsers } from './fake-mistral/body-parsers.js'
import { classifierRoutes } from './fake-mistral/classifiers.js'
import { completionRoutes } from './fake-mistral/completions.js'
import type { FakeContext } from './fake-mistral/context.js'
import { conversationRoutes } from './fake-mistral/conversations.js'
import { embeddingRoutes } from './fake-mistral/embeddings.js'
import { ValidationFailure } from './fake-mistral/errors.js'
import { addFile, fileRoutes, type NewFile } from './fake-mistral/files.js'
import { rateLimitHeaders } from './fake-mistral/headers.js'
import { hexId } from './fake-mistral/ids.js'
import { libraryRoutes } from './fake-mistral/libraries.js'
import { modelRoutes } from './fake-mistral/models.js'
import { ocrRoutes } from './fake-mistral/ocr.js'
import { createRecorder, type ReceivedRequest, type ReportedUsage } from './fake-mistral/recorder.js'
import { createScripts, type RequestFilter, type ScriptedHandler, type StreamGate } from './fake-mistral/scripts.js'
import { speechRoutes } from './fake-mistral/speech.js'
import { openSse, type StreamFault } from './fake-mistral/sse.js'
import { createStores, organisationOf, type FileRecord, type Stores } from './fake-mistral/stores.js'
import { transcriptionRoutes } from './fake-mistral/transcriptions.js'
import { bodyIssues, toolCallIdError } from './fake-mistral/validation.js'

export type { ReceivedRequest, ReportedUsage } from './fake-mistral/recorder.js'
export type { RequestFilter, ScriptedHandler, StreamGate } from './fake-mistral/scripts.js'
export type { StreamFault } from './fake-mistral/sse.js'
export { filePatternByte } from './fake-mistral/files.js'
// the rules behind every number the fake reports, for tests that compute what to expect
export { countTokens } from './fake-mistral/usage.js'
export { MODERATION_CATEGORIES } from './fake-mistral/classifiers.js'
export { FAKE_THINKING } from './fake-mistral/completions.js'
export { MID_STREAM_ERROR } from './fake-mistral/sse.js'
export { CONNECTOR_TOKENS_PER_CALL } from './fake-mistral/conversations.js'
export { OCR_DOCUMENT_PAGES, OCR_URL_DOCUMENT_BYTES } from './fake-mistral/ocr.js'
export { SPEECH_BYTES_PER_CHARACTER, SPEECH_CHARACTERS_PER_CHUNK } from './fake-mistral/speech.js'
export { AUDIO_BYTES_PER_SECOND, URL_AUDIO_SECONDS } from './fake-mistral/transcriptions.js'
export { errorBodies } from '../fixtures/mistral/error-bodies.js'

export interface FakeMistralOptions {
  /** 0, the default, picks a free port */
  port?: number
  /** Words each completion, conversation and transcription runs to (default 12) unless `max_tokens` stops it. */
  completionTokens?: number
  /** pause between SSE events (default 0) */
  streamDelayMs?: number
  /** pause before answering any request (default 0) */
  latencyMs?: number
  /** keep `received` and `reportedUsage` (default true); a benchmark turns it off */
  recordRequests?: boolean
  validKeys?: Iterable<string>
}

export interface RateLimitOptions {
  /** sends `Retry-After`, which no captured Mistral 429 shows: leave unset for the realistic case (§3.3) */
  retryAfterSeconds?: number
  /** the header names of MISTRAL-NOTES §3.3; 3, the current ones, by default */
  headersGeneration?: 1 | 2 | 3
  /** default: the current `rate_limited` body for generation 3, the older edge body for 1 and 2 */
  body?: unknown
  filter?: RequestFilter
}

export interface FakeMistral {
  /** e.g. `http://127.0.0.1:41234`, the root the SDK wants as `serverURL` (no `/v1`) */
  readonly url: string
  /** every request in arrival order, recorded from its first byte */
  readonly received: ReceivedRequest[]
  /** every usage the fake sent, in order, once the bytes carrying it were written */
  readonly reportedUsage: ReportedUsage[]
  /** when not empty, other keys get the edge's 401 */
  readonly validKeys: Set<string>
  /**
   * API key → its organisation, which alone sees the batch jobs and files its keys made (another's key gets 404, as
   * from Mistral); keys not named share one organisation
   */
  readonly organisations: Map<string, string>
  readonly inFlight: number
  readonly maxInFlight: number
  /** what the fake remembers: agents, files, libraries… for tests that need to reach in */
  readonly stores: Stores
  requestsTo (pathPrefix: string): ReceivedRequest[]
  /**
   * forgets requests, usage and pending scripts, the organisations of keys and of jobs and files (all then the one
   * keys share), and releases a held gate; keeps the other stores and the valid keys
   */
  reset (): void
  /** the next request matching `filter` is answered by `handler` instead */
  enqueue (handler: ScriptedHandler, filter?: RequestFilter): void
  enqueueError (status: number, body: unknown, headers?: Record<string, string>, filter?: RequestFilter): void
  enqueueRateLimit (options?: RateLimitOptions): void
  /** the next matching request waits `ms`, then gets its default answer */
  enqueueDelay (ms: number, filter?: RequestFilter): void
  /** While held, every SSE response sends its first event, then waits for `release()`. */
  holdStreams (): StreamGate
  /** the next SSE response (under `path`) stalls forever or loses its socket after `after` events */
  faultNextStream (fault: StreamFault & { path?: string }): void
  /** registers a file as if uploaded; `bytes` sets what `/content` serves (pattern bytes) */
  addFile (file: NewFile): FileRecord
  /** closes at once, open streams included */
  close (): Promise<void>
}

const GONE = {
  object: 'error',
  message: 'Fine-tuning jobs have been retired: /v1/fine_tuning/jobs is gone.',
  type: 'invalid_request_error',
  param: null,
  code: null,
  raw_status_code: 410
}

export async function startFakeMistral (options: FakeMistralOptions = {}): Promise<FakeMistral> {
  // the spec behind the schema checks is read now, not during the first request a test times
  loadStrictBodies()
  const recorder = createRecorder(options.recordRequests ?? true)
  const scripts = createScripts()
  const stores = createStores()
  const validKeys = new Set(options.validKeys ?? [])
  // forceCloseConnections: close() must not wait for streams that a test left open or stalled
  const app = Fastify({ forceCloseConnections: true })

  const ctx: FakeContext = {
    stores,
    completionTokens: options.completionTokens ?? 12,
    body<T> (request: FastifyRequest): T {
      const json = recorder.of(request.raw).json
      return (typeof json === 'object' && json !== null ? json : {}) as T
    },
    organisation: (request) => organisationOf(stores, recorder.of(request.raw).apiKey),
    form: (request) => recorder.of(request.raw).form ?? { fields: {}, files: [] },
    reportUsage: (request, model, usage, streamed) => recorder.reportUsage(request.raw, model, usage, streamed),
    openStream (request, reply, headers = {}) {
      reply.hijack()
      const record = recorder.of(request.raw)
      return openSse(reply.raw, headers, {
        gate: scripts.gate,
        fault: scripts.takeFault(pathnameOf(request.url)),
        delayMs: options.streamDelayMs ?? 0,
        onFault: (mode) => { record.fault = mode }
      })
    }
  }

  app.addHook('onRequest', async function record (request, reply) {
    recorder.start(request.raw, reply.raw)
  })
  installBodyParsers(app, recorder)

  // what Mistral does before any route: scripted answers first, then auth, then pydantic validation
  app.addHook('preHandler', async function asUpstream (request, reply) {
    const record = recorder.of(request.raw)
    const script = scripts.take(request.method, pathnameOf(request.url))
    if (script?.delayMs) await sleep(script.delayMs)
    if (script?.handler) {
      reply.hijack()
      await runScript(script.handler, request, reply, record)
      return reply
    }
    if (record.apiKey === undefined) return reply.code(401).send(errorBodies.unauthorizedApp.body)
    if (validKeys.size > 0 && !validKeys.has(record.apiKey)) {
      return reply.code(401).send({ message: 'Unauthorized', request_id: hexId() })
    }
    const route = request.routeOptions.url ?? ''
    const issues = bodyIssues(request.method, route, record.json)
    if (issues.length > 0) return reply.code(422).send({ detail: issues })
    // past pydantic, the model's own checks: Mistral's 400 for a tool-call id not of its 9-character form
    const badToolCallId = toolCallIdError(request.method, route, record.json)
    if (badToolCallId) return reply.code(400).send(badToolCallId)
    if (options.latencyMs) await sleep(options.latencyMs)
  })

  app.setErrorHandler(function asFastApi (err: FastifyError, _request, reply) {
    if (err instanceof ValidationFailure) return reply.code(422).send({ detail: err.detail })
    const status = err.statusCode ?? 500
    return reply.code(status).send({ detail: status >= 500 ? 'Internal Server Error' : err.message })
  })
  // FastAPI's answer to an unknown path
  app.setNotFoundHandler(function notFound (_request, reply) {
    return reply.code(404).send({ detail: 'Not Found' })
  })
  app.all('/v1/fine_tuning/jobs', async (_request, reply) => reply.code(410).send(GONE))
  app.all('/v1/fine_tuning/jobs/*', async (_request, reply) => reply.code(410).send(GONE))

  await app.register(completionRoutes, { ctx })
  await app.register(embeddingRoutes, { ctx })
  await app.register(modelRoutes)
  await app.register(agentRoutes, { ctx })
  await app.register(conversationRoutes, { ctx })
  await app.register(libraryRoutes, { ctx })
  await app.register(fileRoutes, { ctx })
  await app.register(batchRoutes, { ctx })
  await app.register(ocrRoutes, { ctx })
  await app.register(classifierRoutes, { ctx })
  await app.register(transcriptionRoutes, { ctx })
  await app.register(speechRoutes, { ctx })
  await app.listen({ host: '127.0.0.1', port: options.port ?? 0 })
  const { port } = app.server.address() as AddressInfo

  function enqueue (handler: ScriptedHandler, filter?: RequestFilter) {
    scripts.push({ filter, handler })
  }

  function enqueueError (status: number, body: unknown, headers: Record<string, string> = {}, filter?: RequestFilter) {
    const payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body)
    enqueue(function scriptedError (_req, res) {
      res.writeHead(status, { 'content-type': 'application/json', ...headers })
      res.end(payload)
    }, filter)
  }

  return {
    url: `http://127.0.0.1:${port}`,
    get received () { return recorder.received },
    get reportedUsage () { return recorder.reportedUsage },
    get inFlight () { return recorder.inFlight },
    get maxInFlight () { return recorder.maxInFlight },
    validKeys,
    organisations: stores.organisations,
    stores,
    requestsTo: (prefix) => recorder.received.filter((request) => pathnameOf(request.path).startsWith(prefix)),
    reset () {
      recorder.reset()
      scripts.reset()
      stores.organisations.clear()
      stores.owners.clear()
    },
    enqueue,
    enqueueError,
    enqueueRateLimit ({ retryAfterSeconds, headersGeneration = 3, body, filter } = {}) {
      const headers = rateLimitHeaders(headersGeneration, { cost: 0, exhausted: true, resetSeconds: retryAfterSeconds })
      if (retryAfterSeconds !== undefined) headers['retry-after'] = String(retryAfterSeconds)
      const shape = headersGeneration === 3 ? errorBodies.rateLimited : errorBodies.rateLimitedEdge
      enqueueError(429, body ?? shape.body, headers, filter)
    },
    enqueueDelay: (ms, filter) => scripts.push({ filter, delayMs: ms }),
    holdStreams: () => scripts.hold(),
    faultNextStream: (fault) => scripts.pushFault(fault),
    addFile: (file) => addFile(stores, file),
    async close () {
      recorder.closing = true
      scripts.reset()
      await app.close()
    }
  }
}

async function runScript (handler: ScriptedHandler, request: FastifyRequest, reply: FastifyReply,
  record: ReceivedRequest) {
  try {
    await handler(request.raw, reply.raw, record)
  } catch {
    // a broken script must still end the exchange, as a crashing upstream would
    reply.raw.destroy()
  }
}

function pathnameOf (path: string): string {
  const query = path.indexOf('?')
  return query === -1 ? path : path.slice(0, query)
}
