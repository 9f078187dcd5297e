import type { ServerResponse } from 'node:http'
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises'

/**
 * Makes one stream misbehave once it has sent `after` events: hang forever, destroy the socket, or send Mistral's own
 * error event and end there, without `[DONE]` (a failure Mistral reports in the stream, the status long sent).
 */
export interface StreamFault {
  after: number
  mode: 'stall' | 'cut' | 'error'
}

/** What Mistral sends when a stream fails on its side: its error object (MISTRAL-NOTES §3.1) as a data event. */
export const MID_STREAM_ERROR = {
  object: 'error', message: 'Service unavailable', type: 'server_error', param: null, code: '3000'
}

export interface SseControl {
  /** The gate of `holdStreams()` while it is held: awaited between the first event and the rest. */
  gate (): Promise<void> | undefined
  fault: StreamFault | undefined
  delayMs: number
  onFault (mode: StreamFault['mode']): void
}

export interface SseStream {
  /** A data-only event (`data: <json>`), as chat, FIM and agents completions send; strings go verbatim. */
  data (payload: unknown): Promise<boolean>
  /** A named event (`event: <name>` then `data: <json>`), as conversations and audio send. */
  event (name: string, payload: unknown): Promise<boolean>
  end (): void
}

/**
 * Writes Mistral's SSE framing exactly (MISTRAL-NOTES §2.4): every event is one write ending in a blank line.
 * Each send resolves false once the stream is over (client gone, fault, fake closing): callers just stop.
 */
export function openSse (res: ServerResponse, headers: Record<string, string>, control: SseControl): SseStream {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', ...headers })
  const closed = new Promise<false>((resolve) => res.once('close', () => resolve(false)))
  let sent = 0

  async function misbehave (mode: StreamFault['mode']): Promise<false> {
    control.onFault(mode)
    if (mode === 'cut') res.destroy()
    if (mode === 'error') res.end(`data: ${JSON.stringify(MID_STREAM_ERROR)}\n\n`)
    return closed
  }

  async function write (frame: string): Promise<boolean> {
    if (res.destroyed || res.writableEnded) return false
    if (sent === control.fault?.after) return misbehave(control.fault.mode)
    const gate = sent === 1 ? control.gate() : undefined
    if (gate) await Promise.race([gate, closed])
    else if (sent > 0 && control.delayMs > 0) await Promise.race([sleep(control.delayMs), closed])
    // writes that flush at once chain without yielding: give other connections their turn, as a real upstream does
    else if (sent > 0) await nextTurn()
    if (res.destroyed) return false
    sent++
    // resolves once the bytes reach the socket: backpressure for free, and a cut never drops an event already sent
    const flushed = new Promise<boolean>((resolve) => res.write(frame, (err) => resolve(err == null)))
    return Promise.race([flushed, closed])
  }

  return {
    data: (payload) => write(`data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`),
    event: (name, payload) => write(`event: ${name}\ndata: ${JSON.stringify(payload)}\n\n`),
    end () {
      if (!res.destroyed && !res.writableEnded) res.end()
    }
  }
}
