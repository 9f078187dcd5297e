const LF_EVENT_END = Buffer.from('\n\n')
// the end of `\r\n\r\n`, and of the rarer `\n\r\n`, both blank lines to an SSE reader
const CRLF_EVENT_END = Buffer.from('\n\r\n')

/** Just past the last blank line of `data`, LF- or CRLF-framed (SSE allows both); -1 when there is none. */
export function endOfEvents (data: Buffer): number {
  const lf = data.lastIndexOf(LF_EVENT_END)
  const crlf = data.lastIndexOf(CRLF_EVENT_END)
  return Math.max(lf === -1 ? -1 : lf + LF_EVENT_END.length, crlf === -1 ? -1 : crlf + CRLF_EVENT_END.length)
}

/**
 * A stream's reads regrouped into whole events, for a shaping that must see each event whole: a read's tail that
 * ends mid-event waits, as bytes, for the rest of its event (a multi-byte character split between reads is kept).
 */
export class WholeEvents {
  private pending: Buffer | undefined

  /** whether no part of an event waits */
  get empty (): boolean { return this.pending === undefined }

  /** The whole events this read completes, with what waited before them; undefined while none is whole yet. */
  take (chunk: Buffer): Buffer | undefined {
    const data = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    const cut = endOfEvents(data)
    if (cut === -1) {
      this.pending = data
      return undefined
    }
    this.pending = cut < data.length ? data.subarray(cut) : undefined
    return cut < data.length ? data.subarray(0, cut) : data
  }

  /** What waits when the stream ends (an event its last blank line never came for), and forgets it. */
  rest (): Buffer | undefined {
    const rest = this.pending
    this.pending = undefined
    return rest
  }
}
