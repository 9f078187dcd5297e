import { Transform, type TransformCallback } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import { readJsonEdgeFacts, readJsonFacts } from './json-usage.js'
import { readModel, readUsage, type Usage } from './usage.js'

/** What a tap learnt from the bytes that went by. */
export interface TapResult {
  usage: Usage | undefined
  model: string | undefined
  /** SSE events (or 1 for a JSON body) seen whole. */
  events: number
  /** When the first byte came from upstream (ms since the epoch). */
  firstByteAt: number | undefined
  /** SSE only: an event told of an upstream error mid-stream. */
  streamError: boolean
  /** the reply was an event stream */
  streamed: boolean
}

// a metered JSON reply larger than this is relayed, not kept: its usage is read from its ends (an OCR answer with its
// page images can pass it; embeddings batches are far below it)
const MAX_JSON_TAP_BYTES = 64 * 1024 * 1024
const EDGE_BYTES = 1024 * 1024

/**
 * A rewrite of the relayed bytes for the client's dialect (src/dialects), run inside the tap's own pass: a stream hop
 * costs every chunk its callbacks and buffering, and a chat stream has twenty and more chunks.
 */
export interface SseShaping {
  /**
   * What to send on for this read; undefined for nothing yet. `plain`: the read is whole LF-framed events, none of
   * which mentions usage or an error (the tap has looked: a shaping need not look again).
   */
  write (chunk: Buffer, plain: boolean): Buffer | string | undefined
  /** What is left to send once Mistral's stream ended. */
  end (): Buffer | string | undefined
  /** Forgets what it holds back of an event Mistral left unfinished (its stream was cut: it will never be whole). */
  drop (): void
}

export type SseTap = Transform & {
  result: TapResult
  /**
   * Ends the stream with the gateway's own event, after Mistral's was cut. What Mistral sent of an unfinished event
   * never becomes whole: held back by the shaping it is dropped, already relayed it is closed off by a blank line, so
   * that the gateway's event is read on its own. It is not Mistral's first byte, nor one of its events.
   */
  endCut (event: string): void
}

/**
 * Relays Mistral's SSE bytes, unchanged or through `shaping`, and reads usage on the side from the bytes as Mistral
 * sent them, as they arrive: a client that reads slowly, then leaves, must not take with it the usage that reached
 * the gateway and waits in the tap's buffer. An event can span reads, so text is kept until its blank line; only
 * events that mention usage are parsed, the rest are just counted.
 */
export function createSseTap (shaping?: SseShaping): SseTap {
  const decoder = new StringDecoder('utf8')
  const result = newResult(true)
  let pending = ''
  const inspect = (event: string) => {
    result.events++
    if (event.includes('error')) noteError(event, result)
    // conversations name the model on their deltas, not on the event that carries usage: read it once
    const wantsModel = result.model === undefined && event.includes('"model"')
    if (!wantsModel && !event.includes('usage')) return
    const payload = parseData(event)
    const usage = readUsage(payload)
    if (usage) result.usage = usage
    if (usage || wantsModel) result.model = readModel(payload) ?? result.model
  }
  // nothing of an earlier read is kept (no part of an event, no part of a character)
  let atBoundary = true
  // the gateway's own last event (endCut), told from Mistral's reads by identity: it comes after all of them
  let closing: Buffer | undefined
  const closeCut = (event: Buffer) => {
    const unfinished = !atBoundary
    pending = ''
    decoder.end()
    atBoundary = true
    noteError(event.toString('utf8'), result)
    if (shaping === undefined) return unfinished ? Buffer.concat([EVENT_END, event]) : event
    shaping.drop()
    return shaping.write(event, false)
  }
  /** Reads a read of Mistral's as it arrives; whether it is plain (see SseShaping.write). */
  const observe = (chunk: Buffer): boolean => {
    result.firstByteAt ??= Date.now()
    // the usual read, whole events that say nothing of usage, model or errors (the deltas): counted, not decoded
    if (atBoundary && endsEvents(chunk) && !mentions(chunk, result.model === undefined)) {
      result.events += countEvents(chunk)
      return true
    }
    pending += decoder.write(chunk)
    let end = nextBoundary(pending)
    while (end !== -1) {
      inspect(pending.slice(0, end))
      pending = pending.slice(end).replace(/^(\r?\n)+/, '')
      end = nextBoundary(pending)
    }
    atBoundary = pending.length === 0 && chunk[chunk.length - 1] === LF
    return false
  }
  // whether each read observed and not yet shaped was plain, in their order (the shaping gets them later, when the
  // client has room)
  const plain: boolean[] = []
  let shaped = 0
  const tap = new Transform({
    transform (chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) {
      if (chunk === closing) return done(null, closeCut(chunk))
      const whole = plain[shaped++]
      if (shaped === plain.length) {
        plain.length = 0
        shaped = 0
      }
      done(null, shaping === undefined ? chunk : shaping.write(chunk, whole))
    },
    flush (done: TransformCallback) {
      done(null, shaping?.end())
    }
  })
  // Mistral's reads are observed as they are written to the tap (the pipe from the upstream body writes them), not as
  // the client's reading lets them through it
  const write = tap.write.bind(tap) as (chunk: Buffer, ...rest: unknown[]) => boolean
  tap.write = ((chunk: Buffer, ...rest: unknown[]) => {
    plain.push(observe(chunk))
    return write(chunk, ...rest)
  }) as typeof tap.write
  const end = tap.end.bind(tap) as (...args: unknown[]) => SseTap
  tap.end = ((...args: unknown[]) => {
    // not the gateway's own event that ends a cut stream: Mistral's unfinished one is dropped then (closeCut)
    if (closing === undefined) {
      // a last read handed to end() itself, then the last event if Mistral sent it without its blank line
      if (Buffer.isBuffer(args[0])) plain.push(observe(args[0]))
      pending += decoder.end()
      if (pending.trim().length > 0) inspect(pending)
      pending = ''
    }
    return end(...args)
  }) as typeof tap.end
  const endCut = (event: string) => {
    closing = Buffer.from(event)
    tap.end(closing)
  }
  return Object.assign(tap, { result, endCut })
}

