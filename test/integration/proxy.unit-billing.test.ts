import t from 'tap'
import { request } from 'undici'
import { AUDIO_BYTES_PER_SECOND } from '../../src/pricing/estimate.js'
import { buildTestApp, listen } from '../helpers/app.js'

type Built = Awaited<ReturnType<typeof buildTestApp>>

const BOUNDARY = 'unit-billing-boundary'
// 16 kHz 16-bit mono PCM: 3 s of audio
const AUDIO = Buffer.alloc(3 * 32_000)

/** A streamed transcription's form, with a known length: the gateway reserves audio seconds from it. */
function transcriptionForm (): Buffer {
  const field = (name: string, value: string) =>
    `--${BOUNDARY}\r\ncontent-disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`
  return Buffer.concat([
    Buffer.from(field('model', 'voxtral-mini-latest') + field('stream', 'true') +
      `--${BOUNDARY}\r\ncontent-disposition: form-data; name="file"; filename="a.wav"\r\n` +
      'content-type: audio/wav\r\n\r\n'),
    AUDIO,
    Buffer.from(`\r\n--${BOUNDARY}--\r\n`)
  ])
}

/** The workspace's one ledger record, once the meter has written it. */
async function ledgerRecord ({ app, admin }: Built, slug: string) {
  const deadline = Date.now() + 3_000
  let records: any[] = []
  while (records.length === 0 && Date.now() < deadline) {
    await app.usage.flush()
    records = (await admin('GET', `/admin/v1/workspaces/${slug}/usage`)).json.records
  }
  return records
}

/** A call whose client reads the answer's first chunk, then hangs up: its status. */
async function leftAfterFirstChunk (url: string, options: { headers: Record<string, string>, body: Buffer | string }) {
  const controller = new AbortController()
  const res = await request(url, { method: 'POST', ...options, signal: controller.signal })
  await res.body[Symbol.asyncIterator]().next()
  controller.abort()
  return res.statusCode
}

t.test('a streamed transcription left after its first delta is billed the audio seconds it reserved', async (t) => {
  const built = await buildTestApp(t)
  const { app, mistral, createWorkspace } = built
  const ws = await createWorkspace()
  const url = await listen(app)
  mistral.holdStreams()
  const form = transcriptionForm()
  t.equal(await leftAfterFirstChunk(`${url}/v1/audio/transcriptions`, {
    headers: {
      ...ws.headers,
      'content-type': `multipart/form-data; boundary=${BOUNDARY}`,
      'content-length': String(form.length)
    },
    body: form
  }), 200)

  const records = await ledgerRecord(built, ws.slug)
  t.equal(records.length, 1)
  t.match(records[0], { operation: 'transcription', estimated: true, streamed: true, status: 200 })
  // the reservation's seconds: the upload's length, its form's framing included, at the reservation's low byte rate
  t.equal(records[0].audioSeconds, Math.ceil(form.length / AUDIO_BYTES_PER_SECOND))
  t.ok(records[0].billedCostMicros > 0, 'the transcription the client took is not free')
})

t.test('an OCR answer left before its end is billed the pages it reserved', async (t) => {
  const built = await buildTestApp(t)
  const { app, mistral, createWorkspace } = built
  const ws = await createWorkspace()
  const url = await listen(app)
  // the answer's pages arrive, its usage_info (at the end) never does
  mistral.enqueue((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write(`{"pages":[{"index":0,"markdown":"${'x'.repeat(64 * 1024)}"}`)
  }, '/v1/ocr')
  t.equal(await leftAfterFirstChunk(`${url}/v1/ocr`, {
    headers: { ...ws.headers, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'mistral-ocr-latest',
      document: { type: 'document_url', document_url: 'https://example.com/a.pdf' },
      pages: '0-3'
    })
  }), 200)

  const records = await ledgerRecord(built, ws.slug)
  t.equal(records.length, 1)
  t.match(records[0], { operation: 'ocr', estimated: true, status: 200, pages: 4 })
  t.ok(records[0].billedCostMicros > 0, 'the pages the client took are not free')
})
