import type { FastifyInstance } from 'fastify'
import type { FakeContext } from './context.js'
import { rateLimitHeaders } from './headers.js'
import { ownedBy } from './stores.js'

interface OcrBody {
  model?: string | null
  document?: { type?: string, document_url?: string, image_url?: string | { url?: string }, file_id?: string }
  pages?: number[] | string | null
  bbox_annotation_format?: unknown
  document_annotation_format?: unknown
}

/** Pages a document is taken to have when the request does not pick pages: images have one. */
export const OCR_DOCUMENT_PAGES = 3
/** `doc_size_bytes` of a document fetched by URL, which the fake never downloads */
export const OCR_URL_DOCUMENT_BYTES = 48_213

export async function ocrRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  app.post('/v1/ocr', async function ocr (request, reply) {
    const body = ctx.body<OcrBody>(request)
    const document = body.document ?? {}
    const image = document.type === 'image_url'
    const pages = pageIndices(body.pages) ?? [...Array(image ? 1 : OCR_DOCUMENT_PAGES).keys()]
    // usage_info is OCR's only meter: pages, priced higher when an annotation format is asked for (MISTRAL-NOTES §2.2)
    const usageInfo = {
      pages_processed: pages.length, doc_size_bytes: documentBytes(ctx, document, ctx.organisation(request))
    }
    const annotated = body.document_annotation_format != null
    ctx.reportUsage(request, body.model ?? undefined, usageInfo, false)
    return reply.headers(rateLimitHeaders(3, { cost: pages.length })).send({
      pages: pages.map((index) => ({
        index,
        markdown: `# Page ${index + 1}\n\nText the fake read on page ${index + 1}.`,
        images: [],
        tables: [],
        hyperlinks: [],
        header: null,
        footer: null,
        dimensions: { dpi: 200, height: 2200, width: 1700 }
      })),
      model: body.model ?? 'mistral-ocr-latest',
      document_annotation: annotated ? '{"summary":"fake annotation"}' : null,
      usage_info: usageInfo
    })
  })
}

/** `pages` is a list of indices or a string such as "0-2,5" */
function pageIndices (pages: OcrBody['pages']): number[] | undefined {
  if (Array.isArray(pages)) return pages
  if (typeof pages !== 'string' || pages.trim() === '') return undefined
  return pages.split(',').flatMap((range) => {
    const [from, to = from] = range.split('-').map(Number)
    return Array.from({ length: to - from + 1 }, (_, i) => from + i)
  })
}

/** What the document weighs; a file the organisation does not have (another's, say) weighs nothing. */
function documentBytes (ctx: FakeContext, document: NonNullable<OcrBody['document']>, organisation: string): number {
  if (document.file_id) return ownedBy(ctx.stores, ctx.stores.files, document.file_id, organisation)?.bytes ?? 0
  const image = document.image_url
  const url = typeof image === 'object' ? image.url : image ?? document.document_url
  const base64 = /^data:[^,]*;base64,(.*)$/s.exec(url ?? '')?.[1]
  return base64 === undefined ? OCR_URL_DOCUMENT_BYTES : Buffer.byteLength(base64, 'base64')
}
