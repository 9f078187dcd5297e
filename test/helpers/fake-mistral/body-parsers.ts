import { createHash } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { invalidJson } from './errors.js'
import { boundaryOf, summarizeMultipart } from './multipart.js'
import type { Recorder } from './recorder.js'

/** JSON bodies carry base64 images and documents (OCR, chat): well above Fastify's 1 MiB default. */
const BUFFERED_BODY_LIMIT = 64 * 1024 * 1024

/**
 * Records every body as it is parsed. Uploads (multipart, binary) are streamed, counted and hashed, never kept;
 * everything else is buffered, and parsed when it is JSON or an urlencoded form.
 */
export function installBodyParsers (app: FastifyInstance, recorder: Recorder): void {
  app.removeAllContentTypeParsers()

  app.addContentTypeParser('multipart/form-data',
    async function multipart (request: FastifyRequest, payload: IncomingMessage) {
      const record = recorder.of(request.raw)
      const boundary = boundaryOf(request.headers['content-type'] ?? '') ?? ''
      record.form = await summarizeMultipart(counted(payload, (bytes) => { record.bodyBytes += bytes }), boundary)
      return record.form
    })

  // Mistral (FastAPI) reads a form's fields urlencoded too: the Python SDK sends a transcription without a file part
  // so (mistralai/client-python#338)
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'buffer', bodyLimit: BUFFERED_BODY_LIMIT },
    function urlencoded (request, body: Buffer, done) {
      const record = recorder.of(request.raw)
      record.body = body
      record.bodyBytes = body.length
      const fields: Record<string, string> = {}
      for (const [name, value] of new URLSearchParams(body.toString('utf8'))) {
        fields[name] = name in fields ? `${fields[name]}, ${value}` : value
      }
      record.form = { fields, files: [] }
      done(null, record.form)
    })

  app.addContentTypeParser(/^(application\/octet-stream|audio\/|video\/|image\/)/,
    async function binary (request: FastifyRequest, payload: IncomingMessage) {
      const record = recorder.of(request.raw)
      const hash = createHash('sha256')
      for await (const chunk of payload) {
        hash.update(chunk)
        record.bodyBytes += chunk.length
      }
      record.sha256 = hash.digest('hex')
      return undefined
    })

  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: BUFFERED_BODY_LIMIT },
    function buffered (request, body: Buffer, done) {
      const record = recorder.of(request.raw)
      record.body = body
      record.bodyBytes = body.length
      if (body.length === 0 || !/json/i.test(request.headers['content-type'] ?? '')) return done(null, body)
      try {
        record.json = JSON.parse(body.toString('utf8'))
        done(null, record.json)
      } catch {
        done(invalidJson(), undefined)
      }
    })
}

async function * counted (source: AsyncIterable<Buffer>, onBytes: (bytes: number) => void): AsyncIterable<Buffer> {
  for await (const chunk of source) {
    onBytes(chunk.length)
    yield chunk
  }
}
