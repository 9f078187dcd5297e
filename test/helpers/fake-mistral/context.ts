import type { FastifyReply, FastifyRequest } from 'fastify'
import type { MultipartSummary } from './multipart.js'
import type { SseStream } from './sse.js'
import type { Stores } from './stores.js'
import type { Usage } from './usage.js'

/** What route families get from the fake: its stores, its knobs, and the ways to answer and account. */
export interface FakeContext {
  readonly stores: Stores
  /** words a completion runs to unless `max_tokens` stops it sooner */
  readonly completionTokens: number
  /** the JSON body (an empty object when there is none) */
  body<T> (request: FastifyRequest): T
  /** the organisation of the request's API key: it sees that organisation's batch jobs and files only */
  organisation (request: FastifyRequest): string
  /** the multipart fields and file counts (empty when the body was not multipart) */
  form (request: FastifyRequest): MultipartSummary
  /** Records `usage` as the fake sent it: call it only once the bytes carrying it have been written. */
  reportUsage (request: FastifyRequest, model: string | undefined, usage: Usage, streamed: boolean): void
  /** Takes the reply over for SSE, honouring `holdStreams`, `faultNextStream` and `streamDelayMs`. */
  openStream (request: FastifyRequest, reply: FastifyReply, headers?: Record<string, string>): SseStream
}
