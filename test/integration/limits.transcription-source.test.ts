import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { formatMoney } from '../../src/pricing/money.js'
import { buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { requestLine } from '../helpers/recorded.js'

// A transcription names its audio by a `file` part, a `file_url` or a `file_id` (AudioTranscriptionRequest in
// mistral-openapi.yaml): what it reserves against the spend caps must bound the audio Mistral bills, whichever it
// names. The most audio Mistral takes is 500 MB (MISTRAL-NOTES §2.1); the gateway reserves 2,000 bytes a second.

const TRANSCRIPTIONS = '/v1/audio/transcriptions'
const BOUNDARY = 'transcription-source-boundary'
const MODEL = 'voxtral-mini-latest'
// the gateway reads a form's head up to this many bytes (src/proxy/transcription-source.ts)
const READ_BOUND = 64 * 1024

type Part = [name: string, value: string] | [name: 'file', audio: Buffer]

/** A multipart form as the Mistral SDK lays it out: `model`, the audio or its name, then the other fields. */
function multipart (parts: Part[]): Buffer {
  const chunks: Buffer[] = []
  for (const [name, value] of parts) {
    if (typeof value === 'string') {
      chunks.push(Buffer.from(`--${BOUNDARY}\r\ncontent-disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`))
      continue
    }
    chunks.push(Buffer.from(`--${BOUNDARY}\r\ncontent-disposition: form-data; name="${name}"; filename="a.mp3"\r\n` +
      'content-type: audio/mpeg\r\n\r\n'), value, Buffer.from('\r\n'))
  }
  chunks.push(Buffer.from(`--${BOUNDARY}--\r\n`))
  return Buffer.concat(chunks)
}

const MULTIPART = `multipart/form-data; boundary=${BOUNDARY}`
// the Mistral Python SDK sends a form without a file part urlencoded (mistralai/client-python#338)
const URLENCODED = 'application/x-www-form-urlencoded'

interface Sent { status: number, json: any, headers: Record<string, string | string[] | undefined> }

async function transcribe (url: string, ws: TestWorkspace, body: Buffer | Readable, contentType: string,
  contentLength?: number): Promise<Sent> {
  const length = Buffer.isBuffer(body) ? body.length : contentLength
  const res = await request(`${url}${TRANSCRIPTIONS}`, {
    method: 'POST',
    headers: {
      ...ws.headers,
      'content-type': contentType,
      ...(length === undefined ? {} : { 'content-length': String(length) })
    },
    body
  })
  const text = await res.body.text()
  let json: any
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.statusCode, json, headers: res.headers }
}

/** The dearest per-minute price of the family: a transcription's model is not read, so it reserves at that. */
function dearestPerMinute ({ app }: TestApp): number {
  return Math.max(...app.prices.list('USD', 'transcription').filter((row) => row.status !== 'retired')
    .map((row) => row.audioPerMinute))
}

/** A gateway, and a workspace whose monthly cap affords an hour of audio at the dearest price: far less than 500 MB. */
async function cappedWorkspace (t: Test, keys?: string[]) {
  const testApp = await buildTestApp(t)
  const url = await listen(testApp.app)
  const ws = await testApp.createWorkspace({ keys })
  const hour = 60 * dearestPerMinute(testApp)
  const patched = await testApp.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { caps: { monthly: formatMoney(hour) } })
  t.equal(patched.statusCode, 200, 'the cap is set')
  return { testApp, url, ws, mistral: testApp.mistral }
}

function refusedByCap (t: Test, sent: Sent, what: string) {
  t.equal(sent.status, 429, `${what}: refused`)
  t.match(sent.json, { type: 'insufficient_quota', code: 'monthly_spend_cap_reached' }, `${what}: by the monthly cap`)
  t.equal(sent.headers['x-should-retry'], 'false')
}

