import { and, asc, eq, isNull, or, sql } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from '../db/client.js'
import { watchedJobs } from '../db/schema.js'
import type { MistralKeyStore } from '../tenancy/mistral-keys.js'
import { TERMINAL_STATUSES } from './batch-output.js'
import { refused, validKeys, type BatchUpstream, type ReadingKey } from './batch-upstream.js'

/** Whose output a file is, among the workspace's watched jobs, as far as the gateway can tell before its deletion. */
export interface OutputOwner {
  /** the pending job whose output the file is */
  jobId?: string
  /**
   * the file may be the output of a pending job, which no key could check: Mistral failed, or took too long, or a key
   * was one this replica cannot open
   */
  unchecked?: boolean
}

interface OwnerOptions {
  db: Database
  keys: MistralKeyStore
  upstream: BatchUpstream
  log: FastifyBaseLogger
}

/** A pending job of the workspace whose output is not known yet: the file may be it. */
interface Candidate {
  jobId: string
  keyName: string
  createdAt: Date
}

/** One check of a file, shared by the deletions of it under way at once. */
interface SharedCheck {
  owner: Promise<OutputOwner>
  /** ends the check: its budget spent, or no deletion waiting on it any more */
  stop: AbortController
  waiting: number
}

/**
 * Finds the pending job whose output file a client is about to delete. A check keeps the output file Mistral names
 * (`output_file`), but a client may learn it first: from a read whose check has not written it yet, the jobs list, a
 * read with `inline`, the files list. So a file no watch names, while the workspace has pending jobs whose output is
 * not known yet, is read from Mistral, with each key of the workspace in turn until one sees it: a file Mistral marks
 * as something else than a job's output (`sample_type`, an upload's `batch_request` say) goes as it comes; for one it
 * marks `batch_result` (or not at all), Mistral lists the jobs that ended while those jobs could have (one page, or a
 * few), and the one naming the file as its output is its job. A running job has no output yet: it is never read.
 *
 * A file deletion costs one indexed lookup when no job of the workspace is pending with its output unknown, else a
 * read of the file and, for a job's output, a page or a few of the jobs list, within CHECK_BUDGET_MS; deletions of
 * one file at once share one check. Other calls pay nothing.
 */
