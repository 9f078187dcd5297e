import type { ServerResponse } from 'node:http'
import type { FastifyRequest } from 'fastify'
import { databaseUnanswered } from '../db/sql-state.js'
import { clientClosed, conflict, DATABASE_RETRY_MS, notReady, retryAfterHeaders } from '../errors.js'
import type { TenantContext } from '../tenancy/tokens.js'
import type { OutputOwner } from '../usage/batch-output-owner.js'
import type { BatchWatcher, Settled } from '../usage/batch-watcher.js'

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
 * Before `DELETE /v1/batch/jobs/{id}` is forwarded: Mistral forgets a deleted job, and with it what the job answered,
 * so a job the workspace's calls created is checked first, and billed if it has ended. A job still running is not
 * let go (409): it would answer requests no one could bill; the client cancels it, then deletes it once it has ended.
 * Nor is one that could not be billed yet (its output not found yet, Mistral not answering, a check elsewhere): 409;
 * nor any while PostgreSQL, which holds the watch, does not answer: 503. Nor one whose key is marked invalid with no
 * valid key of the workspace seeing it: 409 until the operator replaces the key, which would otherwise carry the
 * deletion to Mistral before it has billed the job. A job whose Mistral key was removed goes (until the operator adds
 * it back, no key can read it; a removed key already leaves it unbilled).
 */
export async function billBeforeDeletion (watcher: BatchWatcher, url: string, workspaceId: string): Promise<void> {
  const jobId = idInPath(url)
  let settled: Settled
  try {
    settled = await watcher.settle(workspaceId, jobId)
  } catch (err) {
    // anything but PostgreSQL away is the gateway's own fault: its logged 500 (routes.ts)
    if (!databaseUnanswered(err)) throw err
    // the watcher logged the cause; the message quotes no id, as whose job it is could not be read
    throw databaseDown('The batch job cannot be billed', err)
  }
  // the id is that of a job the workspace created: the message quotes none of a client's making
  holdBack(settled, `Batch job ${jobId}`, 'cancel it, and delete it once it has ended', 'it is deleted')
}

/** The operation that deletes a batch job at Mistral: the route awaits billBeforeDeletion for it only. */
export const BATCH_JOB_DELETION = 'jobs_api_routes_batch_delete_batch_job'

/**
 * Before `DELETE /v1/files/{id}` is forwarded: a job's output file is what the gateway bills the job from (its results
 * inline are not documented to outlive it), so the output of a job of the workspace not billed yet is let go as the
 * job itself is: the job billed first, else 409 (running, or not billable yet), and 503 while PostgreSQL does not
 * answer. Whose output the file is, a check may not have learnt yet when the client did (batch-output-owner.ts): the
 * file is then read from Mistral, and the jobs that may have written it, and 409 while Mistral cannot say (within the
 * check's budget); the client leaving ends that check. Any other file goes as it comes. A job whose key was removed
 * lets its output go but stays watched: it stays at Mistral, where its key, added back, may still read it. One whose key
 * is marked invalid, which no valid key sees, does not (409): a key replaced meanwhile would carry the deletion.
 */
export async function billBeforeFileDeletion (watcher: BatchWatcher, url: string, workspaceId: string,
  response: ServerResponse): Promise<void> {
  const fileId = idInPath(url)
  const client = whileClientWaits(response)
  let owner: OutputOwner
  let settled: Settled | undefined
  try {
    owner = await watcher.outputOwner(workspaceId, fileId, client.signal)
    if (owner.jobId !== undefined) settled = await watcher.settle(workspaceId, owner.jobId, 'output')
  } catch (err) {
    if (client.signal.aborted) throw clientClosed('The client left before the file was checked', { cause: err })
    if (!databaseUnanswered(err)) throw err
    throw databaseDown('The file cannot be checked', err)
  } finally {
    client.done()
  }
  if (owner.unchecked) {
    // the file's id is the client's: the message quotes none
    throw conflict('The file may be the output of a batch job of the workspace not billed yet, which could not be ' +
      'checked; retry shortly', { headers: retryAfterHeaders(DELETION_RETRY_MS) })
  }
  // both ids are Mistral's, as a check of the workspace's job read them: the message quotes none of a client's making
  holdBack(settled, `File ${fileId} is the output of batch job ${owner.jobId}, which`,
    'delete it once the job has ended', 'its output is deleted')
}

/**
 * Refuses a deletion (409) while its job's watch is pending: the job still running, or not billed yet, or only an
 * invalid key of the workspace sees it (until the key is replaced). A job whose key was removed goes: the gateway
 * cannot bill it whatever the client waits for. `subject` names the job, `whenEnded` what the client does once it has
 * ended, `deleted` what the deletion removes.
 */
function holdBack (settled: Settled | undefined, subject: string, whenEnded: string, deleted: string): void {
  if (settled?.keyInvalid) {
    throw conflict(`${subject} cannot be read: its Mistral key is marked invalid and no valid key of the workspace ` +
      `sees it; the key must be replaced so that the job can be billed before ${deleted}`)
  }
  if (!settled?.pending || settled.keyGone) return
  if (settled.running) throw conflict(`${subject} is still running (${settled.running}): ${whenEnded}`)
  throw conflict(`${subject} could not be billed yet; retry shortly`, { headers: retryAfterHeaders(DELETION_RETRY_MS) })
}

/** PostgreSQL, which holds the watches, does not answer: databaseUnavailable's 503, saying what could not be done. */
function databaseDown (what: string, cause: unknown) {
  return notReady(`${what} before its deletion right now (the database does not answer); retry shortly`,
    { headers: retryAfterHeaders(DATABASE_RETRY_MS), cause })
}

/** A signal that ends when the client closes its connection before its answer is written. */
function whileClientWaits (response: ServerResponse): { signal: AbortSignal, done: () => void } {
  const left = new AbortController()
  const onClose = () => { if (!response.writableFinished) left.abort(new Error('the client left')) }
  if (response.destroyed) left.abort(new Error('the client left'))
  else response.once('close', onClose)
  return { signal: left.signal, done: () => response.off('close', onClose) }
}

/** The operation that deletes a file at Mistral: the route awaits billBeforeFileDeletion for it only. */
export const FILE_DELETION = 'files_api_routes_delete_file'

// about a poll's worth: the output not found yet is read again by then
const DELETION_RETRY_MS = 60_000

/**
 * The id as Mistral reads it: the last segment of the path, percent-decoded (the route has refused a path that does
 * not decode, and matched the operation on the decoded one).
 */
function idInPath (url: string): string {
  const query = url.indexOf('?')
  const path = query === -1 ? url : url.slice(0, query)
  return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1))
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
    watcher.seen(tenant.workspace.id, job, keyName)
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
