import { randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import type { FakeContext } from './context.js'
import { sendNotFound } from './errors.js'
import { unixSeconds } from './ids.js'
import { DEFAULT_ORGANISATION, heldBy, ownedBy, type FileRecord, type Stores } from './stores.js'

/** Byte `i` of any file the fake did not make itself: downloads are checkable without keeping what was uploaded. */
export function filePatternByte (i: number): number {
  return i % 251
}

// 251 is prime, so a block of a whole number of periods keeps the pattern continuous from one block to the next
const PATTERN_BLOCK = Buffer.from(Array.from({ length: 251 * 261 }, (_, i) => filePatternByte(i)))

function * patternBytes (size: number): Generator<Buffer> {
  for (let offset = 0; offset < size; offset += PATTERN_BLOCK.length) {
    yield PATTERN_BLOCK.subarray(0, Math.min(PATTERN_BLOCK.length, size - offset))
  }
}

export interface NewFile {
  bytes?: number
  /** the file's bytes, when a test needs real content (a batch output, say); otherwise the pattern is served */
  content?: Buffer | string
  filename?: string
  purpose?: string
  /** what Mistral marks the file as; by default that of an upload of its purpose */
  sampleType?: string
  /** `mistral` for a file Mistral wrote itself (a batch job's output); by default `upload` */
  source?: string
  numLines?: number | null
  mimetype?: string | null
  expiresAt?: number | null
  visibility?: string
  /** the organisation that has the file (default: the one keys share unless a test names theirs) */
  organisation?: string
}

/** Registers a file as `POST /v1/files` would, without any upload. */
export function addFile (stores: Stores, file: NewFile): FileRecord {
  const content = typeof file.content === 'string' ? Buffer.from(file.content) : file.content
  const purpose = file.purpose ?? 'batch'
  const record: FileRecord = {
    id: randomUUID(),
    object: 'file',
    bytes: content?.length ?? file.bytes ?? 0,
    created_at: unixSeconds(),
    filename: file.filename ?? 'file.jsonl',
    purpose,
    sample_type: file.sampleType ?? SAMPLE_TYPES[purpose] ?? 'instruct',
    source: file.source ?? 'upload',
    num_lines: file.numLines ?? null,
    mimetype: file.mimetype ?? null,
    signature: null,
    expires_at: file.expiresAt ?? null,
    visibility: file.visibility ?? 'workspace'
  }
  stores.files.set(record.id, record)
  if (file.organisation !== undefined && file.organisation !== DEFAULT_ORGANISATION) {
    stores.owners.set(record.id, file.organisation)
  }
  if (content) stores.fileContents.set(record.id, content)
  return record
}

const SAMPLE_TYPES: Record<string, string> = { batch: 'batch_request', 'fine-tune': 'instruct', ocr: 'ocr_input' }

export async function fileRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  const { files, fileContents } = ctx.stores

  app.post('/v1/files', async function uploadFile (request) {
    const { fields, files: parts } = ctx.form(request)
    const part = parts.find((candidate) => candidate.field === 'file')
    const purpose = fields.purpose ?? 'fine-tune'
    const expiry = fields.expiry === undefined ? undefined : Number(fields.expiry)
    return addFile(ctx.stores, {
      bytes: part?.bytes ?? 0,
      filename: part?.filename,
      purpose,
      // Mistral counts the lines of JSONL training and batch files
      numLines: purpose === 'ocr' ? null : part?.lines ?? null,
      mimetype: part?.contentType ?? null,
      expiresAt: expiry === undefined ? null : unixSeconds() + expiry * 3600,
      visibility: fields.visibility,
      organisation: ctx.organisation(request)
    })
  })

  app.get<{ Querystring: { purpose?: string, page?: string, page_size?: string } }>('/v1/files',
    async function listFiles (request) {
      const organisation = ctx.organisation(request)
      const all = [...files.values()].filter((file) => heldBy(ctx.stores, file.id, organisation) &&
        (!request.query.purpose || file.purpose === request.query.purpose))
      const page = Number(request.query.page ?? 0)
      const size = Number(request.query.page_size ?? 100)
      return { data: all.slice(page * size, (page + 1) * size), object: 'list', total: all.length }
    })

  app.get<{ Params: { file_id: string } }>('/v1/files/:file_id', async function retrieveFile (request, reply) {
    const file = ownedBy(ctx.stores, files, request.params.file_id, ctx.organisation(request))
    return file ? { ...file, deleted: false } : sendNotFound(reply, 'File not found')
  })

  app.delete<{ Params: { file_id: string } }>('/v1/files/:file_id', async function deleteFile (request, reply) {
    const file = ownedBy(ctx.stores, files, request.params.file_id, ctx.organisation(request))
    if (!file) return sendNotFound(reply, 'File not found')
    files.delete(file.id)
    fileContents.delete(file.id)
    ctx.stores.owners.delete(file.id)
    return { id: file.id, object: 'file', deleted: true }
  })

  app.get<{ Params: { file_id: string } }>('/v1/files/:file_id/content', async function downloadFile (request, reply) {
    const file = ownedBy(ctx.stores, files, request.params.file_id, ctx.organisation(request))
    if (!file) return sendNotFound(reply, 'File not found')
    const content = fileContents.get(file.id)
    return reply.type('application/octet-stream').header('content-length', file.bytes)
      .send(content ?? Readable.from(patternBytes(file.bytes)))
  })
}
