import type { FastifyReply, FastifyRequest } from 'fastify'

declare module 'fastify' {
  interface FastifyRequest {
    /** Facts for the request's log line, filled as the call goes. */
    outcome: {
      model?: string
      keyName?: string
      totalTokens?: number
      upstreamStatus?: number
      /** a proxied call not yet settled: its line waits for the settlement's status and tokens */
      open?: boolean
    } | null
    /** the request's line is written (at most one a request) */
    lineWritten: boolean
  }
}

const WRITES_INFO = new Set(['trace', 'debug', 'info'])

/**
 * One line per request: facts, never payloads or secrets. Written when the reply finishes; for a client that left, a
 * reply never finishes (Node emits no `finish` on a destroyed socket), so the line is written when the gateway is done
 * with the call instead, with the status it settled on and `clientClosed: true`.
 */
export function writeRequestLine (request: FastifyRequest, reply: FastifyReply, status = reply.statusCode) {
  if (request.lineWritten) return
  request.lineWritten = true
  // at LOG_LEVEL=warn or above the line is not written: do not build it either
  if (!WRITES_INFO.has(request.log.level)) return
  const outcome = request.outcome
  request.log.info({
    method: request.method,
    path: request.routeOptions.url === undefined ? 'unknown' : request.url.split('?')[0],
    status,
    durationMs: Math.round(reply.elapsedTime),
    workspace: request.tenant?.workspace.slug,
    token: request.tenant?.token.prefix,
    operation: request.operation?.id,
    model: outcome?.model,
    key: outcome?.keyName,
    upstreamStatus: outcome?.upstreamStatus,
    tokens: outcome?.totalTokens,
    clientClosed: reply.raw.writableFinished ? undefined : true
  }, 'request')
}

/** The client has gone and the reply will never finish: no `finish`, so no onResponse hook, will write the line. */
export function clientGone (reply: FastifyReply): boolean {
  return reply.raw.destroyed && !reply.raw.writableFinished
}
