import type { SseShaping } from '../proxy/usage-tap.js'
import { withOpenAiError } from './openai-response.js'

const EVENT_END = Buffer.from('\n\n')
const CRLF_EVENT_END = Buffer.from('\r\n\r\n')
const ERROR_KEY = Buffer.from('"error"')

/** Just past the last blank line of `data`, LF- or CRLF-framed (SSE allows both); -1 when there is none. */
function lastEventEnd (data: Buffer): number {
  const lf = data.lastIndexOf(EVENT_END)
  const crlf = data.lastIndexOf(CRLF_EVENT_END)
  return Math.max(lf === -1 ? -1 : lf + EVENT_END.length, crlf === -1 ? -1 : crlf + CRLF_EVENT_END.length)
}

/**
 * Every stream that needs no other change gets this one: an error Mistral sends as an event (`data:
 * {"object":"error",…}`) gains the `error` object openai-node throws on (MISTRAL-NOTES §5.4); without it the SDK reads
 * the event as a chunk and the stream just ends. The Mistral SDK does not mind the extra field. And only whole events
 * reach the client: when Mistral cuts a stream mid-event, the half it sent is dropped before the gateway's own error
 * event, which an SDK would otherwise fail to parse as one event with it.
 *
 * Everything else passes as it came, undecoded: each read's complete events go on at once, and only a read's tail
 * that ends mid-event waits for the rest of its event (no SSE client can act on half an event anyway). Only reads
 * that hold `"error"` are decoded and looked at. Runs in the usage tap's pass: one stream hop a chunk, not two.
 */
export function streamErrorShaping (): SseShaping {
  let pending: Buffer | undefined
  const shaped = (events: Buffer) => events.includes(ERROR_KEY) ? shapeEvents(events.toString('utf8')) : events
  return {
    write (chunk, plain) {
      // whole events without an error, and nothing held back before them: as they came
      if (plain && pending === undefined) return chunk
      const data = pending === undefined ? chunk : Buffer.concat([pending, chunk])
      const cut = lastEventEnd(data)
      if (cut === -1) {
        pending = data
        return undefined
      }
      pending = cut < data.length ? data.subarray(cut) : undefined
      return shaped(cut < data.length ? data.subarray(0, cut) : data)
    },
    end () {
      const rest = pending
      pending = undefined
      return rest === undefined ? undefined : shaped(rest)
    },
    drop () { pending = undefined }
  }
}

/**
 * Complete events, each ending in a blank line (the last one may lack it when the stream ends without it), LF- or
 * CRLF-framed: each blank line is kept as it came.
 */
function shapeEvents (text: string): string {
  return text.split(/(\r?\n\r?\n)/).map((part, i) => i % 2 === 0 ? openAiErrorEvent(part) : part).join('')
}

/** An error payload of Mistral's with OpenAI's `error` object added; any other event unchanged. */
function openAiErrorEvent (event: string): string {
  const line = /^data: /m.exec(event)
  if (line === null) return event
  const payload = event.slice(line.index + 6)
  let parsed: unknown
  try {
    parsed = JSON.parse(payload)
  } catch {
    return event
  }
  if (parsed === null || typeof parsed !== 'object' || (parsed as { object?: unknown }).object !== 'error') return event
  // an event has no status: an error Mistral reports mid-stream is its own failure unless its type says otherwise
  return event.slice(0, line.index) + 'data: ' + withOpenAiError(payload, 500)
}
