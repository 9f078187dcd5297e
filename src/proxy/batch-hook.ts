import type { FastifyRequest } from 'fastify'
import type { TenantContext } from '../tenancy/tokens.js'
import type { BatchWatcher } from '../usage/batch-watcher.js'

export type BatchJobCall = 'created' | 'read'

/**
 * The calls whose answer is a batch job the gateway reads: a create, to watch the job until it ends, and a read, to
 * bill it at once if it has ended. A read that names `inline` at all streams through untouched, whatever its value:
 * Mistral reads the parameter leniently (`1`, `True`, the last of several), and an answer carrying every result of
 * the job must not be held in memory on a guess about its spelling. The poll bills that job.
 */
export function batchJobCall (operationId: string, url: string): BatchJobCall | undefined {
  if (operationId === 'jobs_api_routes_batch_create_batch_job') return 'created'
  if (operationId !== 'jobs_api_routes_batch_get_batch_job') return undefined
  return namesInline(url) ? undefined : 'read'
}

function namesInline (url: string): boolean {
  const query = url.indexOf('?')
  return query >= 0 && new URLSearchParams(url.slice(query + 1)).has('inline')
}

/**
 * Hands the job in Mistral's answer to the watcher. A created job is in `watched_jobs` before the client hears of
 * it, so that no crash can leave it unbilled; a read never delays the answer.
 */
export async function observeBatchJob (watcher: BatchWatcher, call: BatchJobCall, request: FastifyRequest,
  keyName: string, requestBody: unknown, answer: Buffer): Promise<void> {
  const tenant = request.tenant as TenantContext
  let job: Record<string, unknown>
  try {
    job = JSON.parse(answer.toString('utf8')) as Record<string, unknown>
  } catch {
    request.log.warn('batch job answer is not JSON')
    return
  }
  if (typeof job?.id !== 'string') return
  if (call === 'read') {
    watcher.seen(tenant.workspace.id, job)
      .catch((err: unknown) => request.log.warn({ err, job: job.id }, 'batch job check failed'))
    return
  }
  const asked = requestBody !== null && typeof requestBody === 'object' ? requestBody as Record<string, unknown> : {}
  const text = (value: unknown) => typeof value === 'string' ? value : null
  try {
    await watcher.watch({
      jobId: job.id,
      workspaceId: tenant.workspace.id,
      tokenId: tenant.token.id,
      keyName,
      requestId: request.id,
      endpoint: text(job.endpoint) ?? text(asked.endpoint),
      model: text(asked.model) ?? text(job.model)
    })
  } catch (err) {
    // the client has its job either way; the operator must learn that this one escaped the ledger
    request.log.error({ err, job: job.id }, 'batch job not watched: it will not be billed')
  }
}
