import type { FastifyReply, FastifyRequest } from 'fastify'
import { WORKSPACE_TOKEN_PATTERN } from './tenancy/token-format.js'
import { ledgerText } from './proxy/meter.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** Facts for the request's log line, filled as the call goes. */
    outcome: { model?: string, keyName?: string, totalTokens?: number, upstreamStatus?: number } | null
    /** where the request's line stands (absent when the level writes no request line) */
    line: RequestLine | null
  }
}

interface RequestLine {
  written: boolean
  /** the gateway has answered (onSend ran): what the line says is known, unless `held` */
  answered: boolean
  /** the reply's socket closed before `finish`: the client left, or the connection was cut */
  closed: boolean
  /** a proxied call in flight: its line waits for the status and tokens it settles on */
  held: boolean
  /** a path the proxy's wildcard took that is no operation of Mistral's: logged as `unknown`, as one of no route */
  unrouted: boolean
}

const WRITES_INFO = new Set(['trace', 'debug', 'info'])

/**
 * One line per request, with facts and never payloads or secrets, written once. Written when the reply finishes
 * (onResponse); a reply whose socket closed first never finishes (Node emits no `finish`), so its line is written as
 * soon as both have happened: the socket closed, and the gateway answered or settled the call. Such a line is marked
 * `unfinished: true`. Events, not `writableFinished`: a write to a socket already destroyed reads as finished.
 */
export function trackRequestLine (request: FastifyRequest, reply: FastifyReply) {
  // at LOG_LEVEL=warn or above no line is written: nothing is tracked either
  if (!WRITES_INFO.has(request.log.level)) return
  const line: RequestLine = { written: false, answered: false, closed: false, held: false, unrouted: false }
  request.line = line
  reply.raw.once('close', () => {
    if (line.written) return
    line.closed = true
    if (line.answered && !line.held) writeRequestLine(request, reply)
  })
}

/** The gateway has answered (onSend): a client already gone gets its line now, unless a proxied call holds it. */
export function answered (request: FastifyRequest, reply: FastifyReply) {
  const line = request.line
  if (!line) return
  line.answered = true
  if (line.closed && !line.held) writeRequestLine(request, reply)
}

/** The path is no operation of Mistral's API: the line says `unknown`, as for a path that is no route. */
export function unrouted (request: FastifyRequest) {
  if (request.line) request.line.unrouted = true
}

/** A proxied call holds its line until it settles. */
export function holdLine (request: FastifyRequest) {
  if (request.line) request.line.held = true
}

/** The proxied call settled on `status`: a client already gone gets its line now, with it. */
export function settled (request: FastifyRequest, reply: FastifyReply, status: number) {
  const line = request.line
  if (!line) return
  line.held = false
  if (line.closed) writeRequestLine(request, reply, status)
}

/** Writes the line unless it is written already; `status` defaults to the reply's. */
export function writeRequestLine (request: FastifyRequest, reply: FastifyReply, status = reply.statusCode) {
  const line = request.line
  if (!line || line.written) return
  line.written = true
  const outcome = request.outcome
  request.log.info({
    method: request.method,
    path: request.routeOptions.url === undefined || line.unrouted
      ? 'unknown'
      : withoutTokens(request.url.split('?')[0]),
    status,
    durationMs: Math.round(reply.elapsedTime),
    workspace: request.tenant?.workspace.slug,
    token: request.tenant?.token.prefix,
    operation: request.operation?.id,
    // as the ledger holds it: a client's string of any length does not make the line; cut only when a line is written
    model: outcome?.model === undefined ? undefined : ledgerText(outcome.model),
    key: outcome?.keyName,
    upstreamStatus: outcome?.upstreamStatus,
    tokens: outcome?.totalTokens,
    unfinished: line.closed ? true : undefined
  }, 'request')
}

// an operator who revokes a token by its secret instead of its id (DELETE …/tokens/tmt_…) puts it in the path
const TOKEN_IN_PATH = new RegExp(WORKSPACE_TOKEN_PATTERN.source, 'g')

/** The path as logged: a workspace token in it, in any segment, is replaced. */
function withoutTokens (path: string): string {
  return path.includes('tmt_') ? path.replace(TOKEN_IN_PATH, '[redacted]') : path
}
