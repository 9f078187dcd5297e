import type { SseShaping } from '../proxy/usage-tap.js'
import { withOpenAiError } from './openai-response.js'
import { WholeEvents } from './sse-events.js'

const ERROR_KEY = Buffer.from('"error"')

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
  const events = new WholeEvents()
  const shaped = (events: Buffer) => events.includes(ERROR_KEY) ? shapeEvents(events.toString('utf8')) : events
  return {
    write (chunk, plain) {
      // whole events without an error, and nothing held back before them: as they came
      if (plain && events.empty) return chunk
      const complete = events.take(chunk)
      return complete === undefined ? undefined : shaped(complete)
    },
    end () {
      const rest = events.rest()
      return rest === undefined ? undefined : shaped(rest)
    },
    drop () { events.rest() }
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