t.test('a file_url transcription reserves the most audio Mistral takes; a small upload, its size', async (t) => {
  const { url, ws, mistral } = await cappedWorkspace(t)
  const transcriptions = () => mistral.requestsTo(TRANSCRIPTIONS).length

  const audio = randomBytes(20_000) // 10 s at the gateway's 2,000 bytes a second
  const small = await transcribe(url, ws, multipart([['model', MODEL], ['file', audio], ['language', 'en']]), MULTIPART)
  t.equal(small.status, 200, 'a small upload is admitted')
  t.equal(transcriptions(), 1)
  // read whole by the gateway (it is small), and sent on as it came
  const uploaded = mistral.requestsTo(TRANSCRIPTIONS)[0].form
  t.equal(uploaded?.files[0].sha256, createHash('sha256').update(audio).digest('hex'), 'the audio reached Mistral')
  t.same(uploaded?.fields, { model: MODEL, language: 'en' }, 'with the fields before and after it')

  const audioUrl = 'https://example.com/a-long-meeting.mp3'
  refusedByCap(t, await transcribe(url, ws, multipart([['model', MODEL], ['file_url', audioUrl]]), MULTIPART),
    'a multipart file_url form')
  refusedByCap(t, await transcribe(url, ws,
    Buffer.from(new URLSearchParams({ model: MODEL, file_url: audioUrl }).toString()), URLENCODED),
  'an urlencoded file_url form')
  // what Mistral's own parser reads as file_url: a `;` separates fields too, a key may be percent-encoded
  refusedByCap(t, await transcribe(url, ws, Buffer.from(`model=${MODEL};file%5Furl=${encodeURIComponent(audioUrl)}`),
    URLENCODED), 'an urlencoded file_url form with `;` and an encoded key')
  // padded past what the gateway reads of a form without an upload: it may name anything there
  const padding = 'x'.repeat(READ_BOUND)
  refusedByCap(t, await transcribe(url, ws,
    multipart([['model', MODEL], ['context_bias', padding], ['file_url', audioUrl]]), MULTIPART),
  'a file_url form padded past the read bound')
  // a name the gateway does not read as Mistral would (a quoted-pair in it) is no name it can trust
  const escaped = Buffer.from(`--${BOUNDARY}\r\ncontent-disposition: form-data; name="model"\r\n\r\n${MODEL}\r\n` +
    `--${BOUNDARY}\r\ncontent-disposition: form-data; name="file\\_url"\r\n\r\n${audioUrl}\r\n--${BOUNDARY}--\r\n`)
  refusedByCap(t, await transcribe(url, ws, escaped, MULTIPART), 'a form with an escaped name')
  t.equal(transcriptions(), 1, 'none of the refused calls reached Mistral')
  t.equal(mistral.requestsTo('/v1/files').length, 0, 'no file was looked up')
})

t.test('a file_id transcription reserves by the size Mistral gives for the file', async (t) => {
  const { url, ws, mistral } = await cappedWorkspace(t)
  const transcriptions = () => mistral.requestsTo(TRANSCRIPTIONS)
  // 100 s at 2,000 bytes a second: within the hour; 20,000 s: far past it
  const short = mistral.addFile({ bytes: 200_000, purpose: 'audio', filename: 'short.mp3' })
  const long = mistral.addFile({ bytes: 40_000_000, purpose: 'audio', filename: 'long.mp3' })

  const admitted = await transcribe(url, ws, multipart([['model', MODEL], ['file_id', short.id]]), MULTIPART)
  t.equal(admitted.status, 200, 'a short file is admitted')
  const lookups = mistral.requestsTo('/v1/files')
  t.same(lookups.map((seen) => `${seen.method} ${seen.path}`), [`GET /v1/files/${short.id}`], 'looked up once')
  t.equal(lookups[0]?.apiKey, ws.mistralKey, 'with the workspace\'s key')
  t.equal(transcriptions().length, 1)
  t.equal(transcriptions()[0].form?.fields.file_id, short.id, 'the form reached Mistral as sent')

  refusedByCap(t, await transcribe(url, ws, multipart([['model', MODEL], ['file_id', long.id]]), MULTIPART),
    'a long file')
  const urlencoded = await transcribe(url, ws,
    Buffer.from(new URLSearchParams({ model: MODEL, file_id: short.id }).toString()), URLENCODED)
  t.equal(urlencoded.status, 200, 'an urlencoded form naming the short file is admitted')
  t.equal(transcriptions().at(-1)?.form?.fields.file_id, short.id, 'and reached Mistral as sent')
  refusedByCap(t, await transcribe(url, ws,
    Buffer.from(new URLSearchParams({ model: MODEL, file_id: long.id }).toString()), URLENCODED),
  'an urlencoded form naming the long file')
  t.equal(transcriptions().length, 2, 'the refused calls never reached Mistral')

  // a lookup that fails (Mistral away, slow, in error) leaves the size unknown: the most audio Mistral takes
  mistral.enqueueError(503, { detail: 'Service Unavailable' }, {}, { path: `/v1/files/${short.id}`, method: 'GET' })
  refusedByCap(t, await transcribe(url, ws, multipart([['model', MODEL], ['file_id', short.id]]), MULTIPART),
    'a file whose lookup failed')

  // a file Mistral does not have: the call reaches Mistral, whose own answer the client gets
  const missing = randomUUID()
  const unknown = await transcribe(url, ws, multipart([['model', MODEL], ['file_id', missing]]), MULTIPART)
  t.not(unknown.status, 429, `a file Mistral does not have is not refused by the cap (${unknown.status})`)
  t.equal(transcriptions().at(-1)?.form?.fields.file_id, missing, 'it reached Mistral')
})

