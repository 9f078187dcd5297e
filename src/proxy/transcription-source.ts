import type { ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import { clientClosed } from '../errors.js'
import { hasCaps } from '../limits/policy.js'
import type { TenantContext } from '../tenancy/tokens.js'
import { cooldownPlan, holdDelay, holdFitsCall, pickCallKey, type AttemptDeps } from './attempts.js'
import { filePath } from './mistral-files.js'

/**
 * A transcription names its audio by a `file` part (the audio is in the form), a `file_url` (Mistral fetches it) or
 * a `file_id` (a file uploaded to /v1/files): AudioTranscriptionRequest in mistral-openapi.yaml. Its reservation
 * against the spend caps must bound the audio Mistral bills, whichever it names; the form is streamed past, so this
 * reads only as much of it as tells, and sends on the same bytes.
 */

/** What a form names as its audio, as far as the gateway read it. */
interface AudioSource {
  /** a `file` part: the audio is the body, as long as its length */
  upload: boolean
  /** a `file_url`: audio of any length, which the gateway does not fetch (no client's URL is fetched from here) */
  url: boolean
  /** `file_id` values */
  fileIds: string[]
  /** not read as Mistral reads it, or not wholly: it may name anything */
  unread: boolean
}

export interface TranscriptionAudio {
  /** the bytes of audio the call may be billed for; undefined when unknown (reserved as the most Mistral takes) */
  bytes: number | undefined
  /** the body to send on: the bytes received, those read put back */
  body: Readable | undefined
  /**
   * the only key the call may go out with: the one whose lookup Mistral answered 404, so that the call gets the same
   * answer at no cost. Another key of the workspace may be of another organisation, which has the file, and the audio
   * was reserved as none
   */
  pinnedKey?: string
}

/**
 * The most of a form read before it says what it names: a form without an upload is a few hundred bytes (a
 * `file_url` is at most 2,083 characters, a `file_id` a UUID, the other fields short), so 64 KiB holds any a client
 * makes, and is read in one or a few socket reads. A form with an upload is read only up to its `file` part's
 * headers; one whose head is longer is reserved as naming audio of unknown length.
 */
const READ_BOUND = 64 * 1024
/** A form's head is a few KiB: 64 KiB take 10 s at 50 kbit/s. */
const HEAD_READ_MS = 15_000
/**
 * A form's head comes in a few socket reads (64 KiB in TCP segments are under 50): one sent in more, a byte or a few
 * at a time, is not parsed read after read, which costs CPU before any limit applies.
 */
const HEAD_READS = 256
/** A file's metadata is one small JSON answer: one that takes longer leaves its size unknown. */
const LOOKUP_TIMEOUT_MS = 5_000

const UNREAD: AudioSource = { upload: false, url: false, fileIds: [], unread: true }
const NAMES_NOTHING: AudioSource = { upload: false, url: false, fileIds: [], unread: false }

/**
 * How many bytes of audio a transcription may be billed for, and its body to send on. A chunked form (no length) is
 * not read: whatever it names, its length is unknown. A `file_id` is looked up at Mistral, with the key the call goes
 * out with, only where a spend cap applies; elsewhere its size stays unknown, and a call whose count Mistral never
 * sends is billed no audio (meter.ts). Throws the answer the call would get when no key can serve it.
 */
export async function transcriptionAudio ({ body, headers, tenant, candidates, deps, client, log }: {
  /** undefined for a body parsed as JSON, from which Mistral reads an empty form: no audio */
  body: Readable | undefined
  headers: Record<string, string | string[] | undefined>
  tenant: TenantContext
  candidates: string[]
  deps: AttemptDeps
  /** the client's response, where there is one: its connection closing ends a lookup's wait for a cooling key */
  client?: ServerResponse
  log: FastifyBaseLogger
}): Promise<TranscriptionAudio> {
  const length = declaredLength(headers['content-length'])
  if (body === undefined || length === 0) return { bytes: 0, body }
  if (length === undefined) return { bytes: undefined, body }
  const { source, body: forwarded } = await readSource(body, headers['content-type'], length)
  if (source.unread || source.url || source.fileIds.length > 1) return { bytes: undefined, body: forwarded }
  if (source.fileIds.length === 0) return { bytes: length, body: forwarded }
  const uploaded = source.upload ? length : 0
  const capped = hasCaps(tenant.workspace.caps) || hasCaps(tenant.token.caps)
  const file = capped ? await fileSize(deps, tenant, candidates, source.fileIds[0], client, log) : undefined
  if (file === undefined) return { bytes: undefined, body: forwarded }
  // a file Mistral does not have is no audio: the call goes on, on that key, and the client gets Mistral's own answer
  if ('absentFor' in file) return { bytes: uploaded, body: forwarded, pinnedKey: file.absentFor }
  return { bytes: Math.max(uploaded, file.bytes), body: forwarded }
}

function declaredLength (header: string | string[] | undefined): number | undefined {
  return typeof header === 'string' && /^\d+$/.test(header) ? Number(header) : undefined
}

/**
 * The form's source, from its content type as Mistral (Starlette) reads it: multipart/form-data, or
 * application/x-www-form-urlencoded; anything else is read by Mistral as an empty form, which it refuses.
 */
async function readSource (body: Readable, contentType: string | string[] | undefined, length: number) {
  if (typeof contentType !== 'string') return { source: NAMES_NOTHING, body }
  const media = mediaType(contentType)
  if (media?.type === 'application/x-www-form-urlencoded') {
    if (length > READ_BOUND) return { source: UNREAD, body }
    return readHead(body, (head, ended) => ended ? urlencodedSource(head) : undefined)
  }
  if (media?.type !== 'multipart/form-data') return { source: media === undefined ? UNREAD : NAMES_NOTHING, body }
  const boundary = media.params.get('boundary')
  if (boundary === undefined || boundary.length === 0 || boundary.length > 200 || media.ambiguous.has('boundary')) {
    return { source: UNREAD, body }
  }
  // a small form is read whole (the parts after its audio too); a larger one only up to its audio
  const whole = length <= READ_BOUND
  // what tells (a delimiter's CRLF or `--`, a part's headers' end) ends in `\n` or `-`: a read without either adds
  // nothing to tell by, as the reading of a longer head starts as that of a shorter one
  return readHead(body, (head, ended, last) => ended || last.includes(0x0a) || last.includes(0x2d)
    ? multipartSource(head, boundary, ended, whole)
    : undefined)
}

/**
 * Reads `stream` until `decide` knows, or past READ_BOUND, HEAD_READS or HEAD_READ_MS (unread), then puts what it read
 * back in front of the rest: the body sent on is the one received, and an upload's audio is never held. The bytes go
 * back from the 'data' handler (or a timer), before the stream can end; a stream read to its end is replaced by them.
 * `decide` sees the first READ_BOUND bytes, copied once into one buffer, and the read just made.
 */
function readHead (stream: Readable,
  decide: (head: Buffer, ended: boolean, last: Buffer) => AudioSource | undefined):
Promise<{ source: AudioSource, body: Readable }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const head = Buffer.allocUnsafe(READ_BOUND)
    let size = 0
    let reads = 0
    // a client slow to send its form's head is not waited for unbounded before any limit applies: its form is read
    // as naming audio of unknown length, and the call goes on to admission (concurrency, caps, deadlines)
    const timer = setTimeout(() => putBack(UNREAD), HEAD_READ_MS)
    const stop = () => {
      clearTimeout(timer)
      stream.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose)
    }
    function putBack (source: AudioSource) {
      stop()
      stream.pause()
      if (size > 0) stream.unshift(Buffer.concat(chunks, size))
      resolve({ source, body: stream })
    }
    function onData (chunk: Buffer) {
      if (size < READ_BOUND) chunk.copy(head, size)
      chunks.push(chunk)
      size += chunk.length
      reads++
      const source = decide(head.subarray(0, Math.min(size, READ_BOUND)), false, chunk) ??
        (size > READ_BOUND || reads >= HEAD_READS ? UNREAD : undefined)
      if (source !== undefined) putBack(source)
    }
    function onEnd () {
      stop()
      const whole = Buffer.concat(chunks, size)
      resolve({ source: decide(whole, true, Buffer.alloc(0)) ?? UNREAD, body: Readable.from([whole]) })
    }
    function onError (err: Error) {
      stop()
      reject(clientClosed('The client\'s form ended before it was read', { cause: err }))
    }
    function onClose () {
      stop()
      reject(clientClosed('The client closed the connection before its form was read'))
    }
    stream.on('data', onData).once('end', onEnd).once('error', onError).once('close', onClose)
  })
}

