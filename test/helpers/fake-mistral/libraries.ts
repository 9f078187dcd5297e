import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { FakeContext } from './context.js'
import { sendNotFound } from './errors.js'
import { isoNow } from './ids.js'
import type { Library, LibraryDocument } from './stores.js'

/** The user every library and document belongs to: one key is one Mistral organisation (MISTRAL-NOTES §2.7). */
const FAKE_USER_ID = '3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b'

interface LibraryParams { library_id: string }
interface DocumentParams extends LibraryParams { document_id: string }

export async function libraryRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  const { libraries, documents } = ctx.stores

  app.post('/v1/libraries', async function createLibrary (request, reply) {
    const body = ctx.body<{ name?: string, description?: string, chunk_size?: number }>(request)
    const now = isoNow()
    const library: Library = {
      id: randomUUID(),
      name: body.name ?? '',
      created_at: now,
      updated_at: now,
      owner_id: FAKE_USER_ID,
      owner_type: 'User',
      total_size: 0,
      nb_documents: 0,
      chunk_size: body.chunk_size ?? null,
      emoji: null,
      description: body.description ?? null,
      generated_description: null,
      explicit_user_members_count: null,
      explicit_workspace_members_count: null,
      org_sharing_role: null,
      generated_name: null
    }
    libraries.set(library.id, library)
    return reply.code(201).send(library)
  })

  app.get('/v1/libraries', async function listLibraries () {
    return { data: [...libraries.values()] }
  })

  app.get<{ Params: LibraryParams }>('/v1/libraries/:library_id', async function getLibrary (request, reply) {
    return libraries.get(request.params.library_id) ?? sendNotFound(reply, 'Library not found')
  })

  app.delete<{ Params: LibraryParams }>('/v1/libraries/:library_id', async function deleteLibrary (request, reply) {
    const library = libraries.get(request.params.library_id)
    if (!library) return sendNotFound(reply, 'Library not found')
    libraries.delete(library.id)
    for (const document of documents.values()) if (document.library_id === library.id) documents.delete(document.id)
    return library
  })

  app.post<{ Params: LibraryParams }>('/v1/libraries/:library_id/documents',
    async function uploadDocument (request, reply) {
      const library = libraries.get(request.params.library_id)
      if (!library) return sendNotFound(reply, 'Library not found')
      const file = ctx.form(request).files.find((part) => part.field === 'file')
      const name = file?.filename ?? 'document'
      const document: LibraryDocument = {
        id: randomUUID(),
        library_id: library.id,
        hash: file?.sha256 ?? null,
        mime_type: file?.contentType ?? null,
        extension: name.includes('.') ? name.split('.').pop() : null,
        size: file?.bytes ?? 0,
        name,
        summary: null,
        created_at: isoNow(),
        last_processed_at: null,
        number_of_pages: null,
        process_status: 'todo',
        uploaded_by_id: FAKE_USER_ID,
        uploaded_by_type: 'User',
        tokens_processing_main_content: null,
        tokens_processing_summary: null,
        url: null,
        attributes: null,
        expires_at: null,
        processing_status: 'Running',
        tokens_processing_total: 0
      }
      documents.set(document.id, document)
      library.nb_documents++
      library.total_size += document.size
      return document
    })

  app.get<{ Params: LibraryParams, Querystring: { page?: string, page_size?: string } }>(
    '/v1/libraries/:library_id/documents', async function listDocuments (request, reply) {
      if (!libraries.has(request.params.library_id)) return sendNotFound(reply, 'Library not found')
      const all = [...documents.values()].filter((document) => document.library_id === request.params.library_id)
      const page = Number(request.query.page ?? 0)
      const size = Number(request.query.page_size ?? 100)
      const pagination = { total_items: all.length, total_pages: Math.ceil(all.length / size), current_page: page,
        page_size: size, has_more: (page + 1) * size < all.length }
      return { pagination, data: all.slice(page * size, (page + 1) * size) }
    })

  app.get<{ Params: DocumentParams }>('/v1/libraries/:library_id/documents/:document_id',
    async function getDocument (request, reply) {
      const document = documents.get(request.params.document_id)
      const found = document?.library_id === request.params.library_id
      return found ? document : sendNotFound(reply, 'Document not found')
    })

  app.delete<{ Params: DocumentParams }>('/v1/libraries/:library_id/documents/:document_id',
    async function deleteDocument (request, reply) {
      const document = documents.get(request.params.document_id)
      const library = libraries.get(request.params.library_id)
      if (!document || !library || document.library_id !== library.id) {
        return sendNotFound(reply, 'Document not found')
      }
      documents.delete(document.id)
      library.nb_documents--
      library.total_size -= document.size
      return reply.code(204).send()
    })
}
