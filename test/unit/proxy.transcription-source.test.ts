import { Readable } from 'node:stream'
import t from 'tap'
import type { FastifyBaseLogger } from 'fastify'
import type { AttemptDeps } from '../../src/proxy/attempts.js'
import { transcriptionAudio } from '../../src/proxy/transcription-source.js'
import type { TenantContext } from '../../src/tenancy/tokens.js'

// What a transcription's form names, read as Mistral's parser (Starlette, python-multipart, Python's email package)
// reads it. `bytes` undefined is "unknown": reserved as the most audio Mistral takes. No file_id is looked up here
// (no form below names one the gateway reads), so no tenant, keys or pool are needed.

const B = 'XyZ'
const MULTIPART = `multipart/form-data; boundary=${B}`
const log = { warn () {}, error () {}, info () {} } as unknown as FastifyBaseLogger

/** Sends `form` in chunks of `chunk` bytes, each its own 'data' event; returns what the gateway decided and sent on. */
async function read (form: Buffer, { chunk = 1 << 20, contentType = MULTIPART } = {}) {
  const chunks: Buffer[] = []
  for (let at = 0; at < form.length; at += chunk) chunks.push(form.subarray(at, at + chunk))
  const cpu = process.cpuUsage()
  const audio = await transcriptionAudio({
    body: Readable.from(chunks, { objectMode: false }),
    headers: { 'content-length': String(form.length), 'content-type': contentType },
    tenant: {} as TenantContext,
    candidates: [],
    deps: {} as AttemptDeps,
    log
  })
  const used = process.cpuUsage(cpu)
  const sent: Buffer[] = []
  for await (const piece of audio.body as Readable) sent.push(Buffer.from(piece))
  return { bytes: audio.bytes, cpuMs: (used.user + used.system) / 1000, sentOn: Buffer.concat(sent).equals(form) }
}

function field (disposition: string, value: string) {
  return `--${B}\r\nContent-Disposition: ${disposition}\r\n\r\n${value}\r\n`
}
const MODEL = field('form-data; name="model"', 'voxtral-mini-latest')
const END = `--${B}--\r\n`

t.test('an RFC 2231 continuation of a name is read as unknown audio, not as the name before it', async (t) => {
  // Python joins name*0 and name*1 into `file_url`: Mistral fetches the URL and bills its length
  const url = Buffer.from(MODEL + field('form-data; name="file"; name*0="file_"; name*1="url"',
    'https://example.com/ten-hours.mp3') + END)
  const continued = await read(url)
  t.equal(continued.bytes, undefined, 'a file part continued into file_url')
  t.ok(continued.sentOn, 'sent on unchanged')
  const id = Buffer.from(field('form-data; name="model"; name*0="file_"; name*1="id"',
    '00000000-0000-0000-0000-000000000000') + END)
  t.equal((await read(id)).bytes, undefined, 'a model part continued into file_id')
  const star = Buffer.from(MODEL + field('form-data; name*="file_url"', 'https://example.com/a.mp3') + END)
  t.equal((await read(star)).bytes, undefined, 'an extended name')
  const plain = Buffer.from(MODEL + field('form-data; name="file"; filename="a.mp3"', 'audio') + END)
  t.equal((await read(plain)).bytes, plain.length, 'a plain upload is read by its size')
})

t.test('a name in angle brackets is read as unknown audio', async (t) => {
  // Python's email.utils.unquote strips <...>: `<file_url>` is file_url
  for (const disposition of ['form-data; name=<file_url>', 'form-data; name="<file_url>"', 'form-data; name="<file>"']) {
    const form = Buffer.from(MODEL + field(disposition, 'https://example.com/a.mp3') + END)
    t.equal((await read(form)).bytes, undefined, disposition)
  }
})

t.test('a boundary continued in the content type is read as unknown audio', async (t) => {
  // the gateway would split on GGG, Python on PPP, where a file_url waits after a large upload
  const form = Buffer.concat([Buffer.from(`--PPP\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n` +
    '--PPP\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n--GGG\r\n' +
    'Content-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n'), Buffer.alloc(100_000, 1),
  Buffer.from('\r\n--GGG--\r\n\r\n--PPP\r\nContent-Disposition: form-data; name="file_url"\r\n\r\n' +
    'https://example.com/ten-hours.mp3\r\n--PPP--\r\n')])
  for (const contentType of ['multipart/form-data; boundary=GGG; boundary*0=PPP',
    'multipart/form-data; boundary*0=PPP; boundary=GGG', 'multipart/form-data; boundary=<GGG>']) {
    t.equal((await read(form, { contentType })).bytes, undefined, contentType)
  }
  t.equal((await read(form, { contentType: 'multipart/form-data; boundary=GGG' })).bytes, form.length,
    'the same form with a plain boundary is read as an upload by its size')
})

