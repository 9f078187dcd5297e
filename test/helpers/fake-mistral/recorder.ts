import { randomUUID } from 'node:crypto'
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import { edgeHeaders } from './headers.js'
import type { MultipartSummary } from './multipart.js'
import type { Usage } from './usage.js'

export interface ReceivedRequest {
  method: string
  /** pathname and search, exactly as sent */
  path: string
  /** lower-cased names; repeated headers joined with ', ' */
  headers: Record<string, string>
  /** The body as received; empty for multipart and binary uploads, which are counted, never kept. */
  body: Buffer
  bodyBytes: number
  /** the parsed body, when it was JSON */
  json?: unknown
  /** text fields and per-file counts of a multipart body */
  form?: MultipartSummary
  /** sha256 of a binary (non-multipart) upload */
  sha256?: string
  /** from `Authorization: Bearer <key>` */
  apiKey: string | undefined
  /** true when the client hung up before the response finished */
  aborted: boolean
  /** the status sent, once the response is over (undefined if it never started) */
  status?: number
  /** the `mistral-correlation-id` this response carries */
  correlationId: string
  /** the usage object the fake sent for this request, exactly as it went on the wire */
  usage?: Usage
  /** set when a `faultNextStream` script hit this request */
  fault?: 'stall' | 'cut' | 'error'
}

export interface ReportedUsage {
  /** pathname of the request */
  path: string
  model: string | undefined
  /** `usage` (or OCR's `usage_info`) exactly as sent */
  usage: Usage
  streamed: boolean
}

export interface Recorder {
  readonly received: ReceivedRequest[]
  readonly reportedUsage: ReportedUsage[]
  readonly inFlight: number
  readonly maxInFlight: number
  /** Set while the fake closes, so the connections it destroys are not mistaken for clients hanging up. */
  closing: boolean
  start (req: IncomingMessage, res: ServerResponse): void
  of (req: IncomingMessage): ReceivedRequest
  reportUsage (req: IncomingMessage, model: string | undefined, usage: Usage, streamed: boolean): void
  reset (): void
}

/** `keep: false` records nothing but the counters: a benchmark's millions of requests must not pile up in memory. */
export function createRecorder (keep: boolean): Recorder {
  const records = new WeakMap<IncomingMessage, ReceivedRequest>()
  let received: ReceivedRequest[] = []
  let reportedUsage: ReportedUsage[] = []
  let inFlight = 0
  let maxInFlight = 0

  const recorder: Recorder = {
    get received () { return received },
    get reportedUsage () { return reportedUsage },
    get inFlight () { return inFlight },
    get maxInFlight () { return maxInFlight },
    closing: false,
    start (req, res) {
      const record: ReceivedRequest = {
        method: req.method ?? 'GET',
        path: req.url ?? '/',
        headers: flatten(req.headers),
        body: Buffer.alloc(0),
        bodyBytes: 0,
        apiKey: bearerKey(req.headers.authorization),
        aborted: false,
        correlationId: randomUUID()
      }
      records.set(req, record)
      if (keep) received.push(record)
      maxInFlight = Math.max(maxInFlight, ++inFlight)
      for (const [name, value] of Object.entries(edgeHeaders(record.correlationId))) res.setHeader(name, value)
      res.once('close', function settle () {
        inFlight--
        if (res.headersSent) record.status = res.statusCode
        if (!res.writableFinished && record.fault !== 'cut' && !recorder.closing) record.aborted = true
      })
    },
    of (req) {
      const record = records.get(req)
      if (!record) throw new Error(`fake-mistral: no record for ${req.method} ${req.url}`)
      return record
    },
    reportUsage (req, model, usage, streamed) {
      const record = recorder.of(req)
      record.usage = usage
      if (keep) reportedUsage.push({ path: record.path.split('?')[0], model, usage, streamed })
    },
    reset () {
      received = []
      reportedUsage = []
      maxInFlight = inFlight
    }
  }
  return recorder
}

function flatten (headers: IncomingHttpHeaders): Record<string, string> {
  const flat: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) flat[name] = Array.isArray(value) ? value.join(', ') : value
  }
  return flat
}

function bearerKey (authorization: string | undefined): string | undefined {
  return /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '')?.[1]
}