/**
 * Relays a JSON body unchanged and reads its usage once it is whole. One over MAX_JSON_TAP_BYTES is not kept: only its
 * first and last EDGE_BYTES, where an OCR answer's `model` and `usage_info` are, after and before its pages.
 */
export function createJsonTap (): Transform & { result: TapResult } {
  const result = newResult(false)
  const chunks: Buffer[] = []
  let size = 0
  // past the limit: the body's first bytes, and its last ones so far in `chunks` (at least EDGE_BYTES of them)
  let head: Buffer | undefined
  let kept = 0
  const tap = new Transform({
    transform (chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) {
      result.firstByteAt ??= Date.now()
      size += chunk.length
      chunks.push(chunk)
      kept += chunk.length
      // the first bytes copied out once (not the whole: 64 MiB more at that moment); then only the last ones are kept
      if (head === undefined && size > MAX_JSON_TAP_BYTES) head = firstBytes(chunks, EDGE_BYTES)
      if (head !== undefined) {
        while (kept - chunks[0].length >= EDGE_BYTES) kept -= (chunks.shift() as Buffer).length
      }
      done(null, chunk)
    },
    flush (done: TransformCallback) {
      if (size > 0) {
        const body = Buffer.concat(chunks, kept)
        // not JSON after all: relayed as is, metered as unknown
        const facts = head === undefined
          ? readJsonFacts(body)
          : readJsonEdgeFacts(head, body.subarray(body.length - EDGE_BYTES))
        if (facts) Object.assign(result, facts, { events: 1 })
      }
      done()
    }
  })
  return Object.assign(tap, { result })
}

const LF = 0x0a

/** A copy of the first `count` bytes of `chunks` (which hold at least that many). */
function firstBytes (chunks: Buffer[], count: number): Buffer {
  const leading: Buffer[] = []
  let length = 0
  for (const chunk of chunks) {
    if (length >= count) break
    leading.push(chunk)
    length += chunk.length
  }
  return Buffer.from(Buffer.concat(leading, length).subarray(0, count))
}
// the needles as bytes: a string needle is encoded again on every search
const USAGE = Buffer.from('usage')
const ERROR = Buffer.from('error')
const MODEL = Buffer.from('"model"')
const EVENT_END = Buffer.from('\n\n')

/** Ends on a blank line, LF-framed (a CR anywhere sends the read down the general path). */
function endsEvents (chunk: Buffer): boolean {
  return chunk.length >= 2 && chunk[chunk.length - 1] === LF && chunk[chunk.length - 2] === LF && chunk.indexOf(0x0d) === -1
}

/** What `inspect` looks for, searched in the bytes (an event split across reads never gets here). */
function mentions (chunk: Buffer, wantsModel: boolean): boolean {
  return chunk.indexOf(USAGE) !== -1 || chunk.indexOf(ERROR) !== -1 || (wantsModel && chunk.indexOf(MODEL) !== -1)
}

/** Events in a read of whole LF-framed events: blank lines, a run of them counting once, as `nextBoundary` does. */
function countEvents (chunk: Buffer): number {
  let events = 0
  let at = chunk.indexOf(EVENT_END)
  while (at !== -1) {
    events++
    at += 2
    while (chunk[at] === LF) at++
    at = chunk.indexOf(EVENT_END, at)
  }
  return events
}

function newResult (streamed: boolean): TapResult {
  return { usage: undefined, model: undefined, events: 0, firstByteAt: undefined, streamError: false, streamed }
}

function nextBoundary (text: string): number {
  // a blank line after a line ended by LF or CRLF: LF LF, CRLF CRLF, or LF CRLF (CRLF LF holds LF LF); as an SSE
  // client reads them, and as the shaping does (src/dialects/sse-events.ts)
  let first = -1
  for (const end of EVENT_ENDS) {
    const at = text.indexOf(end)
    if (at !== -1 && (first === -1 || at < first)) first = at
  }
  return first
}

const EVENT_ENDS = ['\n\n', '\r\n\r\n', '\n\r\n']

/** The JSON of an event's data lines (SSE allows several, joined by newlines). */
function parseData (event: string): unknown {
  let data = ''
  for (const line of event.split(/\r?\n/)) {
    if (line.startsWith('data:')) data += (data ? '\n' : '') + line.slice(line.charAt(5) === ' ' ? 6 : 5)
  }
  if (!data || data === '[DONE]') return undefined
  try {
    return JSON.parse(data)
  } catch {
    return undefined
  }
}

function noteError (event: string, result: TapResult) {
  // Mistral's named error event (conversations) or an error payload in a data-only stream
  if (/^event:\s*[\w.]*error/m.test(event)) result.streamError = true
  else if (event.includes('"error"') || event.includes('"object":"error"')) {
    const payload = parseData(event) as Record<string, unknown> | undefined
    if (payload && (payload.error != null || payload.object === 'error')) result.streamError = true
  }
}
