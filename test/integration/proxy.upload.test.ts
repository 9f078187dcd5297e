import { createHash, randomBytes } from 'node:crypto'
import { Readable } from 'node:stream'
import t from 'tap'
import { request } from 'undici'
import { buildTestApp, gatewayEnv } from '../helpers/app.js'
import { filePatternByte, startFakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process.js'

const MiB = 1024 * 1024
const SIZE = 200 * MiB
// a relay that buffered the file would grow by its 200 MB; streaming costs a few socket buffers
const RSS_GROWTH_LIMIT = 60 * MiB
const BOUNDARY = `tramontane-upload-${randomBytes(8).toString('hex')}`

/** `purpose` then one file part of `size` bytes, made 1 MiB at a time; `hash` sees exactly the file's bytes. */
async function * multipartBody (size: number, hash: ReturnType<typeof createHash>) {
  yield Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n` +
    'Content-Type: application/octet-stream\r\n\r\n')
  const base = randomBytes(MiB)
  for (let index = 0; index * MiB < size; index++) {
    // a fresh block each time: the one before may still sit in a socket's queue
    const block = Buffer.from(base.subarray(0, Math.min(MiB, size - index * MiB)))
    block.writeUInt32BE(index, 0) // a lost, doubled or reordered block changes the hash
    hash.update(block)
    yield block
  }
  yield Buffer.from(`\r\n--${BOUNDARY}--\r\n`)
}

/** Samples the gateway's RSS every ~50 ms while `work` runs: its peak, and its value just before. */
async function peakRss<T> (gateway: GatewayProcess, work: () => Promise<T>) {
  const baseline = gateway.rss()
  let peak = baseline
  let samples = 0
  const sample = () => {
    peak = Math.max(peak, gateway.rss())
    samples++
  }
  const timer = setInterval(sample, 50)
  try {
    const result = await work()
    sample()
    return { baseline, peak, samples, result }
  } finally {
    clearInterval(timer)
  }
}

const mb = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`

t.test('200 MB through a gateway process, both ways, without holding it in memory', async (t) => {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  // an in-process replica on the same database does the admin work; the spawned one is measured
  const { createWorkspace } = await buildTestApp(t, {}, { mistral })
  const gateway = await startGatewayProcess(t, {
    ...gatewayEnv(mistral.url),
  })
  const ws = await createWorkspace()

  const upload = async (size: number) => {
    const hash = createHash('sha256')
    const res = await request(`${gateway.url}/v1/files`, {
      method: 'POST',
      headers: { ...ws.headers, 'content-type': `multipart/form-data; boundary=${BOUNDARY}` },
      body: Readable.from(multipartBody(size, hash))
    })
    const text = await res.body.text()
    return { status: res.statusCode, text, sha256: hash.digest('hex') }
  }
  const download = async (id: string) => {
    const res = await request(`${gateway.url}/v1/files/${id}/content`, { headers: ws.headers })
    const pattern = Buffer.from(Array.from({ length: 251 * 4200 }, (_, i) => filePatternByte(i)))
    let bytes = 0
    let intact = true
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      // the fake serves byte i as i % 251: compare each chunk with the pattern at its offset
      if (intact) {
        const at = bytes % 251
        intact = chunk.length <= pattern.length - at && chunk.equals(pattern.subarray(at, at + chunk.length))
      }
      bytes += chunk.length
    }
    return { status: res.statusCode, headers: res.headers, bytes, intact }
  }

  // warm up: JIT, the upstream pool's sockets, the token cache; the baseline is taken after
  const warm = await upload(4 * MiB)
  t.equal(warm.status, 200, 'a 4 MiB warm-up upload goes through')
  await download(mistral.addFile({ bytes: 4 * MiB }).id)
  mistral.reset()

  t.test('a 200 MB multipart upload', async (t) => {
    const { baseline, peak, samples, result } = await peakRss(gateway, () => upload(SIZE))
    t.comment(`upload: gateway RSS baseline ${mb(baseline)}, peak ${mb(peak)}, growth ${mb(peak - baseline)}, ` +
      `${samples} samples`)
    t.equal(result.status, 200)
    const file = JSON.parse(result.text)
    t.equal(file.object, 'file')
    t.equal(file.bytes, SIZE, "the fake's JSON reaches the client with the full size")
    t.equal(file.filename, 'big.bin')
    t.equal(file.purpose, 'batch')
    const uploads = mistral.requestsTo('/v1/files')
    t.equal(uploads.length, 1, 'one upstream request')
    const [received] = uploads
    t.equal(received.apiKey, ws.mistralKey, "upstream got the workspace's Mistral key")
    t.equal(received.form?.fields.purpose, 'batch')
    t.equal(received.form?.files.length, 1)
    t.equal(received.form?.files[0].bytes, SIZE, 'exactly the file bytes arrived upstream')
    t.equal(received.form?.files[0].sha256, result.sha256, 'and unchanged')
    t.ok(samples >= 5, `RSS sampled during the transfer (${samples} samples)`)
    t.ok(peak - baseline < RSS_GROWTH_LIMIT, `RSS grew by ${mb(peak - baseline)} (< ${mb(RSS_GROWTH_LIMIT)})`)
  })

  t.test('a 200 MB binary download', async (t) => {
    const stored = mistral.addFile({ bytes: SIZE, filename: 'big-output.bin' })
    const { baseline, peak, samples, result } = await peakRss(gateway, () => download(stored.id))
    t.comment(`download: gateway RSS baseline ${mb(baseline)}, peak ${mb(peak)}, growth ${mb(peak - baseline)}, ` +
      `${samples} samples`)
    t.equal(result.status, 200)
    t.equal(result.headers['content-type'], 'application/octet-stream')
    t.equal(result.headers['content-length'], String(SIZE))
    t.equal(result.bytes, SIZE, 'exactly the file bytes reached the client')
    t.ok(result.intact, 'the bytes are the ones the fake served, in order')
    const [received] = mistral.requestsTo(`/v1/files/${stored.id}/content`)
    t.equal(received?.apiKey, ws.mistralKey)
    t.ok(samples >= 5, `RSS sampled during the transfer (${samples} samples)`)
    t.ok(peak - baseline < RSS_GROWTH_LIMIT, `RSS grew by ${mb(peak - baseline)} (< ${mb(RSS_GROWTH_LIMIT)})`)
  })
})
