import { Pool, type Dispatcher } from 'undici'
import type { Config } from '../config.js'
import { filePath } from '../proxy/mistral-files.js'
import { basePath, pathSegment } from '../proxy/upstream.js'
import { failedAnswer } from '../resilience/failed-answer.js'
import type { Block, KeyHealth } from '../resilience/key-health.js'
import { isSpendLimit, retryAfterMs } from '../resilience/retry-after.js'
import { KeyCryptoError } from '../tenancy/key-crypto.js'
import type { MistralKeyStore, UsableKey } from '../tenancy/mistral-keys.js'

/** A workspace's key, as a background read takes it: its health is kept by workspace. */
export interface ReadingKey extends Pick<UsableKey, 'id' | 'secret'> {
  workspaceId: string
}

/**
 * What the batch watcher reads from Mistral, with a workspace's own key. A key cooling down after a 429, or behind an
 * open breaker, is not sent (KeyCoolingError); a 429 a read meets cools the key for every call, on every replica.
 */
export interface BatchUpstream {
  /** `GET /v1/batch/jobs/{id}`, without its results. Undefined when Mistral has no such job. */
  job (key: ReadingKey, jobId: string): Promise<Record<string, unknown> | undefined>
  /**
   * `GET /v1/batch/jobs/{id}?inline=true`: the job with its results in `outputs`, as it downloads, never held whole
   * (they are as large as its output file). Undefined when Mistral has no such job.
   */
  jobWithResults (key: ReadingKey, jobId: string): Promise<AsyncIterable<Buffer> | undefined>
  /**
   * `GET /v1/batch/jobs` with these filters (`status`, `created_after`, `order_by`, `page`, `page_size`): one page of
   * the jobs the key's organisation sees (`data`).
   */
  jobs (key: ReadingKey, query: URLSearchParams, signal?: AbortSignal): Promise<Record<string, unknown>>
  /** `GET /v1/files/{id}`: what Mistral says of the file (`sample_type`, ...). Undefined when it has no such file. */
  file (key: ReadingKey, fileId: string, signal?: AbortSignal): Promise<Record<string, unknown> | undefined>
  /**
   * `GET /v1/files/{id}/content` (MISTRAL-NOTES §2.3): the body as it downloads, never held whole. Undefined when
   * Mistral has no such file: a client may delete its job's output file.
   */
  fileContent (key: ReadingKey, fileId: string): Promise<AsyncIterable<Buffer> | undefined>
  close (): Promise<void>
}

/** Mistral answered something else than the job or the file: the job stays pending and is tried again later. */
export class BatchUpstreamError extends Error {
  constructor (readonly statusCode: number, path: string, cooldownMs?: number) {
    super(`Mistral answered ${statusCode} to GET ${path}` +
      (cooldownMs === undefined ? '' : `; the key cools down for ${cooldownMs} ms`))
    this.name = 'BatchUpstreamError'
  }
}

/**
 * The key is cooling down after a 429, or its breaker is open (or half-open, its probe taken by another call): the
 * read was not sent, as no client's call is. Like a 429, it leaves the job to the next interval, the question to the
 * next key.
 */
export class KeyCoolingError extends Error {
  constructor (block: Block) {
    super(`Mistral key not read with: ${block.reason} for ${Math.max(block.until - Date.now(), 0)} ms more`)
    this.name = 'KeyCoolingError'
  }
}

/**
 * The workspace's keys that may read from Mistral, decrypted as they are reached: `first`, then its others in failover
 * order, each once. A key removed, or one Mistral refused (401) and the gateway marked invalid until the operator
 * replaces it, reads nothing: asked, Mistral would only refuse it again. A key this replica cannot open
 * (KeyCryptoError) is told to `unopened`, and the walk goes on; any other failure of a key's lookup (PostgreSQL's, a
 * bug) is no key to pass over: it ends the walk, thrown.
 */
export async function * validKeys (keys: MistralKeyStore, workspaceId: string, first: string[],
  unopened: (err: KeyCryptoError, name: string) => void): AsyncGenerator<UsableKey & ReadingKey> {
  for (const name of new Set([...first, ...await keys.names(workspaceId)])) {
    let key: UsableKey | undefined
    try {
      key = await keys.resolve(workspaceId, name)
    } catch (err) {
      if (!(err instanceof KeyCryptoError)) throw err
      unopened(err, name)
      continue
    }
    if (key && key.status !== 'invalid') yield { ...key, workspaceId }
  }
}

/**
 * Mistral refused the key this read (401, 403): a key of another organisation, or one Mistral revoked since the job
 * was created. It does not see the job or the file, which may still be there for another key.
 */