const DELIMITER_END = Buffer.from('\r\n\r\n')
const MENTION = /file_(?:url|id)/gi

/**
 * The source a multipart form names (RFC 7578), read strictly: where the gateway's reading could differ from
 * Mistral's (python-multipart), the form is unread. Undefined while it needs more bytes. `whole`: read past the
 * audio to the end (the form is small); otherwise its `file` part's headers end the reading.
 */
function multipartSource (head: Buffer, boundary: string, ended: boolean, whole: boolean): AudioSource | undefined {
  const more = ended ? UNREAD : undefined
  const delimiter = Buffer.from(`\r\n--${boundary}`)
  // a leading CRLF makes the first delimiter like the others (RFC 2046 §5.1.1)
  const data = Buffer.concat([Buffer.from('\r\n'), head])
  const source: AudioSource = { upload: false, url: false, fileIds: [], unread: false }
  let at = data.indexOf(delimiter)
  if (at === -1) return more
  // mentions read as what they are: the names of file_id parts, and text where no name can be (see below)
  let named = 0
  while (true) {
    const after = at + delimiter.length
    if (data.length < after + 2) return more
    const next = data.toString('latin1', after, after + 2)
    if (next === '--') return mentionsOnlyWhatItNames(data.subarray(0, after), source, named)
    if (next !== '\r\n') return UNREAD
    const headersEnd = data.indexOf(DELIMITER_END, after + 2)
    if (headersEnd === -1) return more
    const disposition = partDisposition(data.toString('latin1', after + 2, headersEnd))
    if (disposition === undefined) return UNREAD
    const { name, filename } = disposition
    // a URL is reserved as the most audio there is, whatever else the form holds: no need to read on
    if (name === 'file_url') return { ...source, url: true }
    // a filename read as Python reads it (profile_id.wav) names no field
    named += mentions(filename ?? '')
    if (name === 'file') {
      source.upload = true
      if (!whole) return mentionsOnlyWhatItNames(data.subarray(0, headersEnd), source, named)
    }
    const valueStart = headersEnd + DELIMITER_END.length
    const valueEnd = data.indexOf(delimiter, valueStart)
    if (valueEnd === -1) return more
    // nor does the audio: it ends at the same delimiter as a field's value, but it may hold any bytes
    if (name === 'file') named += mentions(data.toString('latin1', valueStart, valueEnd))
    if (name === 'file_id') {
      named++
      const id = data.toString('utf8', valueStart, valueEnd)
      // an empty id names no file
      if (id.length > 0 && !source.fileIds.includes(id)) source.fileIds.push(id)
    }
    at = valueEnd
  }
}