t.test('a file_id is looked up with the key the call goes out with, as the cooldown order picks it', async (t) => {
  const { testApp, url, ws, mistral } = await cappedWorkspace(t, ['default', 'backup'])
  const keyName = (apiKey: string | undefined) =>
    apiKey === ws.mistralKey ? 'default' : apiKey === `${ws.mistralKey}-backup` ? 'backup' : 'other'
  const lookups = () => mistral.requestsTo('/v1/files').map((seen) => `${keyName(seen.apiKey)} ${seen.path}`)
  const transcriptions = () => mistral.requestsTo(TRANSCRIPTIONS).map((seen) => keyName(seen.apiKey))
  const setOrder = async (cooldown: Record<string, unknown>) => t.equal((await testApp.admin('PATCH',
    `/admin/v1/workspaces/${ws.slug}`, { cooldown })).statusCode, 200, `cooldown ${JSON.stringify(cooldown)} set`)
  const short = mistral.addFile({ bytes: 200_000, purpose: 'audio', filename: 'short.mp3' })
  const long = mistral.addFile({ bytes: 40_000_000, purpose: 'audio', filename: 'long.mp3' })
  const byId = (id: string) => multipart([['model', MODEL], ['file_id', id]])

  // `default` cools down for 3 s: a chat meets Mistral's 429 on it, and the default order fails over to `backup`
  mistral.enqueueRateLimit({ retryAfterSeconds: 3, filter: '/v1/chat/completions' })
  const chat = await testApp.app.inject({ method: 'POST', url: '/v1/chat/completions',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }] }) })
  t.equal(chat.statusCode, 200, 'the chat was served by `backup`')

  t.equal((await transcribe(url, ws, byId(short.id), MULTIPART)).status, 200, 'failover: admitted')
  t.same(lookups(), [`backup /v1/files/${short.id}`], 'failover: the file was looked up with `backup`')
  t.same(transcriptions(), ['backup'], 'the call that `backup` serves')

  // a hold shorter than the cooldown, and no failover: no key can serve the call, which gets its own retryable 429
  // (not the spend cap's refusal, which tells the client not to retry), and nothing is looked up
  await setOrder({ order: ['hold'], holdMs: 500 })
  const unserved = await transcribe(url, ws, byId(short.id), MULTIPART)
  t.equal(unserved.status, 429, '["hold"] past its hold: refused')
  t.match(unserved.json, { type: 'rate_limit_error', code: 'upstream_rate_limited' },
    '["hold"] past its hold: as `default` is cooling down')
  t.equal(unserved.headers['x-should-retry'], 'true', '["hold"] past its hold: to be retried')
  t.same(lookups(), [`backup /v1/files/${short.id}`], '["hold"] past its hold: not looked up with `backup`')

  // a hold that fits: the lookup waits for `default`, as the call does, and asks with it (`backup` may be of another
  // organisation, which has no such file); the cap then applies to each file's own size
  await setOrder({ order: ['hold'], holdMs: 5_000 })
  const [shortHeld, longHeld] = await Promise.all([transcribe(url, ws, byId(short.id), MULTIPART),
    transcribe(url, ws, byId(long.id), MULTIPART)])
  t.equal(shortHeld.status, 200, '["hold"] within its hold: the short file is admitted after the hold')
  refusedByCap(t, longHeld, '["hold"] within its hold: the long file, by its size')
  t.same(lookups().slice(1).sort(), [`default /v1/files/${long.id}`, `default /v1/files/${short.id}`].sort(),
    '["hold"] within its hold: each file looked up with `default`, once its cooldown ended')
  t.same(transcriptions(), ['backup', 'default'], 'the short file\'s call went out with `default`')
})

