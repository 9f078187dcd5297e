import { Pool, type Dispatcher } from 'undici'
import type { Config } from '../config.js'
import { basePath } from '../proxy/upstream.js'

/** What the batch watcher reads from Mistral, with a workspace's own key. */
export interface BatchUpstream {
  /** `GET /v1/batch/jobs/{id}`; `inline` asks for the results in the job. Undefined when Mistral has no such job. */
  job (secret: string, jobId: string, inline: boolean): Promise<Record<string, unknown> | undefined>
  /**
   * `GET /v1/files/{id}/content` (MISTRAL-NOTES §2.3): the body as it downloads, never held whole. Undefined when
   * Mistral has no such file: a client may delete its job's output file.
   */
  fileContent (secret: string, fileId: string): Promise<AsyncIterable<Buffer> | undefined>
  close (): Promise<void>
}

/** Mistral answered something else than the job or the file: the job stays pending and is tried again later. */
export class BatchUpstreamError extends Error {
  constructor (readonly statusCode: number, path: string) {
    super(`Mistral answered ${statusCode} to GET ${path}`)
    this.name = 'BatchUpstreamError'
  }
}

/** A pool of its own, apart from the proxy's: a slow download of an output file never holds a client's call. */
export function createBatchUpstream (config: Pick<Config, 'MISTRAL_BASE_URL' | 'UPSTREAM_CONNECT_TIMEOUT_MS' |
'UPSTREAM_HEADERS_TIMEOUT_MS' | 'UPSTREAM_IDLE_TIMEOUT_MS'>): BatchUpstream {
  const pool = new Pool(new URL(config.MISTRAL_BASE_URL).origin, {
    connections: 4,
    connect: { timeout: config.UPSTREAM_CONNECT_TIMEOUT_MS },
    headersTimeout: config.UPSTREAM_HEADERS_TIMEOUT_MS,
    bodyTimeout: config.UPSTREAM_IDLE_TIMEOUT_MS
  })
  const prefix = basePath(config.MISTRAL_BASE_URL)

  async function get (secret: string, path: string): Promise<Dispatcher.ResponseData> {
    return pool.request({
      path: prefix + path,
      method: 'GET',
      headers: { authorization: `Bearer ${secret}`, accept: 'application/json, application/octet-stream' }
    })
  }

  return {
    async job (secret, jobId, inline) {
      const path = `/v1/batch/jobs/${encodeURIComponent(jobId)}${inline ? '?inline=true' : ''}`
      const res = await get(secret, path)
      if (res.statusCode === 404) {
        await res.body.dump()
        return undefined
      }
      if (res.statusCode !== 200) {
        await res.body.dump()
        throw new BatchUpstreamError(res.statusCode, path)
      }
      return await res.body.json() as Record<string, unknown>
    },
    async fileContent (secret, fileId) {
      const path = `/v1/files/${encodeURIComponent(fileId)}/content`
      const res = await get(secret, path)
      if (res.statusCode === 404) {
        await res.body.dump()
        return undefined
      }
      if (res.statusCode !== 200) {
        await res.body.dump()
        throw new BatchUpstreamError(res.statusCode, path)
      }
      return res.body
    },
    async close () {
      await pool.close()
    }
  }
}
