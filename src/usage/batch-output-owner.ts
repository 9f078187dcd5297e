import { and, asc, eq, isNull, or } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from '../db/client.js'
import { watchedJobs } from '../db/schema.js'
import type { MistralKeyStore } from '../tenancy/mistral-keys.js'
import type { BatchUpstream } from './batch-upstream.js'

/** Whose output a file is, among the workspace's watched jobs, as far as the gateway can tell before its deletion. */
export interface OutputOwner {
  /** the pending job whose output the file is */
  jobId?: string
  /** the file may be the output of a pending job whose output Mistral could not be asked about: Mistral failed */
  unchecked?: boolean
}

interface OwnerOptions {
  db: Database
  keys: MistralKeyStore
  upstream: BatchUpstream
  log: FastifyBaseLogger
}

/**
 * Finds the pending job whose output file a client is about to delete. A check keeps the output file Mistral names
 * (`output_file`), but a client may learn it first: from a read whose check has not written it yet, the jobs list, a
 * read with `inline`, the files list. So a file no watch names, while the workspace has pending jobs whose output is
 * not known yet, is read from Mistral; a file Mistral marks as something else than a job's output (`sample_type`, an
 * upload's `batch_request` say) goes as it comes, and one it marks `batch_result` (or not at all) has those jobs read,
 * one after the other (a burst would spend the key's rate limit at Mistral), until one names it. A file deletion
 * costs one indexed lookup when no job of the workspace is pending with its output unknown, else a read of the file
 * per Mistral key of those jobs, and of those jobs when it is a job's output; other calls pay nothing.
 */
export function createOutputOwners ({ db, keys, upstream, log }: OwnerOptions) {
  /** The one of these jobs, all of one key, whose output the file is, as Mistral shows them now; undefined if none. */
  async function ownerAmong (keyName: string, jobs: string[], workspaceId: string, fileId: string):
  Promise<string | undefined> {
    const key = await keys.resolve(workspaceId, keyName)
    // a job whose key is gone cannot be read, let alone billed: its output goes, as it would were it known
    if (!key) return undefined
    const file = await fromMistral(() => upstream.file(key.secret, fileId))
    // not a file of this key's organisation; or one Mistral says no job wrote
    if (!file || (typeof file.sample_type === 'string' && file.sample_type !== 'batch_result')) return undefined
    for (const jobId of jobs) {
      const job = await fromMistral(() => upstream.job(key.secret, jobId))
      const outputFile = typeof job?.output_file === 'string' ? job.output_file : undefined
      if (outputFile === undefined) continue
      // kept, as a check keeps it: the next deletion of it finds it in one lookup
      await db.update(watchedJobs).set({ outputFile })
        .where(and(eq(watchedJobs.jobId, jobId), isNull(watchedJobs.outputFile)))
      if (outputFile === fileId) return jobId
    }
    return undefined
  }

  return {
    /** Throws when PostgreSQL does not answer; Mistral not answering leaves the file `unchecked`. */
    async ownerOf (workspaceId: string, fileId: string): Promise<OutputOwner> {
      const rows = await db.select({
        jobId: watchedJobs.jobId, status: watchedJobs.status, outputFile: watchedJobs.outputFile,
        keyName: watchedJobs.keyName
      }).from(watchedJobs).where(and(eq(watchedJobs.workspaceId, workspaceId), or(
        eq(watchedJobs.outputFile, fileId),
        and(eq(watchedJobs.status, 'pending'), isNull(watchedJobs.outputFile)))))
        .orderBy(asc(watchedJobs.createdAt))
      const named = rows.find((row) => row.outputFile === fileId)
      // a job billed (or given up on) has nothing left to bill from its output
      if (named) return named.status === 'pending' ? { jobId: named.jobId } : {}
      const byKey = new Map<string, string[]>()
      for (const row of rows) {
        const jobs = byKey.get(row.keyName) ?? []
        jobs.push(row.jobId)
        byKey.set(row.keyName, jobs)
      }
      for (const [keyName, jobs] of byKey) {
        try {
          const jobId = await ownerAmong(keyName, jobs, workspaceId, fileId)
          if (jobId !== undefined) return { jobId }
        } catch (err) {
          if (!(err instanceof MistralUnanswered)) throw err
          log.warn({ err: err.cause, key: keyName },
            'batch jobs not read before a file deletion: Mistral did not answer')
          return { unchecked: true }
        }
      }
      return {}
    }
  }
}

/** Mistral failed a read (an error status, no answer), told apart from PostgreSQL's failures, which throw as such. */
class MistralUnanswered extends Error {
  constructor (cause: unknown) {
    super('Mistral did not answer', { cause })
  }
}

async function fromMistral<T> (read: () => Promise<T>): Promise<T> {
  try {
    return await read()
  } catch (err) {
    throw new MistralUnanswered(err)
  }
}