t.test('a file the lookup\'s key does not see pins the call to that key', async (t) => {
  const { testApp, url, ws, mistral } = await cappedWorkspace(t, ['default', 'backup'])
  const keyName = (apiKey: string | undefined) =>
    apiKey === ws.mistralKey ? 'default' : apiKey === `${ws.mistralKey}-backup` ? 'backup' : 'other'
  const lookups = () => mistral.requestsTo('/v1/files').map((seen) => keyName(seen.apiKey))
  const transcriptions = () => mistral.requestsTo(TRANSCRIPTIONS).map((seen) => keyName(seen.apiKey))
  // `backup` is of another organisation, which alone has the long file: `default` is answered 404 for it
  mistral.organisations.set(`${ws.mistralKey}-backup`, 'backup-organisation')
  const long = mistral.addFile({ bytes: 40_000_000, purpose: 'audio', filename: 'long.mp3',
    organisation: 'backup-organisation' })

  // while the lookup (with `default`) is on its way, a chat meets Mistral's 429 on `default`, which cools down for
  // 30 s: the call, picking its key after the lookup, would fail over to `backup`, which has the file
  mistral.enqueueDelay(1_500, { path: `/v1/files/${long.id}`, method: 'GET' })
  const call = transcribe(url, ws, multipart([['model', MODEL], ['file_id', long.id]]), MULTIPART)
  while (mistral.requestsTo('/v1/files').length === 0) await sleep(10)
  mistral.enqueueRateLimit({ retryAfterSeconds: 30, filter: '/v1/chat/completions' })
  const chat = await testApp.app.inject({ method: 'POST', url: '/v1/chat/completions',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }] }) })
  t.equal(chat.statusCode, 200, 'the chat was served by `backup`')

  const sent = await call
  t.same(lookups(), ['default'], 'the file was looked up with `default`, which does not see it')
  t.same(transcriptions(), [], 'the call never went out with `backup`, which would transcribe the long file')
  t.equal(sent.status, 429, 'the call, pinned to `default`, is refused')
  t.match(sent.json, { type: 'rate_limit_error', code: 'upstream_rate_limited' }, 'as `default` is cooling down')
  t.equal(sent.headers['x-should-retry'], 'true', 'to be retried (with `default`, which Mistral answers 404)')
})

t.test('a pinned call refused by a cap is logged with the key it was pinned to', async (t) => {
  const { testApp, url, ws, mistral } = await cappedWorkspace(t, ['default', 'backup'])
  const keyName = (apiKey: string | undefined) =>
    apiKey === ws.mistralKey ? 'default' : apiKey === `${ws.mistralKey}-backup` ? 'backup' : 'other'
  // `backup` is of another organisation, which does not have `default`'s file
  mistral.organisations.set(`${ws.mistralKey}-backup`, 'backup-organisation')
  const file = mistral.addFile({ bytes: 200_000, purpose: 'audio', filename: 'short.mp3' })
  // `default` cools down for 30 s: the lookup fails over to `backup`, which Mistral answers 404
  mistral.enqueueRateLimit({ retryAfterSeconds: 30, filter: '/v1/chat/completions' })
  const chat = await testApp.app.inject({ method: 'POST', url: '/v1/chat/completions',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }] }) })
  t.equal(chat.statusCode, 200, 'the chat was served by `backup`')

  // the form's upload, past the hour of audio the cap affords, is reserved all the same
  const sent = await transcribe(url, ws,
    multipart([['model', MODEL], ['file_id', file.id], ['file', Buffer.alloc(8_000_000)]]), MULTIPART)
  t.same(mistral.requestsTo('/v1/files').map((seen) => keyName(seen.apiKey)), ['backup'],
    'the file was looked up with `backup`, which does not see it')
  refusedByCap(t, sent, 'the call pinned to `backup`, by its upload')
  const requestId = String(sent.headers['x-request-id'])
  for (let waited = 0; requestLine(testApp, requestId) === undefined && waited < 3_000; waited += 50) await sleep(50)
  t.match(requestLine(testApp, requestId), { status: 429, key: 'backup' },
    'its request line names `backup`, the key it was pinned to, not `default`')
})

