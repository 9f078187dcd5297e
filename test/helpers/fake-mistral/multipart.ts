import { createHash, type Hash } from 'node:crypto'

export interface UploadedFile {
  field: string
  filename: string
  contentType: string
  bytes: number
  /** Hex sha256 of the bytes received, so a test can prove a relay changed nothing without keeping them. */
  sha256: string
  /** Lines of text, as Mistral counts `num_lines` of a JSONL upload. */
  lines: number
}

export interface MultipartSummary {
  /** text fields; a repeated one is joined with ', ' */
  fields: Record<string, string>
  files: UploadedFile[]
}

interface Part {
  name: string
  file?: { filename: string, contentType: string, hash: Hash, bytes: number, newlines: number, lastByte: number }
  chunks: Buffer[]
}

const HEADER_END = Buffer.from('\r\n\r\n')
const NEWLINE = 0x0a

/**
 * Reads a multipart/form-data body as it arrives: text fields are kept, file parts are only counted and hashed,
 * so a 200 MB upload never sits in memory (RFC 7578). A leading CRLF is prepended so that the first boundary looks
 * like every other delimiter.
 */
export async function summarizeMultipart (body: AsyncIterable<Buffer>, boundary: string): Promise<MultipartSummary> {
  const delimiter = Buffer.from(`\r\n--${boundary}`)
  const summary: MultipartSummary = { fields: {}, files: [] }
  let pending: Buffer = Buffer.from('\r\n')
  let state: 'preamble' | 'headers' | 'body' | 'epilogue' = 'preamble'
  let part: Part | undefined

  function feed (bytes: Buffer) {
    if (!part || bytes.length === 0) return
    if (!part.file) {
      part.chunks.push(bytes)
      return
    }
    part.file.hash.update(bytes)
    part.file.bytes += bytes.length
    part.file.lastByte = bytes[bytes.length - 1]
    for (let at = bytes.indexOf(NEWLINE); at !== -1; at = bytes.indexOf(NEWLINE, at + 1)) part.file.newlines++
  }

  function finish () {
    if (!part) return
    const { name, file } = part
    if (!file) {
      // a repeated field (`timestamp_granularities`, say) is joined with ', ', as a repeated header is
      const value = Buffer.concat(part.chunks).toString('utf8')
      summary.fields[name] = name in summary.fields ? `${summary.fields[name]}, ${value}` : value
    } else {
      const unterminated = file.bytes > 0 && file.lastByte !== NEWLINE ? 1 : 0
      summary.files.push({ field: name, filename: file.filename, contentType: file.contentType, bytes: file.bytes,
        sha256: file.hash.digest('hex'), lines: file.newlines + unterminated })
    }
    part = undefined
  }

  function scan () {
    while (state !== 'epilogue') {
      if (state === 'headers') {
        const end = pending.indexOf(HEADER_END)
        if (end === -1) return
        part = startPart(pending.subarray(0, end).toString('utf8'))
        pending = pending.subarray(end + HEADER_END.length)
        state = 'body'
        continue
      }
      const at = pending.indexOf(delimiter)
      if (at === -1) {
        const safe = pending.length - delimiter.length + 1 // a delimiter may straddle two reads
        if (safe > 0) {
          feed(pending.subarray(0, safe))
          pending = pending.subarray(safe)
        }
        return
      }
      feed(pending.subarray(0, at))
      pending = pending.subarray(at)
      if (pending.length < delimiter.length + 2) return
      finish()
      // after a delimiter, `--` closes the body and CRLF opens the next part's headers
      state = pending.subarray(delimiter.length, delimiter.length + 2).toString() === '--' ? 'epilogue' : 'headers'
      pending = pending.subarray(delimiter.length + 2)
    }
  }

  for await (const chunk of body) {
    pending = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk
    scan()
  }
  finish()
  return summary
}

function startPart (headerText: string): Part {
  const headers = new Map(headerText.split('\r\n').map((line) => {
    const colon = line.indexOf(':')
    return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()] as const
  }))
  const disposition = headers.get('content-disposition') ?? ''
  const name = /(?:^|;)\s*name="([^"]*)"/i.exec(disposition)?.[1] ?? ''
  const filename = /(?:^|;)\s*filename="([^"]*)"/i.exec(disposition)?.[1]
  if (filename === undefined) return { name, chunks: [] }
  const contentType = headers.get('content-type') ?? 'application/octet-stream'
  const file = { filename, contentType, hash: createHash('sha256'), bytes: 0, newlines: 0, lastByte: -1 }
  return { name, chunks: [], file }
}

export function boundaryOf (contentType: string): string | undefined {
  return /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType)?.slice(1).find(Boolean)
}