export function createOutputOwners ({ db, keys, upstream, log }: OwnerOptions) {
  // by workspace and file
  const checks = new Map<string, SharedCheck>()

  async function findOwner (workspaceId: string, fileId: string, signal: AbortSignal): Promise<OutputOwner> {
    // 'pending' as a literal, not a parameter: PostgreSQL then matches the partial index in any plan
    const rows = await db.select({
      jobId: watchedJobs.jobId, status: watchedJobs.status, outputFile: watchedJobs.outputFile,
      keyName: watchedJobs.keyName, createdAt: watchedJobs.createdAt
    }).from(watchedJobs).where(and(eq(watchedJobs.workspaceId, workspaceId), or(
      eq(watchedJobs.outputFile, fileId),
      and(sql`${watchedJobs.status} = 'pending'`, isNull(watchedJobs.outputFile)))))
      .orderBy(asc(watchedJobs.createdAt))
    const named = rows.find((row) => row.outputFile === fileId)
    // a job billed (or given up on) has nothing left to bill from its output
    if (named) return named.status === 'pending' ? { jobId: named.jobId } : {}
    if (rows.length === 0) return {}
    let unanswered = false
    // a key this replica cannot open may see the file all the same: the next one is asked, and, when none sees it, the
    // file is left unchecked rather than taken for none of the jobs'. Any other failure of a key's lookup ends the
    // walk: PostgreSQL not answering it is the deletion's 503, anything else (a refusal, a bug) its 500 (ownerOf)
    const unopened = (err: unknown, name: string) => {
      log.warn({ err, key: name }, 'batch jobs not read before a file deletion with a key this replica cannot open')
      unanswered = true
    }
    // the keys of the jobs first, by their oldest job: a key whose read fails leaves the question to the next one,
    // which may see the same organisation
    for await (const key of validKeys(keys, workspaceId, rows.map((row) => row.keyName), unopened)) {
      try {
        const owner = await askWith(key, fileId, rows, signal)
        if (owner !== NOT_SEEN) return owner
      } catch (err) {
        if (!(err instanceof MistralUnanswered)) throw err
        // the check ended: out of time (logged once by its timer), or no deletion waits on it any more
        if (signal.aborted) break
        log.warn({ err: err.cause, key: key.name },
          'batch jobs not read before a file deletion: Mistral did not answer')
        unanswered = true
      }
    }
    return unanswered || signal.aborted ? { unchecked: true } : {}
  }

  /**
   * What this key tells of the file: its job, or no candidate's ({}), or NOT_SEEN when its organisation has no such
   * file (404), or it may not read it (401, 403: a key Mistral has revoked since its jobs were created). Throws
   * MistralUnanswered when Mistral does not say.
   */
  async function askWith (key: ReadingKey, fileId: string, rows: Candidate[], signal: AbortSignal):
  Promise<OutputOwner | typeof NOT_SEEN> {
    let file: Record<string, unknown> | undefined
    try {
      file = await upstream.file(key, fileId, signal)
    } catch (err) {
      if (refused(err)) return NOT_SEEN
      throw new MistralUnanswered(err)
    }
    if (!file) return NOT_SEEN
    // one Mistral says no job wrote
    if (typeof file.sample_type === 'string' && file.sample_type !== 'batch_result') return {}
    // the job that wrote the file was created before it, and, if it is a candidate, before the newest of them
    const fileCreatedAt = typeof file.created_at === 'number' ? file.created_at * 1000 : Infinity
    const window = {
      from: rows[0].createdAt.getTime() - CLOCK_SKEW_MS,
      to: Math.min(rows[rows.length - 1].createdAt.getTime(), fileCreatedAt) + CLOCK_SKEW_MS
    }
    return await ownerListed(key, fileId, window, rows, signal)
  }

  /**
   * The job, among those that ended and were created within the window, that names the file as its output, as this
   * key's organisation lists them, oldest first: the candidate, or {} when it is none of them (another workspace's
   * job, or no job). A candidate listed with its output has it kept, as a check keeps it: the next deletion of that
   * output finds it in one lookup. A window holding more jobs than LIST_PAGES pages could not be checked.
   */
  async function ownerListed (key: ReadingKey, fileId: string, window: { from: number, to: number },
    rows: Candidate[], signal: AbortSignal): Promise<OutputOwner> {
    // a file written before the oldest of them was created
    if (window.to < window.from) return {}
    const candidates = new Map(rows.map((row) => [row.jobId, row]))
    for (let page = 0; page < LIST_PAGES; page++) {
      const query = new URLSearchParams({
        created_after: new Date(window.from).toISOString(), order_by: 'created', page: String(page),
        page_size: String(PAGE_SIZE)
      })
      for (const status of ENDED_STATUSES) query.append('status', status)
      const listed = await fromMistral(() => upstream.jobs(key, query, signal))
      const jobs = Array.isArray(listed.data) ? listed.data as Array<Record<string, unknown>> : []
      for (const job of jobs) {
        const outputFile = typeof job.output_file === 'string' ? job.output_file : undefined
        const candidate = typeof job.id === 'string' ? candidates.get(job.id) : undefined
        if (candidate && outputFile !== undefined) {
          await db.update(watchedJobs).set({ outputFile })
            .where(and(eq(watchedJobs.jobId, candidate.jobId), isNull(watchedJobs.outputFile)))
        }
        if (outputFile === fileId) return candidate ? { jobId: candidate.jobId } : {}
        // listed oldest first: no job after this one wrote the file, or is a candidate
        if (typeof job.created_at === 'number' && job.created_at * 1000 > window.to) return {}
      }
      // the last page: Mistral's default page size is this one, so a shorter page is not a smaller size
      if (jobs.length < PAGE_SIZE) return {}
    }
    throw new MistralUnanswered(new Error(`more than ${LIST_PAGES * PAGE_SIZE} batch jobs ended while the ` +
      'workspace\'s could have'))
  }

  /** A deletion waits on the check of its file: it throws `signal`'s reason as soon as the client has left. */
  async function waitFor (id: string, check: SharedCheck, signal: AbortSignal): Promise<OutputOwner> {
    check.waiting++
    let leave!: () => void
    const left = new Promise<never>((_resolve, reject) => {
      leave = () => {
        reject(signal.reason)
        if (--check.waiting > 0) return
        // nobody needs its answer any more: its reads at Mistral end with it, and a deletion after starts anew
        if (checks.get(id) === check) checks.delete(id)
        check.stop.abort(new Error('no deletion waits on the check'))
      }
    })
    signal.addEventListener('abort', leave, { once: true })
    try {
      return await Promise.race([check.owner, left])
    } finally {
      signal.removeEventListener('abort', leave)
      if (!signal.aborted) check.waiting--
    }
  }

  function startCheck (id: string, workspaceId: string, fileId: string): SharedCheck {
    const stop = new AbortController()
    const budget = setTimeout(() => {
      log.warn({ file: fileId, ms: CHECK_BUDGET_MS },
        'batch jobs not read before a file deletion: Mistral did not answer in time')
      stop.abort(new Error('the check ran out of time'))
    }, CHECK_BUDGET_MS)
    const check: SharedCheck = { stop, waiting: 0, owner: findOwner(workspaceId, fileId, stop.signal) }
    check.owner.finally(() => {
      clearTimeout(budget)
      if (checks.get(id) === check) checks.delete(id)
    }).catch(() => {
      // the deletions waiting on it get its failure; none may be left to
    })
    return check
  }

  return {
    /**
     * Throws when PostgreSQL fails (a key's lookup too), and `signal`'s reason once it ends (the client left); Mistral
     * not answering, or not within CHECK_BUDGET_MS, leaves the file `unchecked`, as does a key this replica cannot open
     * when no other sees the file. Deletions of one file at once share one check, which ends once none of them waits
     * on it.
     */
    async ownerOf (workspaceId: string, fileId: string, signal: AbortSignal): Promise<OutputOwner> {
      signal.throwIfAborted()
      const id = `${workspaceId}/${fileId}`
      let check = checks.get(id)
      if (!check) {
        check = startCheck(id, workspaceId, fileId)
        checks.set(id, check)
      }
      return waitFor(id, check, signal)
    }
  }
}

/** What a key answers of a file its organisation does not have, or that it may not read. */
const NOT_SEEN = Symbol('not seen')

// the statuses of jobs that may have an output file: not QUEUED, not RUNNING (BatchJobStatus in Mistral's spec)
const ENDED_STATUSES = [...TERMINAL_STATUSES, 'CANCELLATION_REQUESTED']
// Mistral's default page size for the jobs list; three pages bound a check at four reads of Mistral per key
const PAGE_SIZE = 100
const LIST_PAGES = 3
// Mistral's clock against PostgreSQL's, and a job's creation against the watch its answer wrote
const CLOCK_SKEW_MS = 5 * 60_000
/**
 * How long a file deletion waits for the check: the wait a job's deletion allows for a check of it under way
 * (SETTLE_WAIT_MS). A check is a read of the file and a page or few of the jobs list per key, each well under a
 * second while Mistral answers; the batch pool's 4 connections may hold them behind output downloads, which this
 * bounds. Past it the deletion is refused 409 with Retry-After, its slot given back.
 */
const CHECK_BUDGET_MS = 10_000

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