t.test('an upload is forwarded as it arrives, unchanged, with nothing looked up', async (t) => {
  const { url, ws, mistral } = await cappedWorkspace(t)
  const MiB = 1024 * 1024
  const audio = randomBytes(2 * MiB) // about 17 minutes at 2,000 bytes a second: within the cap
  const form = multipart([['model', MODEL], ['file', audio], ['language', 'fr'],
    ['timestamp_granularities', 'segment']])
  t.ok(form.length > READ_BOUND, 'a body larger than what the gateway reads of a form')
  const upload = () => mistral.requestsTo(TRANSCRIPTIONS)[0]
  let forwardedBeforeTheEnd = false
  // the client holds back the last half of its body until Mistral has received bytes of it: a gateway that read the
  // whole body before sending it on would never let Mistral see any, and the upload would hang until the deadline
  async function * heldBack () {
    yield form.subarray(0, MiB)
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline && !((upload()?.bodyBytes ?? 0) > 0)) await sleep(10)
    forwardedBeforeTheEnd = (upload()?.bodyBytes ?? 0) > 0
    yield form.subarray(MiB)
  }
  const sent = await transcribe(url, ws, Readable.from(heldBack()), MULTIPART, form.length)
  t.equal(sent.status, 200)
  t.ok(forwardedBeforeTheEnd, 'Mistral received the upload while the client was still sending it')
  const received = upload()
  t.equal(received?.bodyBytes, form.length, 'every byte reached Mistral')
  t.equal(received?.headers['content-length'], String(form.length), 'with the length the client declared')
  t.same(received?.form?.fields, { model: MODEL, language: 'fr', timestamp_granularities: 'segment' },
    'the fields before and after the audio, unchanged')
  t.equal(received?.form?.files[0].bytes, audio.length)
  t.equal(received?.form?.files[0].sha256, createHash('sha256').update(audio).digest('hex'), 'the audio unchanged')
  t.equal(mistral.requestsTo('/v1/files').length, 0, 'no file was looked up')
})

t.test('a form whose names or boundary Python joins from RFC 2231 continuations reserves the most audio', async (t) => {
  const { url, ws, mistral } = await cappedWorkspace(t)
  const audioUrl = 'https://example.com/ten-hours.mp3'
  const part = (disposition: string, value: string) =>
    `--${BOUNDARY}\r\ncontent-disposition: form-data; ${disposition}\r\n\r\n${value}\r\n`
  const model = part('name="model"', MODEL)
  const end = `--${BOUNDARY}--\r\n`
  // Starlette reads `name*0`/`name*1` as `file_url` (or `file_id`), whatever the plain `name` says
  refusedByCap(t, await transcribe(url, ws,
    Buffer.from(model + part('name="file"; name*0="file_"; name*1="url"', audioUrl) + end), MULTIPART),
  'a file part continued into file_url')
  refusedByCap(t, await transcribe(url, ws,
    Buffer.from(part('name="model"; name*0="file_"; name*1="id"', randomUUID()) + end), MULTIPART),
  'a model part continued into file_id')
  // the gateway would split on the plain boundary, Python on the continued one
  refusedByCap(t, await transcribe(url, ws, multipart([['model', MODEL], ['file_url', audioUrl]]),
    `multipart/form-data; boundary=other; boundary*0=${BOUNDARY}`), 'a continued boundary')
  t.equal(mistral.requestsTo(TRANSCRIPTIONS).length, 0, 'none reached Mistral')
  t.equal(mistral.requestsTo('/v1/files').length, 0, 'no file was looked up')
})
