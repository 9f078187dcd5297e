import type { IncomingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config.js'
import {
  answeredStatus, badRequest, clientClosed, errorEnvelope, GatewayError, invalidToken, organizationRouteDenied,
  scopeDenied, unknownMistralKey, unknownRoute, upstreamCut, upstreamMalformed, upstreamStalled, upstreamTimeout,
  workspaceSuspended
} from '../errors.js'
import { createRetryBudget } from '../resilience/retry-budget.js'
import type { MistralKeyStore } from '../tenancy/mistral-keys.js'
import type { TenantContext } from '../tenancy/tokens.js'
import { acceptJsonBodies, readAsFastApiDoes } from '../json-body.js'
import { sendWithRetries, type Answer, type AttemptDeps } from './attempts.js'
import { downstreamHeaders } from './headers.js'
import { operationTable, type MeteredFamily, type Operation } from './operations.js'
import { basePath, type UpstreamPool } from './upstream.js'
import { readJsonFacts } from './json-usage.js'
import { createJsonTap, createSseTap, type SseShaping } from './usage-tap.js'
import { sentByOpenAiClient, translateChatRequest, translateEmbeddingsRequest } from '../dialects/openai-request.js'
import {
  base64Embeddings, openAiChatCompletion, openAiStreamShaping, rewriteAnswer, withOpenAiError
} from '../dialects/openai-response.js'
import { flaggedModerations, openAiModerations, translateModerationRequest } from '../dialects/openai-moderations.js'
import { streamErrorShaping } from '../dialects/openai-stream-errors.js'
import {
  BATCH_JOB_DELETION, batchJobCall, billBeforeDeletion, billBeforeFileDeletion, FILE_DELETION, observeBatchJob
} from './batch-hook.js'
import { meterCall, type Meter } from './meter.js'
import { boundOutput, quoteBatchCreation, quoteCall } from './quote.js'
import { transcriptionAudio } from './transcription-source.js'
import { isRegionalHost } from '../pricing/region.js'
import { holdLine, settled as lineSettled, unrouted } from '../request-line.js'

declare module 'fastify' {
  interface FastifyRequest {
    tenant: TenantContext | null
    operation: Operation | null
  }
}

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']
const DOT_SEGMENT = /\/\.\.?(\/|$)|\\/

/** `/v1/*` and `/v2/*`: every operation of Mistral's spec, forwarded with the workspace's own Mistral key. */
export async function proxyRoutes (app: FastifyInstance, { config, pool }: { config: Config, pool: UpstreamPool }) {
  const prefix = basePath(config.MISTRAL_BASE_URL)
  const regional = isRegionalHost(config.MISTRAL_BASE_URL)

  app.decorateRequest('tenant', null)
  app.decorateRequest('operation', null)
  app.decorateRequest('outcome', null)

  // JSON is parsed once (to read model and stream), everything else (multipart uploads, audio) streams through
  app.removeAllContentTypeParsers()
  acceptJsonBodies(app, config.BODY_LIMIT_BYTES)
  app.addContentTypeParser('*', (_request, payload, done) => done(null, payload))

  app.addHook('onRequest', async (request) => {
    const tenant = await app.tenancy.tokens.authenticate(bearer(request.headers.authorization))
    if (!tenant) throw invalidToken()
    if (tenant.workspace.status !== 'active') throw workspaceSuspended(`Workspace '${tenant.workspace.slug}' is suspended`)
    const queryAt = request.url.indexOf('?')
    const rawPath = queryAt === -1 ? request.url : request.url.slice(0, queryAt)
    // Mistral (uvicorn) percent-decodes before it routes: classify what it will route, or an escape could disguise
    // an organisation route
    const pathname = rawPath.includes('%') ? decodePath(rawPath) : rawPath
    // a proxy on Mistral's side may resolve dot segments: no route of the API has one
    if (DOT_SEGMENT.test(pathname)) throw badRequest('The request path has a dot segment or a backslash')
    const match = operationTable.match(request.method, pathname)
    if (!match) {
      // the line says `unknown`, not a path of the client's making of any length
      unrouted(request)
      throw unknownRoute(`${request.method} ${pathname} is not an operation of the Mistral API`)
    }
    const { operation } = match
    // connectors activated for the whole organisation are told apart only by a path parameter
    // an allow-list: a consumer scope Mistral adds later is organisation-wide until we know better
    const consumerScope = match.params.consumer_scope
    const organizationWide = operation.organization ||
      (consumerScope !== undefined && consumerScope !== 'user' && consumerScope !== 'workspace')
    if (organizationWide && !tenant.workspace.allowOrganizationRoutes) {
      throw organizationRouteDenied(`${pathname} acts on the whole Mistral organisation; the operator has not allowed it`)
    }
    const { scopes } = tenant.token
    if (scopes.length > 0 && !scopes.includes(operation.area)) {
      throw scopeDenied(`This token's scopes do not include '${operation.area}'`)
    }
    if (operation.requestContentTypes.includes('application/json')) readAsFastApiDoes(request.raw.headers)
    request.tenant = tenant
    request.operation = operation
  })

  const attemptDeps: AttemptDeps = {
    pool, prefix, keys: app.tenancy.keys, health: app.keyHealth, metrics: app.metrics, budget: createRetryBudget(config.UPSTREAM_RETRY_BUDGET_PERCENT),
    audit: app.audit, config, log: app.log
  }

  const forward = async (request: FastifyRequest, reply: FastifyReply) => {
    const tenant = request.tenant as TenantContext
    const operation = request.operation as Operation
    const candidates = await keyCandidates(tenant, request.headers['x-tramontane-key'], app.tenancy.keys)
    const { body, rawBody: received } = requestBody(request.body)
    if (operation.metered !== null && operation.requestContentTypes.includes('application/json') && !isObject(body)) {
      // Mistral answers anything else with a 422; refused before the quote, which reads the object and bounds its
      // output, and before admission, so that nothing is held for it
      throw badRequest('The request body must be a JSON object')
    }
    const notes = translateDialect(operation, body, request.headers)
    // the model Mistral is asked for, once the dialect has named it (an OpenAI moderation without one runs on Mistral's)
    const model = modelOf(body)
    request.outcome = { model, keyName: candidates[0] }
    // a transcription's audio, as its form names it (an upload, a file at Mistral, a URL): what bounds its cost
    const audio = operation.metered === 'transcription'
      ? await transcriptionAudio({ body: received, headers: request.headers, tenant, candidates, deps: attemptDeps,
        client: reply.raw, log: request.log })
      : undefined
    const rawBody = audio ? audio.body : received
    // a file the lookup's key does not see: the call goes out on that key alone, which answers as the lookup did
    const callKeys = audio?.pinnedKey === undefined ? candidates : [audio.pinnedKey]
    // the key the call would go out with: what its line names if it is refused before it goes (admission, a cap)
    request.outcome.keyName = callKeys[0]

    // admission: the worst case of the call against every limit and cap, in one round trip
    const { workspace, token } = tenant
    const batchCall = batchJobCall(operation.id, request.url)
    // a batch job is billed when it ends: its creation is held to the spend caps too
    const capped = operation.metered !== null || batchCall === 'created'
    const priced = batchCall === 'created' ? quoteBatchCreation(body, app.prices, workspace.currency) : quoteCall({
      family: operation.metered,
      body: body as Record<string, unknown> | undefined,
      audioBytes: audio?.bytes,
      prices: app.prices,
      currency: workspace.currency,
      markupBps: workspace.markupBps,
      regional
    })
    const ticket = await app.admission.admit({
      requestId: request.id,
      workspace: { id: workspace.id, timezone: workspace.timezone, limits: workspace.limits, caps: capped ? workspace.caps : {} },
      token: { id: token.id, limits: token.limits, caps: capped ? token.caps : {} },
      // a call that names no model (an agent's, a conversation with an agent) counts under no per-model limit: it is
      // quoted at the dearest prices, not run on the model they are named after
      model: model ? priced.price?.model : undefined
    }, priced.quote).catch((err: unknown) => {
      // a refusal: a limit or cap reached (429), or caps that cannot be checked (503 budget_unavailable). A fault of
      // the gateway's own (its 500, such as time_zone_unknown) is no denial: the answers' metrics count it
      if (err instanceof GatewayError && err.statusCode !== 500) {
        app.metrics.denied(workspace.slug, err.param ?? err.code)
      }
      throw err
    })

    let keyName = callKeys[0]
    let meter: Meter
    try {
      // a watched batch job is billed before Mistral forgets it, or its output file; one still running is refused
      // (409). After admission, so that rate limits cover the check; awaited for those operations only, the hot path
      // pays no turn for it
      if (operation.id === BATCH_JOB_DELETION) {
        await billBeforeDeletion(app.batchJobs, request.url, workspace.id)
      } else if (operation.id === FILE_DELETION) {
        await billBeforeFileDeletion(app.batchJobs, request.url, workspace.id, reply.raw)
      }
      const startedAt = Date.now()
      // authentication, classification, admission and a deletion's billing are the gateway's part of the call
      const receivedAt = startedAt - Math.round(reply.elapsedTime)
      if (ticket) {
        reply.headers(ticket.headers)
        // a capped call's cost is bounded only by the max_tokens Mistral is sent
        if (priced.tokenBound && ticket.spend.length > 0) {
          boundOutput(operation.metered as MeteredFamily, body as Record<string, unknown>,
            ticket.clampedMaxTokens ?? priced.quote.maxTokens)
        }
      }
      meter = meterCall({
        request, operation, keyName: () => keyName, receivedAt, startedAt, app, requestJson: body, priced, ticket,
        // however the call ends: its tokens go on the request's line, which a client already gone gets now (its reply
        // never finishes, so no onResponse hook writes it)
        settled: (status, tokens) => {
          if (operation.metered) request.outcome!.totalTokens = tokens
          lineSettled(request, reply, status)
        }
      })
    } catch (err) {
      // no meter owns the admission yet: given back here, or the replica would renew its slot and reservation for as
      // long as it lives
      if (ticket) void app.admission.settle(ticket, { cost: 0, tokens: 0 })
      throw err
    }
    // from here the meter counts the call; one answered before is counted by app.ts' onResponse hook
    request.admitted = true
    holdLine(request)
    const controller = new AbortController()
    // the client hanging up cancels Mistral's work too (and stops the meter at what Mistral reported); but not a batch
    // job's creation: Mistral, which has the whole request, creates the job all the same, and its answer is what puts
    // the job in the watcher's hands to be billed
    const onClientClose = () => { if (!reply.raw.writableFinished && batchCall !== 'created') controller.abort() }
    // a client that left during authentication or admission is gone before anyone listened: fastify would then drop
    // the reply without reading the upstream body, and the call would never end
    if (reply.raw.destroyed) controller.abort()
    else reply.raw.once('close', onClientClose)
    const deadline = setTimeout(() => {
      controller.abort(new TotalTimeoutError())
      // a client that stopped reading would hold the call (its slot, its reservation, its record) for as long as its
      // socket lives: it is given a few seconds to read how the call ended, then its connection is cut
      setTimeout(() => { if (!reply.raw.writableFinished) reply.raw.destroy() }, READ_AFTER_DEADLINE_MS).unref()
    }, config.UPSTREAM_TOTAL_TIMEOUT_MS)

    let answer: Answer | undefined
    try {
      try {
        answer = await sendWithRetries({
          request,
          workspaceId: workspace.id,
          candidates: callKeys,
          body: body === undefined ? undefined : JSON.stringify(body),
          rawBody,
          signal: controller.signal
        }, attemptDeps)
      } catch (err) {
        // attempts.ts names every failure of Mistral's; anything else that ends the call before its abort (a key this
        // replica cannot open, a bug) is the gateway's own, which the catch below settles as the error handler answers
        if (!(err instanceof GatewayError) && !controller.signal.aborted) throw err
        clearTimeout(deadline)
        const failure = err instanceof GatewayError ? err : abortedCall(controller.signal)
        meter.settle({ status: failure.statusCode, upstreamStatus: undefined, tap: undefined, cut: false })
        throw failure
      }
      const { upstream, key } = answer
      keyName = key.name
      request.outcome.keyName = key.name
      request.outcome.upstreamStatus = upstream.statusCode
      if (controller.signal.aborted) {
        // the client left, or the total deadline passed, just as Mistral answered: the body is not read. Billed as a
        // cut call (estimated), as Mistral began
        clearTimeout(deadline)
        upstream.body.destroy()
        reply.raw.off('close', onClientClose)
        const failure = abortedCall(controller.signal)
        meter.settle({ status: failure.statusCode, upstreamStatus: upstream.statusCode, tap: undefined, cut: true })
        throw failure
      }
      const status = upstream.statusCode
      if (status < 200 || status > 599) {
        // undici reads any three digits; fastify cannot answer with such a status. The catch below settles the call
        // as this 502 (Mistral's status beside it) and reads off the body
        throw upstreamMalformed(`Mistral answered with HTTP status ${status}, outside HTTP's 200-599`)
      }
      const contentType = String(upstream.headers['content-type'] ?? '')
      const sse = contentType.startsWith('text/event-stream')
      if (operation.metered && !sse && status < 300 && (notes?.rewrite || readsWhole(upstream.headers))) {
        // read whole, then sent in one write: no stream to tap, and a body cut short becomes an error the client can
        // read instead of a truncated 200
        const answeredAt = Date.now()
        let whole: Buffer
        try {
          whole = Buffer.from(await upstream.body.arrayBuffer())
        } catch (err) {
          const failure = controller.signal.aborted ? abortedCall(controller.signal) : answerCut(err)
          meter.settle({ status: failure.statusCode, upstreamStatus: status, tap: undefined, cut: true })
          throw failure
        } finally {
          clearTimeout(deadline)
          reply.raw.off('close', onClientClose)
        }
        const settleWhole = (body: Buffer, finalStatus: number) => {
          const facts = readJsonFacts(body)
          const tap = {
            usage: facts?.usage, model: facts?.model, events: facts ? 1 : 0, firstByteAt: answeredAt, streamError: false,
            streamed: false
          }
          meter.settle({ status: finalStatus, upstreamStatus: status, tap, cut: false })
        }
        // a client that left as the answer came in is told nothing: the call is its, billed in full, recorded as a 499
        if (reply.raw.destroyed) {
          const gone = clientClosed('The client closed the connection before the answer was sent')
          settleWhole(whole, gone.statusCode)
          throw gone
        }
        let payload: Buffer | string = whole
        if (notes?.rewrite) {
          try {
            payload = rewriteAnswer(notes.rewrite, whole)
          } catch (err) {
            // a 200 whose body the dialect cannot read: an error the client can read, metered as the error it got.
            // Not the parser's message: it quotes a slice of the body
            request.log.warn({ err: { name: (err as Error).name }, bytes: whole.length, contentType },
              'Mistral\'s answer could not be rewritten for the client\'s dialect')
            const failure = upstreamMalformed('Mistral\'s answer is not the JSON it documents')
            settleWhole(whole, failure.statusCode)
            throw failure
          }
        }
        reply.code(status).headers(downstreamHeaders(upstream.headers))
        if (payload !== whole) reply.removeHeader('content-length')
        try {
          return reply.send(payload)
        } finally {
          // the meter's work after the answer's write, not before it: fastify has written it when send returns, as the
          // onSend hooks of app.ts are callbacks, run at once (an async one would put the write after this); the
          // reply's 'finish', which logs the request line with its tokens, comes a tick later
          settleWhole(whole, status)
        }
      }
      reply.code(status).headers(downstreamHeaders(upstream.headers))
      if (status >= 400 && contentType.startsWith('application/json')) {
        // small bodies, read whole: every SDK must see the message (DESIGN.md "Two dialects")
        const text = await upstream.body.text().catch(() => '')
        clearTimeout(deadline)
        meter.settle({ status, upstreamStatus: status, tap: undefined, cut: false })
        reply.removeHeader('content-length')
        return reply.send(withOpenAiError(text, status))
      }
      if (batchCall && status < 300) {
        // a job without its results is small: read whole, to watch the job or to bill it if it has ended
        let whole: Buffer
        try {
          whole = Buffer.from(await upstream.body.arrayBuffer())
        } finally {
          clearTimeout(deadline)
          meter.settle({ status, upstreamStatus: status, tap: undefined, cut: false })
        }
        await observeBatchJob(app.batchJobs, batchCall, request, key.name, body, whole)
        return reply.send(whole)
      }
      if (!operation.metered) {
        let fault: unknown
        upstream.body.once('error', (err) => { fault = err })
        upstream.body.once('close', () => {
          clearTimeout(deadline)
          // a stream of events of the workflows is a stream too, for the metrics
          if (sse) app.metrics.streamEnded(relayEnd(upstream.body.readableEnded, fault, controller.signal))
          meter.settle({ status, upstreamStatus: status, tap: undefined, cut: false, streamed: sse })
        })
        return reply.send(upstream.body)
      }
      const sseTap = sse ? createSseTap(streamShaping(notes)) : undefined
      // a shaped stream's length is not Mistral's
      if (sseTap) reply.removeHeader('content-length')
      const tap = sseTap ?? createJsonTap()
      let cut: unknown
      let settled = false
      const settle = () => {
        if (settled) return
        settled = true
        clearTimeout(deadline)
        reply.raw.off('close', onClientClose)
        meter.settle({ status, upstreamStatus: status, tap: tap.result, cut: Boolean(cut) })
      }
      // the tap ends before the reply finishes, so before onResponse writes the request's log line with the tokens
      tap.once('end', () => {
        if (sse) app.metrics.streamEnded(cut === undefined ? 'complete' : streamFaultOf(cut))
        settle()
      })
      tap.once('close', settle)
      upstream.body.once('error', (err) => {
        cut = err
        if (controller.signal.aborted && !(controller.signal.reason instanceof TotalTimeoutError)) {
          if (sse) app.metrics.streamEnded('client_abort')
          return tap.destroy()
        }
        request.log.warn({ err: { code: (err as NodeJS.ErrnoException).code } }, 'upstream stream cut')
        // the status has gone: an SSE client learns of the cut from an error event (never a [DONE]); JSON is cut short
        if (sseTap) sseTap.endCut(streamErrorEvent(request.id, err))
        else tap.destroy(err)
      })
      upstream.body.pipe(tap)
      return reply.send(tap)
    } catch (err) {
      // every way out above settles first; anything else that throws (a bug, a surprise from a library) must not
      // keep the call's slot, reservation and request line until they expire: settled as the error answered
      clearTimeout(deadline)
      reply.raw.off('close', onClientClose)
      // whatever is left of the body, read off (up to undici's limit, then dropped) so that the connection is reused
      answer?.upstream.body.dump().catch(() => {})
      // recorded as the error handler answers it: a PostgreSQL that did not answer is its 503, a library's error
      // that carries a status of its own is that status
      meter.settle({
        status: answeredStatus(err), upstreamStatus: request.outcome.upstreamStatus, tap: undefined, cut: false
      })
      throw err
    }
  }

  for (const url of ['/v1/*', '/v2/*']) {
    app.route({ method: METHODS, url, handler: forward, schema: { hide: true } })
  }
}

// what a client is given, past UPSTREAM_TOTAL_TIMEOUT_MS, to read the end of its answer (the error event of a cut stream)
const READ_AFTER_DEADLINE_MS = 5_000

class TotalTimeoutError extends Error {
  constructor () { super('upstream call exceeded UPSTREAM_TOTAL_TIMEOUT_MS'); this.name = 'TotalTimeoutError' }
}

function decodePath (path: string): string {
  let decoded: string
  try {
    decoded = decodeURIComponent(path)
  } catch {
    throw badRequest('The request path has an invalid percent-encoding')
  }
  return decoded
}

function bearer (header: string | undefined): string {
  if (!header || header.length < 8) return ''
  return header.slice(0, 7).toLowerCase() === 'bearer ' ? header.slice(7).trim() : ''
}

/**
 * A token bound to a key uses it, and `x-tramontane-key` pins one; otherwise `default`, then the workspace's other
 * keys in order when `default` is cooling down or failing (failover never leaves the workspace).
 */
async function keyCandidates (tenant: TenantContext, header: string | string[] | undefined, keys: MistralKeyStore):
Promise<string[]> {
  const asked = typeof header === 'string' && header.length > 0 ? header : undefined
  const bound = tenant.token.mistralKeyName
  if (bound !== null) {
    if (asked !== undefined && asked !== bound) {
      throw unknownMistralKey(`This token may only use the Mistral key '${bound}'`, { param: 'x-tramontane-key' })
    }
    return [bound]
  }
  const names = await keys.names(tenant.workspace.id)
  if (asked !== undefined) {
    // one of the workspace's names (cached), or no lookup at all: a name of the client's making would otherwise be a
    // database read, and a cache entry, of its own
    if (!names.includes(asked)) {
      throw unknownMistralKey(`No Mistral key named '${asked.slice(0, 64)}' in this workspace`, { param: 'x-tramontane-key' })
    }
    return [asked]
  }
  return names[0] === 'default' ? names : ['default']
}

/** What a response must become for an OpenAI client (DESIGN.md "Two dialects"), noted as its request is translated. */
interface Dialect {
  /** a final chunk with empty `choices` and the usage, as `stream_options.include_usage` asks */
  includeUsage: boolean
  /**
   * chat from a client known to speak OpenAI's dialect (its SDK's headers, or a parameter only OpenAI clients send):
   * a reasoning model's content chunks become text, `model_length` becomes `length`. A Mistral client needs them as
   * Mistral sent them
   */
  openAiClient?: boolean
  /**
   * parsed event by event (asked-for usage, tools that may be called, an OpenAI client's content); any other stream
   * passes as it comes but for Mistral's error events, which gain the `error` object openai-node throws on
   * (streamShaping)
   */
  reshapeStream?: boolean
  /** a 2xx JSON answer rewritten: base64 embeddings, moderation's `flagged`, an OpenAI client's chat answer */
  rewrite?: (body: string) => string
}

/** OpenAI-only parameters become Mistral's (chat family, embeddings, moderations); what the response must then do. */
function translateDialect (operation: Operation, body: unknown, headers: IncomingHttpHeaders): Dialect | undefined {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return undefined
  const json = body as Record<string, unknown>
  if (operation.metered === 'chat' || operation.metered === 'fim' || operation.metered === 'agents_completion') {
    const { includeUsage, openAiFields } = translateChatRequest(json, headers)
    if (openAiFields === true || sentByOpenAiClient(headers)) {
      return { includeUsage, openAiClient: true, reshapeStream: true, rewrite: openAiChatCompletion }
    }
    // Mistral's dialect, or plain HTTP: the answer is not parsed (`include_usage` is OpenAI's, so never asked here)
    return { includeUsage: false, reshapeStream: Array.isArray(json.tools) }
  }
  if (operation.metered === 'embeddings') {
    const { base64Embeddings: base64 } = translateEmbeddingsRequest(json)
    return { includeUsage: false, rewrite: base64 ? base64Embeddings : undefined }
  }
  // `/v1/chat/moderations` has no OpenAI counterpart
  if (operation.path === '/v1/moderations') {
    return { includeUsage: false, rewrite: translateModerationRequest(json) ? openAiModerations : flaggedModerations }
  }
  return undefined
}

/**
 * What a stream needs, done in the usage tap's own pass: an OpenAI client's reshaping (`reshapeStream`), or
 * else the error events' `error` object and whole events only, for every client (conversations and audio streams too).
 */
function streamShaping (notes: Dialect | undefined): SseShaping {
  return notes?.reshapeStream === true ? openAiStreamShaping(notes) : streamErrorShaping()
}

// a metered JSON answer up to this size is read whole; a larger one (OCR with its images) is relayed as it comes
const WHOLE_ANSWER_BYTES = 4 * 1024 * 1024

function readsWhole (headers: Record<string, string | string[] | undefined>): boolean {
  const length = Number(headers['content-length'])
  return Number.isInteger(length) && length <= WHOLE_ANSWER_BYTES
}

/** The upstream body ended early (its socket cut) or stalled past UPSTREAM_IDLE_TIMEOUT_MS. */
function answerCut (err: unknown): GatewayError {
  return streamFaultOf(err) === 'upstream_stalled'
    ? upstreamStalled('Mistral stopped sending its answer before it was complete')
    : upstreamCut('Mistral\'s answer ended before it was complete', { cause: err })
}

function streamFaultOf (err: unknown): 'upstream_stalled' | 'upstream_cut' | 'upstream_timeout' {
  // undici ends the body with the abort's reason: the gateway's own deadline, not a cut of Mistral's
  if (err instanceof TotalTimeoutError) return 'upstream_timeout'
  return (err as NodeJS.ErrnoException).code === 'UND_ERR_BODY_TIMEOUT' ? 'upstream_stalled' : 'upstream_cut'
}

/**
 * How a stream relayed with no tap ended. Destroyed with no error, it was by fastify as the client left; a client
 * that left first aborts the upstream body, which then errors.
 */
function relayEnd (ended: boolean, fault: unknown, signal: AbortSignal) {
  if (ended) return 'complete'
  if (fault === undefined || (signal.aborted && !(signal.reason instanceof TotalTimeoutError))) return 'client_abort'
  return streamFaultOf(fault)
}

/** An SSE event in the error envelope's shape: openai-node throws on an `error` key, the Mistral SDK on its shape. */
function streamErrorEvent (requestId: string, err: unknown): string {
  const code = streamFaultOf(err)
  const message = code === 'upstream_timeout'
    ? 'The stream did not finish within the gateway\'s total time for a call'
    : 'The upstream stream ended before it was complete'
  const body = { type: 'upstream_error', code, message, param: null }
  return `data: ${JSON.stringify(errorEnvelope(body, requestId))}\n\n`
}

const isObject = (value: unknown) => value !== null && typeof value === 'object' && !Array.isArray(value)

function requestBody (parsed: unknown) {
  if (parsed instanceof Readable) return { body: undefined, rawBody: parsed }
  return { body: parsed, rawBody: undefined }
}

function modelOf (body: unknown): string | undefined {
  const model = body !== null && typeof body === 'object' ? (body as Record<string, unknown>).model : undefined
  return typeof model === 'string' ? model : undefined
}

/**
 * A call its abort ended: the gateway's total deadline, or the client that left. A failure to reach Mistral is named
 * where it happens (attempts.ts, connectionFailure).
 */
function abortedCall (signal: AbortSignal): GatewayError {
  return signal.reason instanceof TotalTimeoutError
    ? upstreamTimeout('Mistral did not finish in time')
    : clientClosed('The client closed the connection before Mistral answered')
}
