import { Pool, type Dispatcher } from 'undici'
import type { Config } from '../config.js'
import { filePath } from '../proxy/mistral-files.js'
import { basePath, pathSegment } from '../proxy/upstream.js'
import type { MistralKeyStore, UsableKey } from '../tenancy/mistral-keys.js'

/** What the batch watcher reads from Mistral, with a workspace's own key. */
export interface BatchUpstream {
  /** `GET /v1/batch/jobs/{id}`, without its results. Undefined when Mistral has no such job. */
  job (secret: string, jobId: string): Promise<Record<string, unknown> | undefined>
  /**
   * `GET /v1/batch/jobs/{id}?inline=true`: the job with its results in `outputs`, as it downloads, never held whole
   * (they are as large as its output file). Undefined when Mistral has no such job.
   */
  jobWithResults (secret: string, jobId: string): Promise<AsyncIterable<Buffer> | undefined>
  /**
   * `GET /v1/batch/jobs` with these filters (`status`, `created_after`, `order_by`, `page`, `page_size`): one page of
   * the jobs the key's organisation sees (`data`).
   */
  jobs (secret: string, query: URLSearchParams, signal?: AbortSignal): Promise<Record<string, unknown>>
  /** `GET /v1/files/{id}`: what Mistral says of the file (`sample_type`, ...). Undefined when it has no such file. */
  file (secret: string, fileId: string, signal?: AbortSignal): Promise<Record<string, unknown> | undefined>
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

/**
 * The workspace's keys that may read from Mistral, decrypted as they are reached: `first`, then its others in failover
 * order, each once. A key removed, or one Mistral refused (401) and the gateway marked invalid until the operator
 * replaces it, reads nothing: asked, Mistral would only refuse it again. A key that cannot be resolved (one this
 * replica cannot open) ends the walk, unless `unresolved` is given: it is then told, and the walk goes on.
 */
export async function * validKeys (keys: MistralKeyStore, workspaceId: string, first: string[],
  unresolved?: (err: unknown, name: string) => void): AsyncGenerator<UsableKey> {
  for (const name of new Set([...first, ...await keys.names(workspaceId)])) {
    let key: UsableKey | undefined
    try {
      key = await keys.resolve(workspaceId, name)
    } catch (err) {
      if (!unresolved) throw err
      unresolved(err, name)
      continue
    }
    if (key && key.status !== 'invalid') yield key
  }
}

/**
 * Mistral refused the key this read (401, 403): a key of another organisation, or one Mistral revoked since the job
 * was created. It does not see the job or the file, which may still be there for another key.
 */
export function refused (err: unknown): boolean {
  return err instanceof BatchUpstreamError && (err.statusCode === 401 || err.statusCode === 403)
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

  /** The body of a 200, unread; undefined for a 404; anything else throws, as does `signal` ending the read. */
  async function get (secret: string, path: string, signal?: AbortSignal):
  Promise<Dispatcher.ResponseData['body'] | undefined> {
    const res = await pool.request({
      path: prefix + path,
      method: 'GET',
      signal,
      headers: { authorization: `Bearer ${secret}`, accept: 'application/json, application/octet-stream' }
    })
    if (res.statusCode === 404) {
      await res.body.dump()
      return undefined
    }
    if (res.statusCode !== 200) {
      await res.body.dump()
      throw new BatchUpstreamError(res.statusCode, path)
    }
    return res.body
  }

  return {
    async job (secret, jobId) {
      const body = await get(secret, `/v1/batch/jobs/${pathSegment(jobId)}`)
      return body && await body.json() as Record<string, unknown>
    },
    async jobs (secret, query, signal) {
      const path = `/v1/batch/jobs?${query.toString()}`
      const body = await get(secret, path, signal)
      if (!body) throw new BatchUpstreamError(404, path)
      return await body.json() as Record<string, unknown>
    },
    async file (secret, fileId, signal) {
      const body = await get(secret, filePath(fileId), signal)
      return body && await body.json() as Record<string, unknown>
    },
    jobWithResults: (secret, jobId) => get(secret, `/v1/batch/jobs/${pathSegment(jobId)}?inline=true`),
    fileContent: (secret, fileId) => get(secret, `${filePath(fileId)}/content`),
    async close () {
      await pool.close()
    }
  }
}
