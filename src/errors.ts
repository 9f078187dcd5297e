import type { FastifyBaseLogger, FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { databaseCause, databaseUnanswered } from './db/sql-state.js'

/** Every error the gateway raises on purpose. `type` follows Mistral's and OpenAI's vocabularies. */
export class GatewayError extends Error {
  readonly statusCode: number
  readonly type: string
  readonly code: string
  readonly param: string | null
  readonly headers: Record<string, string>

  constructor (statusCode: number, type: string, code: string, message: string,
    options: { param?: string | null, headers?: Record<string, string>, cause?: unknown } = {}) {
    super(message, { cause: options.cause })
    this.statusCode = statusCode
    this.type = type
    this.code = code
    this.param = options.param ?? null
    this.headers = options.headers ?? {}
  }
}

type Args = { param?: string | null, headers?: Record<string, string>, cause?: unknown }
function define (statusCode: number, type: string, code: string) {
  return (message: string, options?: Args) => new GatewayError(statusCode, type, code, message, options)
}

export const badRequest = define(400, 'invalid_request_error', 'invalid_request')
export const invalidJson = define(400, 'invalid_request_error', 'invalid_json')
export const modelNotPriced = define(400, 'invalid_request_error', 'model_not_priced')
export const unknownMistralKey = define(400, 'invalid_request_error', 'unknown_mistral_key')
export const invalidToken = () => new GatewayError(401, 'authentication_error', 'invalid_token',
  'Invalid, expired or revoked workspace token')
export const invalidAdminToken = () => new GatewayError(401, 'authentication_error', 'invalid_admin_token',
  'Invalid admin token')
export const workspaceSuspended = define(403, 'permission_error', 'workspace_suspended')
export const scopeDenied = define(403, 'permission_error', 'scope_denied')
export const organizationRouteDenied = define(403, 'permission_error', 'organization_route_denied')
export const notFound = define(404, 'not_found_error', 'not_found')
export const unknownRoute = define(404, 'not_found_error', 'unknown_route')
export const conflict = define(409, 'invalid_request_error', 'conflict')
export const upstreamUnreachable = define(502, 'upstream_error', 'upstream_unreachable')
export const upstreamTimeout = define(504, 'upstream_error', 'upstream_timeout')
/** an answer Mistral began and did not finish: the same codes as a stream's error event */
export const upstreamCut = define(502, 'upstream_error', 'upstream_cut')
export const upstreamStalled = define(504, 'upstream_error', 'upstream_stalled')
/**
 * an answer that cannot be given: a status outside 200-599, or a 2xx the client's dialect needs translated that is not
 * the JSON Mistral documents
 */
export const upstreamMalformed = define(502, 'upstream_error', 'upstream_malformed')
/** nginx's 499: nobody reads this one, but the ledger, the logs and the metrics must not blame Mistral for it */
export const clientClosed = define(499, 'invalid_request_error', 'client_closed_request')
export const notReady = define(503, 'server_error', 'not_ready')
/** a call the gateway's shutdown stops: another replica takes its retry */
export const shuttingDown = (cause?: unknown) => notReady(
  'The gateway is shutting down; retry the call (it goes to another replica)',
  { headers: retryAfterHeaders(1000), cause })
/**
 * A token this replica cannot read while PostgreSQL does not answer, and has nothing of to keep serving: neither valid
 * nor invalid as far as the gateway can tell, so not a 401 the client would act on. Retry once a new read may succeed.
 * The message does not say why (anyone can shape a token that reaches the lookup); the log does.
 */
export const authenticationUnavailable = (cause: unknown, retryMs: number) => new GatewayError(503, 'server_error',
  'authentication_unavailable', 'The token cannot be checked right now; retry shortly',
  { headers: retryAfterHeaders(retryMs), cause })

/**
 * A workspace's time zone this replica's Node has no data for: the admin API checked it on the replica that stored it,
 * whose zone data was newer. Its calendar day and month cannot be told here, so neither can its caps' periods; falling
 * back to UTC would count its spend in other periods than the replicas that know the zone.
 */
export const timeZoneUnknown = (timeZone: string, cause: unknown) => new GatewayError(500, 'server_error',
  'time_zone_unknown', `This replica's Node does not know the workspace's time zone '${timeZone}', which its daily ` +
  'and monthly spend caps count in: the operator must set a zone every replica knows, or update Node on this one',
  { cause })

// what a reconnect to PostgreSQL usually takes
export const DATABASE_RETRY_MS = 5_000

/**
 * PostgreSQL unreachable, or not answering within PG_QUERY_TIMEOUT_MS, for a call that needs it now: a 503 to retry
 * shortly, as a token lookup's, not a 500 that says the call itself is at fault. Logged here, once per call.
 */
export function databaseUnavailable (cause: unknown, log: FastifyBaseLogger): GatewayError {
  log.error({ err: databaseCause(cause) ?? cause }, 'PostgreSQL did not answer: the request is answered 503')
  return notReady('The database does not answer right now; retry shortly',
    { headers: retryAfterHeaders(DATABASE_RETRY_MS), cause })
}

/**
 * When to retry, in both forms clients read: `Retry-After` in whole seconds (RFC 9110 §10.2.3; never 0, which some
 * clients take as "at once") and `retry-after-ms`, which the OpenAI and Mistral SDKs prefer when present.
 */
export function retryAfterHeaders (ms: number): Record<string, string> {
  const wait = Math.max(1, Math.ceil(ms))
  return { 'retry-after': String(Math.ceil(wait / 1000)), 'retry-after-ms': String(wait) }
}

export interface ErrorBody {
  type: string
  code: string
  message: string
  param: string | null
}

/** Mistral's flat shape at the top for the Mistral SDK, OpenAI's under `error` for OpenAI clients (DESIGN.md). */
export function errorEnvelope (body: ErrorBody, requestId: string) {
  return { object: 'error', ...body, request_id: requestId, error: body }
}

/** ajv says "must NOT have additional properties"; the operator wants to know which one. */
function validationMessage (err: FastifyError): string | undefined {
  const first = err.validation?.[0]
  if (!first) return undefined
  const extra = (first.params as { additionalProperty?: string }).additionalProperty
  const where = `${err.validationContext ?? 'body'}${first.instancePath.replaceAll('/', '.')}`
  return extra ? `${where} has an unknown property '${extra}'` : `${where} ${first.message ?? 'is invalid'}`
}

/**
 * The status errorHandler answers `err` with, which is also what a call it ends is recorded as (proxy/routes.ts): a
 * library's error keeps a status of its own in 400-599, anything else unknown is a 500.
 */
export function answeredStatus (err: unknown): number {
  if (err instanceof GatewayError) return err.statusCode
  if (databaseUnanswered(err)) return 503
  const status = (err as { statusCode?: unknown } | undefined)?.statusCode
  return typeof status === 'number' && status >= 400 && status <= 599 ? status : 500
}

export function errorHandler (err: FastifyError | GatewayError, request: FastifyRequest, reply: FastifyReply) {
  if (!(err instanceof GatewayError) && databaseUnanswered(err)) {
    return errorHandler(databaseUnavailable(err, request.log), request, reply)
  }
  const known = err instanceof GatewayError
  const status = answeredStatus(err)
  // a known error above 500 is a state the gateway reports (not ready, PostgreSQL away: logged where it is raised); a
  // 500 is a fault the operator must hear of
  if (status === 500 || (status > 500 && !known)) request.log.error({ err }, 'request failed')
  let body: ErrorBody
  if (known) {
    body = { type: err.type, code: err.code, message: err.message, param: err.param }
    reply.headers(err.headers)
  } else if (status < 500) {
    // Fastify's own 4xx (bad JSON, body too large, bad media type): its message names no secret
    const code = (err as FastifyError).code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? 'payload_too_large' : 'invalid_request'
    body = { type: 'invalid_request_error', code, message: validationMessage(err as FastifyError) ?? err.message, param: null }
  } else {
    body = { type: 'server_error', code: 'internal_error', message: 'Internal error', param: null }
  }
  return reply.code(status).send(errorEnvelope(body, request.id))
}