/**
 * A form that mentions `file_url` or `file_id` elsewhere than as the name of a part it read (in another part's value,
 * a header) may be one another parser reads otherwise: it is read as naming what the gateway cannot see. `named`
 * counts the mentions read as what they are (names, filenames, audio). Skipped where a URL is named, as that is
 * reserved as the most audio already.
 */
function mentionsOnlyWhatItNames (text: Buffer, source: AudioSource, named: number): AudioSource {
  if (source.url) return source
  const inIds = source.fileIds.reduce((sum, id) => sum + mentions(id), 0)
  return mentions(text.toString('latin1')) === named + inIds ? source : UNREAD
}

function mentions (text: string): number {
  return text.match(MENTION)?.length ?? 0
}

/**
 * A part's field name from its Content-Disposition: `form-data; name="..."`, a token or a quoted string without a
 * quoted-pair. Undefined for anything else (no disposition or two, a folded header, `name*=` (RFC 2231), a name
 * twice, an escape in it): Python reads those its own way. Its `filename` where Python reads it the same way.
 */
function partDisposition (headers: string): { name: string, filename: string | undefined } | undefined {
  let disposition: string | undefined
  for (const line of headers.split('\r\n')) {
    const colon = line.indexOf(':')
    if (colon <= 0 || line[0] === ' ' || line[0] === '\t') return undefined
    if (line.slice(0, colon).trim().toLowerCase() !== 'content-disposition') continue
    if (disposition !== undefined) return undefined
    disposition = line.slice(colon + 1)
  }
  const media = disposition === undefined ? undefined : mediaType(disposition)
  if (media?.type !== 'form-data' || media.ambiguous.has('name')) return undefined
  const name = media.params.get('name')
  if (name === undefined) return undefined
  return { name, filename: media.ambiguous.has('filename') ? undefined : media.params.get('filename') }
}