t.test('a form sent a byte at a time costs the gateway little CPU, and is read as it was', async (t) => {
  // 70,000 bytes in 1-byte reads: each read used to re-join and re-parse all before it (quadratic)
  const long = Buffer.from(`--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\n${'a'.repeat(70_000)}\r\n` +
    END)
  const multipart = await read(long, { chunk: 1 })
  t.equal(multipart.bytes, undefined, 'a head sent in that many reads is read as unknown audio')
  t.ok(multipart.sentOn, 'and sent on unchanged')
  t.ok(multipart.cpuMs < 1_000, `within a second of CPU (${Math.round(multipart.cpuMs)} ms)`)

  const urlencoded = await read(Buffer.from('model=x&file_url=' + 'a'.repeat(60_000)),
    { chunk: 1, contentType: 'application/x-www-form-urlencoded' })
  t.equal(urlencoded.bytes, undefined, 'an urlencoded form too')
  t.ok(urlencoded.sentOn)
  t.ok(urlencoded.cpuMs < 1_000, `within a second of CPU (${Math.round(urlencoded.cpuMs)} ms)`)

  // a small upload form, its head in a few dozen reads: read as the upload it is
  const small = Buffer.concat([Buffer.from(MODEL + `--${B}\r\nContent-Disposition: form-data; name="file"; ` +
    'filename="a.mp3"\r\n\r\n'), Buffer.alloc(30_000, 7), Buffer.from(`\r\n${END}`)])
  const upload = await read(small, { chunk: 1_024 })
  t.equal(upload.bytes, small.length, 'a form in 30 reads is read by its size')
  t.ok(upload.sentOn)
})

t.test('file_url or file_id in an upload\'s filename or audio is no name; elsewhere it still makes the form unread',
  async (t) => {
    const upload = (disposition: string, audio: string, headers = '') => Buffer.from(MODEL +
      `--${B}\r\nContent-Disposition: ${disposition}\r\n${headers}\r\n${audio}\r\n${END}`)
    const profile = upload('form-data; name="file"; filename="profile_id.wav"', 'audio')
    t.equal((await read(profile)).bytes, profile.length, 'a filename that holds file_id')
    const token = upload('form-data; name="file"; filename=my_file_url.wav', 'audio')
    t.equal((await read(token)).bytes, token.length, 'an unquoted one')
    const audio = upload('form-data; name="file"; filename="a.wav"', 'RIFF file_url file_id data')
    t.equal((await read(audio)).bytes, audio.length, 'audio bytes that spell file_url')
    // a large form is read only to its upload's headers: its filename is excused there too
    const large = Buffer.concat([Buffer.from(MODEL +
      `--${B}\r\nContent-Disposition: form-data; name="file"; filename="profile_id.wav"\r\n\r\n`),
    Buffer.alloc(100_000, 1), Buffer.from(`\r\n${END}`)])
    t.equal((await read(large)).bytes, large.length, 'a large upload whose filename holds file_id')

    const escaped = upload('form-data; name="file"; filename="a\\\\"; x="file_url.wav"', 'audio')
    t.equal((await read(escaped)).bytes, undefined, 'a parameter after a filename with a quoted-pair')
    const backslash = upload('form-data; name="file"; filename="a\\\\file_url.wav"', 'audio')
    t.equal((await read(backslash)).bytes, undefined, 'a filename with a quoted-pair is not excused')
    const header = upload('form-data; name="file"; filename="a.wav"', 'audio', 'X-Name: file_url\r\n')
    t.equal((await read(header)).bytes, undefined, 'another header of the upload part')
    const value = Buffer.from(MODEL + field('form-data; name="language"', 'en file_url') +
      field('form-data; name="file"; filename="a.wav"', 'audio') + END)
    t.equal((await read(value)).bytes, undefined, 'a text field\'s value')
    const otherFile = Buffer.from(MODEL + field('form-data; name="prompt"; filename="file_url"', 'x') +
      field('form-data; name="file"; filename="a.wav"', 'audio') + END)
    t.equal((await read(otherFile)).bytes, otherFile.length, 'a filename of another part')
  })