export function refused (err: unknown): boolean {
  return err instanceof BatchUpstreamError && (err.statusCode === 401 || err.statusCode === 403)
}

/**
 * A pool of its own, apart from the proxy's: a slow download of an output file never holds a client's call. The keys'
 * health is the proxy's: background reads keep away from a key Mistral is rate-limiting, as clients' calls do.
 */
export function createBatchUpstream (config: Pick<Config, 'MISTRAL_BASE_URL' | 'UPSTREAM_CONNECT_TIMEOUT_MS' |
'UPSTREAM_HEADERS_TIMEOUT_MS' | 'UPSTREAM_IDLE_TIMEOUT_MS'>, health: KeyHealth): BatchUpstream {
  const pool = new Pool(new URL(config.MISTRAL_BASE_URL).origin, {
    connections: 4,
    connect: { timeout: config.UPSTREAM_CONNECT_TIMEOUT_MS },
    headersTimeout: config.UPSTREAM_HEADERS_TIMEOUT_MS,
    bodyTimeout: config.UPSTREAM_IDLE_TIMEOUT_MS
  })
  const prefix = basePath(config.MISTRAL_BASE_URL)

  /**
   * Throws KeyCoolingError, sending nothing, while the key cools down or its breaker is open; once the breaker's open
   * time is over, the read is the key's probe if it can claim it (else another call's probe decides), which no client
   * call may be waiting to make for a workspace that only runs batches. Whether the read is that probe.
   */
  async function mayRead (key: ReadingKey): Promise<boolean> {
    const block = health.blocked(key.id)
    if (!block) return false
    const halfOpen = block.reason === 'breaker_open' && block.until <= Date.now()
    if (!halfOpen || !await health.claimProbe(key.workspaceId, key.id)) throw new KeyCoolingError(block)
    return true
  }

  /**
   * The body of a 200, unread; undefined for a 404; anything else throws, as does `signal` ending the read. A 429
   * cools the key as the proxy's does (attempts.ts): from Mistral's headers, else the shared backoff. A probe Mistral
   * fails (502, 503, 504) or does not answer opens the breaker again at once, as a client's does; any other background
   * read's failure is not counted towards a breaker.
   */
  async function get (key: ReadingKey, path: string, signal?: AbortSignal):
  Promise<Dispatcher.ResponseData['body'] | undefined> {
    const probe = await mayRead(key)
    const probeFailed = async () => {
      if (probe) await health.failed(key.workspaceId, key.id).catch(() => {})
    }
    let res: Dispatcher.ResponseData
    try {
      res = await pool.request({
        path: prefix + path,
        method: 'GET',
        signal,
        headers: { authorization: `Bearer ${key.secret}`, accept: 'application/json, application/octet-stream' }
      })
    } catch (err) {
      // the read's own end (a file deletion's check given up) says nothing of the key
      if (!signal?.aborted) await probeFailed()
      throw err
    }
    if (res.statusCode === 429) {
      const text = await res.body.text().catch(() => '')
      const block = await health.rateLimited(key.workspaceId, key.id, retryAfterMs(res.headers, Date.now()),
        isSpendLimit(text))
      throw new BatchUpstreamError(429, path, Math.max(block.until - Date.now(), 0))
    }
    if (res.statusCode !== 200 && res.statusCode !== 404) {
      // a probe's answer is judged as a client call's (attempts.ts): a 502, 503 or 504 fails it, anything else (a 401,
      // a 500) is Mistral answering, which closes the breaker
      if (failedAnswer(res.statusCode)) await probeFailed()
      else if (probe) health.succeeded(key.workspaceId, key.id)
      await res.body.dump()
      throw new BatchUpstreamError(res.statusCode, path)
    }
    // a probe that got its answer closes the breaker; an answer after 429s resets the backoff
    health.succeeded(key.workspaceId, key.id)
    if (res.statusCode === 200) return res.body
    await res.body.dump()
    return undefined
  }

  return {
    async job (key, jobId) {
      const body = await get(key, `/v1/batch/jobs/${pathSegment(jobId)}`)
      return body && await body.json() as Record<string, unknown>
    },
    async jobs (key, query, signal) {
      const path = `/v1/batch/jobs?${query.toString()}`
      const body = await get(key, path, signal)
      if (!body) throw new BatchUpstreamError(404, path)
      return await body.json() as Record<string, unknown>
    },
    async file (key, fileId, signal) {
      const body = await get(key, filePath(fileId), signal)
      return body && await body.json() as Record<string, unknown>
    },
    jobWithResults: (key, jobId) => get(key, `/v1/batch/jobs/${pathSegment(jobId)}?inline=true`),
    fileContent: (key, fileId) => get(key, `${filePath(fileId)}/content`),
    async close () {
      await pool.close()
    }
  }
}