/**
 * A header's `type; key=value; ...` (RFC 9110 §5.6.6), keys lower-cased. Undefined when it does not parse, when a key
 * repeats, or for any RFC 2231 key (`key*`, `key*0`, `key*1*`: Python's email package joins continuations into the
 * key before the star, whatever a plain `key` says): the reading Mistral makes of those cannot be told from here.
 * `ambiguous`: the keys whose value Python unquotes otherwise (a quoted-pair, or `<...>`, which it strips).
 */
function mediaType (header: string) {
  const match = /^\s*([^\s;]+)\s*/.exec(header)
  if (match === null) return undefined
  const params = new Map<string, string>()
  const ambiguous = new Set<string>()
  const param = /;\s*([^\s=;"]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]*))\s*/y
  param.lastIndex = match[0].length
  while (param.lastIndex < header.length) {
    const found = param.exec(header)
    if (found === null) return undefined
    const key = found[1].toLowerCase()
    if (params.has(key) || key.includes('*')) return undefined
    const quoted = found[2]
    const value = quoted ?? found[3]
    if (quoted?.includes('\\') === true || /^<.*>$/s.test(value)) ambiguous.add(key)
    params.set(key, value)
  }
  return { type: match[1].toLowerCase(), params, ambiguous }
}

/**
 * The source an urlencoded form names. Fields are split at `&` and at `;` too (python-multipart's separators are
 * read as both: a field the gateway splits off that Mistral does not only reserves more), keys and values
 * percent-decoded with `+` as a space, as Mistral decodes them.
 */
function urlencodedSource (body: Buffer): AudioSource {
  const source: AudioSource = { upload: false, url: false, fileIds: [], unread: false }
  let named = 0
  let decodedText = ''
  for (const field of body.toString('latin1').split(/[&;]/)) {
    const equals = field.indexOf('=')
    const key = decodeField(equals === -1 ? field : field.slice(0, equals))
    const value = decodeField(equals === -1 ? '' : field.slice(equals + 1))
    if (key === undefined || value === undefined) return UNREAD
    decodedText += `${key}=${value}&`
    if (key === 'file_url') {
      source.url = true
      named++
    } else if (key === 'file_id') {
      named++
      if (value.length > 0 && !source.fileIds.includes(value)) source.fileIds.push(value)
    }
  }
  return mentionsOnlyWhatItNames(Buffer.from(decodedText, 'latin1'), source, named)
}

function decodeField (text: string): string | undefined {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '))
  } catch {
    return undefined
  }
}

/** A file's size as Mistral gives it, or the key Mistral said has no such file. */
type FileSize = { bytes: number } | { absentFor: string }

/**
 * `GET /v1/files/{id}` (RetrieveFile in mistral-openapi.yaml): the file's `bytes`, asked with the key the call will go
 * out with, as the attempt loop picks it (pickCallKey, asked without claiming a breaker's probe), through the proxy's
 * pool: files belong to an organisation, and another key of the workspace may be of another one. A key the call would
 * wait for is waited for here, as the call would (within UPSTREAM_RETRY_MAX_WAIT_MS), and asked once usable; with no
 * key to serve the call, the call's own answer is thrown. Undefined when the size is not known (an error, no answer
 * in LOOKUP_TIMEOUT_MS, no `bytes`).
 */
async function fileSize (deps: AttemptDeps, tenant: TenantContext, candidates: string[], fileId: string,
  client: ServerResponse | undefined, log: FastifyBaseLogger): Promise<FileSize | undefined> {
  const key = await keyOfTheCall(deps, tenant, candidates, client, log)
  const { pool, prefix, metrics } = deps
  try {
    const res = await pool.request({
      path: prefix + filePath(fileId),
      method: 'GET',
      headers: { authorization: `Bearer ${key.secret}`, accept: 'application/json' },
      signal: AbortSignal.timeout(LOOKUP_TIMEOUT_MS)
    })
    metrics.upstream(res.statusCode)
    if (res.statusCode !== 200) {
      await res.body.dump()
      if (res.statusCode === 404) return { absentFor: key.name }
      log.warn({ status: res.statusCode, key: key.name }, 'a transcription\'s file could not be looked up: reserved ' +
        'as audio of unknown length')
      return undefined
    }
    const { bytes } = await res.body.json() as { bytes?: unknown }
    return typeof bytes === 'number' && Number.isSafeInteger(bytes) && bytes >= 0 ? { bytes } : undefined
  } catch (err) {
    log.warn({ err: { name: (err as Error).name, code: (err as NodeJS.ErrnoException).code }, key: key.name },
      'a transcription\'s file could not be looked up: reserved as audio of unknown length')
    return undefined
  }
}

/**
 * The key the call's first pick would go out with, as sendWithRetries picks it: a hold (the key it waits for is
 * cooling down, and would only meet Mistral's 429 now) is waited out, then picked again, within what
 * UPSTREAM_RETRY_MAX_WAIT_MS allows; no key (all cooling past the hold, rejected, their breakers open) throws the
 * error the call would answer. Reserving such a call as audio of unknown length would refuse it by the spend cap, an
 * answer not to retry, where the call would have held and gone on, or been answered its own retryable error.
 */
async function keyOfTheCall (deps: AttemptDeps, tenant: TenantContext, candidates: string[],
  client: ServerResponse | undefined, log: FastifyBaseLogger) {
  const { config } = deps
  const plan = cooldownPlan(tenant.workspace.cooldown, config)
  const started = Date.now()
  // the call's first pick holds for any wait that fits its retry time (mayHold in attempts.ts, before any 429)
  const mayHold = async (wait: number) => holdFitsCall(wait, started, config)
  while (true) {
    const choice = await pickCallKey(tenant.workspace.id, candidates, plan, mayHold, deps, log, 'look')
    if ('error' in choice) throw choice.error
    if ('key' in choice) return choice.key
    await holdFor(holdDelay(choice.hold, started, config), client)
  }
}

/** Waits, unless the client closes its connection first (then its call ends here). */
async function holdFor (ms: number, client: ServerResponse | undefined) {
  const gone = new AbortController()
  const onClose = () => gone.abort()
  if (client?.destroyed === true) onClose()
  else client?.once('close', onClose)
  try {
    await sleep(ms, undefined, { signal: gone.signal })
  } catch (err) {
    throw clientClosed('The client closed the connection while its call waited for a key', { cause: err })
  } finally {
    client?.off('close', onClose)
  }
}
