import { setTimeout as sleep } from 'node:timers/promises'
import { and, asc, eq, inArray, isNull, lt, lte, not, or, sql, type SQL } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from '../db/client.js'
import { usageRecords, watchedJobs, type UsageRecord, type WatchedJob } from '../db/schema.js'
import { databaseUnanswered } from '../db/sql-state.js'
import type { Admission } from '../limits/admission.js'
import type { BilledFacts } from '../metrics.js'
import { costOf, type Cost, type CostOptions, type MeteredUsage } from '../pricing/cost.js'
import type { UnitPrices } from '../pricing/default-prices.js'
import type { PriceBook } from '../pricing/price-book.js'
import type { MeteredFamily } from '../proxy/operations.js'
import type { MistralKeyStore, UsableKey } from '../tenancy/mistral-keys.js'
import type { TokenStore } from '../tenancy/tokens.js'
import type { WorkspaceStore } from '../tenancy/workspaces.js'
import {
  addInlineOutputs, addJsonl, addLine, allModels, emptyTotals, familyOfEndpoint, TERMINAL_STATUSES, type BatchTotals,
  type ModelUsage
} from './batch-output.js'
import { batchRequestId, chargeOf, createBatchCharger } from './batch-charge.js'
import { createOutputOwners, type OutputOwner } from './batch-output-owner.js'
import { refused, validKeys, type BatchUpstream, type ReadingKey } from './batch-upstream.js'
import type { UsageRecorder } from './recorder.js'
import { selectRows } from './sql-rows.js'

/** A batch job the gateway saw created (`POST /v1/batch/jobs`, 2xx). */
export interface NewWatchedJob {
  jobId: string
  workspaceId: string
  tokenId: string
  keyName: string
  /** the request id of the call that created the job */
  requestId: string
  endpoint: string | null
  /** as the client asked for it */
  model: string | null
}

export interface BatchWatcher {
  /** Tracks a job as pending until it ends upstream; a job already watched is left as it is. */
  watch (job: NewWatchedJob): Promise<void>
  /**
   * A client of the workspace read the job through the gateway, with its Mistral key `keyName`: if it has ended, bill
   * it now rather than at the next poll. A job of another workspace is not touched.
   */
  seen (workspaceId: string, job: unknown, keyName: string): Promise<void>
  /**
   * A client of the workspace is about to delete the job, after which Mistral shows nothing of it, or its output
   * file, after which the gateway cannot read what it answered: checks it now (after a check under way elsewhere,
   * waited for up to SETTLE_WAIT_MS), billing it if it has ended. Says whether its watch is still pending, and why; a
   * job of another workspace, or not watched, is not pending. Throws when PostgreSQL does not answer.
   */
  settle (workspaceId: string, jobId: string, deleting?: 'job' | 'output'): Promise<Settled>
  /**
   * The pending job of the workspace whose output file this is, as Mistral named it to a check, or names it when
   * asked now (batch-output-owner.ts); none for any other file. Throws when PostgreSQL does not answer, and once
   * `signal` ends (the client left).
   */
  outputOwner (workspaceId: string, fileId: string, signal: AbortSignal): Promise<OutputOwner>
  /**
   * Checks the pending jobs that are due, and charges the billed ones whose charge the spend counters did not take;
   * every replica polls, a job is checked by one of them at a time.
   */
  poll (): Promise<void>
  /**
   * Called once per job billed, by the one replica that records it (the metrics count it there), whether or not the
   * spend counters take its charge then.
   */
  onBilled (listener: (facts: BilledFacts) => void): void
  close (): Promise<void>
}

/**
 * A watch after `settle`: pending while the job runs (as Mistral shows it), or ended but could not be billed yet, or
 * unreadable: its Mistral key was removed, or marked invalid with no valid key of the workspace seeing the job.
 */
export interface Settled {
  pending: boolean
  /** the status Mistral showed the job in, when it is still running */
  running?: string
  /** no key can read the job, its key removed: the gateway cannot bill it until the operator adds the key back */
  keyGone?: boolean
  /**
   * the job's key is marked invalid and no valid key of the workspace sees the job: the deletion of the job or of its
   * output waits for the key's replacement, which would otherwise take it to Mistral unbilled
   */
  keyInvalid?: boolean
}

interface WatcherOptions {
  db: Database
  usage: UsageRecorder
  prices: PriceBook
  keys: MistralKeyStore
  workspaces: WorkspaceStore
  tokens: TokenStore
  admission: Admission
  upstream: BatchUpstream
  log: FastifyBaseLogger
  /** how often pending jobs are checked */
  intervalMs: number
  /** jobs claimed at a time: a poll claims again until it has checked every job that was due when it started */
  claimSize?: number
}

/**
 * Bills each batch job once, when it ends (MISTRAL-NOTES §2.6): its output lines' usage, summed, at the batch
 * discount, as ONE usage record `batch:<job id>`. State is in `watched_jobs`, so a restart loses nothing. Any number
 * of replicas may check the same job; it still ends in one record: the recorder is idempotent by request id, and the
 * one check that turns the job from pending to recorded charges it to the spend counters. A charge they do not take
 * stays in the watch (`charged_at` null), and the polls of every replica send it again (batch-charge.ts).
 */
export function createBatchWatcher (options: WatcherOptions): BatchWatcher {
  const { db, usage, prices, keys, workspaces, tokens, admission, upstream, log, intervalMs } = options
  const claimSize = options.claimSize ?? 20
  const charger = createBatchCharger({ db, admission, workspaces, tokens, log })
  const outputOwners = createOutputOwners({ db, keys, upstream, log })
  // a tenth short of the interval: the timer's jitter must not make a job checked at one poll wait for the one after
  const dueAfterMs = Math.round(intervalMs * 0.9)
  let polling: Promise<void> | undefined
  // checks started by clients' reads, so that close() waits for them too
  const reading = new Set<Promise<unknown>>()
  const billedListeners: Array<(facts: BilledFacts) => void> = []
  let closed = false
  const timer = setInterval(() => { void poll() }, intervalMs)
  timer.unref()

  /**
   * Takes the jobs that match, for one check: `checked_at` moves CHECK_LEASE_MS ahead while the check runs, then back
   * to when its poll started (or the client's read claimed it). A job is thus never checked by two replicas at once
   * (unless a check outlives its lease), nor polled again before about `intervalMs` has passed; SKIP LOCKED: two polls
   * at once take different jobs.
   */
  async function claim (where: SQL | undefined, limit: number): Promise<WatchedJob[]> {
    const due = db.select({ jobId: watchedJobs.jobId }).from(watchedJobs)
      .where(where)
      .orderBy(sql`${watchedJobs.checkedAt} asc nulls first`, asc(watchedJobs.createdAt))
      .limit(limit)
      .for('update', { skipLocked: true })
    return db.update(watchedJobs).set({ checkedAt: sql`now() + ${CHECK_LEASE_MS} * interval '1 millisecond'` })
      .where(inArray(watchedJobs.jobId, due)).returning()
  }

  async function poll (): Promise<void> {
    if (closed) return
    polling ??= checkDueJobs()
      .catch((err: unknown) => log.warn({ err }, 'batch jobs poll failed; trying again at the next interval'))
      .finally(() => { polling = undefined })
    return polling
  }

  /**
   * Checks every job that was due when the poll started, `claimSize` at a time, however many there are. A job is due
   * when the poll that last checked it started `dueAfterMs` before this one: a job checked at the previous poll is
   * due again at this one, however late in that poll it was checked. A job this poll checks is not due again before
   * a later poll, so a poll ends.
   */
  async function checkDueJobs (): Promise<void> {
    const [{ now }] = await selectRows<{ now: string }>(db, sql`select now()::text as now`)
    const started = sql`${now}::timestamptz`
    const due = sql`${started} - ${dueAfterMs} * interval '1 millisecond'`
    for (;;) {
      const jobs = await claim(and(awaitingCheck, or(isNull(watchedJobs.checkedAt), lt(watchedJobs.checkedAt, due))),
        claimSize)
      for (const job of jobs) {
        if (closed) return
        await check(job, undefined, started)
      }
      if (jobs.length < claimSize) return
    }
  }

  /**
   * One check of a claimed job: reads it (unless a client's read just showed it) and, if it has ended, bills it; a
   * job recorded but not charged yet is charged. `startedAt` is when the job counts as checked: the next poll, an
   * interval later, finds it due from then. Gives the status Mistral showed the job in (KEY_GONE or NO_VALID_KEY when
   * no key could read it: readerOf); undefined when the check failed.
   */
  async function check (job: WatchedJob, shown: Shown | undefined,
    startedAt: Date | SQL): Promise<string | undefined> {
    try {
      if (job.status === 'recorded') {
        await charger.chargeRecorded(job)
        return job.upstreamStatus ?? undefined
      }
      return await checkClaimed(job, shown)
    } catch (err) {
      log.warn({ err, job: job.jobId }, 'batch job check failed; trying again at the next interval')
      return undefined
    } finally {
      await db.update(watchedJobs).set({ checkedAt: startedAt })
        .where(and(eq(watchedJobs.jobId, job.jobId), awaitingCheck))
        .catch((err: unknown) => log.warn({ err, job: job.jobId }, 'batch job lease not released; it expires'))
    }
  }

  async function checkClaimed (job: WatchedJob, shown: Shown | undefined) {
    const [earlier] = await db.select().from(usageRecords).where(eq(usageRecords.requestId, batchRequestId(job.jobId)))
    if (earlier) {
      const status = shown ? String(shown.job.status) : job.upstreamStatus
      await billedEarlier(job, earlier, status)
      return status ?? undefined
    }
    const reader = await readerOf(job, shown)
    if (reader === KEY_GONE || reader === NO_VALID_KEY) return reader
    const { key, upstreamJob } = reader
    if (!upstreamJob) {
      // deleted upstream before it was read: there is nothing left to bill from, and what it cost is lost
      log.error({ job: job.jobId, workspaceId: job.workspaceId }, 'batch job not found upstream; it will not be billed')
      await finish(job, 'failed', 'NOT_FOUND', new Date())
      return 'NOT_FOUND'
    }
    const status = String(upstreamJob.status)
    // kept as soon as Mistral names it: a client's deletion of the file through the gateway then bills the job first
    const outputFile = typeof upstreamJob.output_file === 'string' ? upstreamJob.output_file : undefined
    if (!TERMINAL_STATUSES.has(status)) {
      await db.update(watchedJobs).set({ upstreamStatus: status, outputFile }).where(eq(watchedJobs.jobId, job.jobId))
      return status
    }
    if (outputFile !== undefined && outputFile !== job.outputFile) {
      await db.update(watchedJobs).set({ outputFile }).where(eq(watchedJobs.jobId, job.jobId))
    }
    const totals = await readTotals(key, job, upstreamJob)
    const reportedAt = completedAtOf(upstreamJob)
    if (!totals) {
      await outputMissing(job, upstreamJob, reportedAt)
      return status
    }
    const completedAt = reportedAt ?? new Date()
    if (totals.succeeded === 0) {
      // Mistral bills answered requests only: a job that answered none costs nothing and leaves no record
      await finish(job, 'failed', status, completedAt)
      return status
    }
    await bill(job, upstreamJob, status, totals, completedAt)
    return status
  }

  /**
   * Who reads the job: its own key, or, once the gateway marked that one invalid (Mistral refused it, and would refuse
   * each read until the operator replaces it), the first valid key of the workspace that sees the job. One that does
   * not (401, 403, 404: another organisation's) says nothing of whether the job is still at Mistral. The key a client's
   * read just went out with is tried first, its read being that one: it sees the job, and the gateway sends no call
   * with a key marked invalid. KEY_GONE when the job's key was removed; NO_VALID_KEY when every valid key answered that
   * it does not see the job.
   */
  async function readerOf (job: WatchedJob, shown: Shown | undefined):
  Promise<Reader | typeof KEY_GONE | typeof NO_VALID_KEY> {
    const facts = { job: job.jobId, key: job.keyName }
    const own = await keys.resolve(job.workspaceId, job.keyName)
    if (!own) {
      log.warn(facts, 'batch job pending: its Mistral key is gone')
      return KEY_GONE
    }
    if (own.status !== 'invalid') {
      const key = { ...own, workspaceId: job.workspaceId }
      return { key, upstreamJob: shown?.job ?? await upstream.job(key, job.jobId) }
    }
    // a key that could not answer (429, 5xx, cooling down, one this replica cannot open) may see the job all the same:
    // the next one is tried, and, when none sees it, the check fails on that key's error rather than taking it for one
    // that does not
    const failures: unknown[] = []
    const failed = (err: unknown, key: string) => {
      log.warn({ err, job: job.jobId, key }, 'batch job not read with a valid key of the workspace; trying the next')
      failures.push(err)
    }
    const readWith = (key: UsableKey & ReadingKey) => upstream.job(key, job.jobId).catch((err: unknown) => {
      if (!refused(err)) failed(err, key.name)
      return undefined
    })
    for await (const key of validKeys(keys, job.workspaceId, shown ? [shown.keyName] : [], failed)) {
      const seen = key.name === shown?.keyName ? shown.job : await readWith(key)
      if (seen) return { key, upstreamJob: seen }
    }
    if (failures.length > 0) throw failures[0]
    log.warn(facts, 'batch job pending: its Mistral key is invalid, and no valid key of the workspace sees the job')
    return NO_VALID_KEY
  }

  /**
   * The output file when there is one, else the results inline (`outputs`, asked for with `inline=true`). Undefined
   * when they hold no answer though the job had some, as Mistral counts them in `succeeded_requests` (its spec
   * requires the field; the output file, which holds the errored lines too, says so only when the count is absent).
   * Its answers are then missing rather than none.
   */
  async function readTotals (key: ReadingKey, job: WatchedJob, upstreamJob: Record<string, unknown>) {
    const totals = emptyTotals(jobModelOf(job, upstreamJob))
    const outputFile = upstreamJob.output_file
    const content = typeof outputFile === 'string' ? await upstream.fileContent(key, outputFile) : undefined
    if (content) {
      await addJsonl(totals, content)
    } else {
      if (typeof outputFile === 'string') {
        log.warn({ job: job.jobId, file: outputFile }, 'batch job output file not found; reading its results inline')
      }
      await addInline(key, job.jobId, upstreamJob, totals)
    }
    if (totals.unreadable > 0) {
      log.warn({ job: job.jobId, lines: totals.unreadable },
        'batch job output lines answered 2xx but their usage could not be read (or not JSON); they are not billed')
    }
    const counted = upstreamJob.succeeded_requests
    const answered = typeof counted === 'number' ? counted > 0 : typeof outputFile === 'string'
    return totals.succeeded === 0 && answered ? undefined : totals
  }

  /**
   * A read without `inline` may carry `outputs: []`, which is not the job's results: only a list that holds some is
   * taken as them, else they are asked for.
   */
  async function addInline (key: ReadingKey, jobId: string, upstreamJob: Record<string, unknown>,
    totals: BatchTotals): Promise<void> {
    const shown = upstreamJob.outputs
    if (Array.isArray(shown) && shown.length > 0) {
      for (const line of shown) addLine(totals, line)
      return
    }
    const answer = await upstream.jobWithResults(key, jobId)
    if (answer) await addInlineOutputs(totals, answer)
  }

  /**
   * The job had answers, but neither its output file (answering 404, or holding no usage) nor its results inline hold
   * one. Right after a job ends its file may not be served yet, so the job stays pending, read again at each check,
   * until its output has been missing for OUTPUT_GRACE_MS since the job completed; only then is it taken as deleted
   * (by its client), and the job as lost.
   */
  async function outputMissing (job: WatchedJob, upstreamJob: Record<string, unknown>,
    reportedAt: Date | undefined): Promise<void> {
    const since = reportedAt ?? job.completedAt ?? await firstMissing(job)
    const facts = { job: job.jobId, succeededRequests: succeededRequestsOf(upstreamJob) }
    if (Date.now() - since.getTime() < OUTPUT_GRACE_MS) {
      log.warn(facts, 'batch job output not found or holding no answer; it is read again at the next check')
      return
    }
    log.error({ ...facts, workspaceId: job.workspaceId },
      'batch job output still not found or holding no answer an hour after the job ended; it will not be billed')
    await finish(job, 'failed', 'OUTPUT_GONE', since)
  }

  /** A check started by a client's call: close() waits for it too. */
  async function checkRead (job: WatchedJob, shown: Shown | undefined) {
    const checking = check(job, shown, claimedAt(job))
    reading.add(checking)
    try {
      return await checking
    } finally {
      reading.delete(checking)
    }
  }

  // the checks before deletions under way, by workspace and job
  const settlings = new Map<string, Promise<Settled>>()

  async function settleWatch (mine: SQL | undefined, deleting: 'job' | 'output'): Promise<Settled> {
    const waitUntil = Date.now() + SETTLE_WAIT_MS
    while (!closed) {
      const [claimed] = await claim(and(pendingWatch, mine, unclaimed), 1)
      if (claimed) {
        const status = await checkRead(claimed, undefined)
        // the operator may replace the key while the job is read with each other key, and the deletion would then go
        // with the new one: Mistral deletes the job, or its output, before any key has billed the job
        if (status === NO_VALID_KEY) return { pending: true, keyInvalid: true }
        if (status === KEY_GONE) return await letGo(claimed, deleting)
        if (!await isPending(mine)) return { pending: false }
        const running = status !== undefined && !TERMINAL_STATUSES.has(status)
        return running ? { pending: true, running: status } : { pending: true }
      }
      // not pending, or held by a check under way
      if (!await isPending(mine)) return { pending: false }
      if (Date.now() >= waitUntil) break
      await sleep(SETTLE_STEP_MS)
    }
    return { pending: await isPending(mine) }
  }

  /**
   * A deletion the gateway could not bill the job before goes on, as its Mistral key was removed and no key can read
   * the job. An output file's job stays watched, as it stays at Mistral, where its key added back may still read its
   * results inline. The job's own deletion ends the watch: the operator's removal already stopped its billing, and once
   * Mistral has deleted the job no key could bill it, so its months' statements would stay open for good.
   */
  async function letGo (job: WatchedJob, deleting: 'job' | 'output'): Promise<Settled> {
    const ends = deleting === 'job'
    const what = ends ? 'batch job' : 'batch job output file'
    log.warn({ job: job.jobId, key: job.keyName },
      `${what} let go to its deletion with its Mistral key gone${ends ? '; it will not be billed' : ''}`)
    if (ends) await finish(job, 'failed', KEY_GONE, new Date())
    return { pending: true, keyGone: true }
  }

  async function isPending (mine: SQL | undefined): Promise<boolean> {
    const [row] = await db.select({ jobId: watchedJobs.jobId }).from(watchedJobs).where(and(mine, pendingWatch))
    return row !== undefined
  }

  /**
   * For a job Mistral shows without `completed_at`: when a check first found its output missing, kept on its watch
   * (whose `completed_at` is otherwise set only when the watch ends), so that the grace has an end.
   */
  async function firstMissing (job: WatchedJob): Promise<Date> {
    const [row] = await db.update(watchedJobs).set({ completedAt: sql`coalesce(${watchedJobs.completedAt}, now())` })
      .where(eq(watchedJobs.jobId, job.jobId)).returning({ completedAt: watchedJobs.completedAt })
    return row?.completedAt ?? new Date()
  }

  async function bill (job: WatchedJob, upstreamJob: Record<string, unknown>, status: string, totals: BatchTotals,
    completedAt: Date) {
    // a deleted workspace keeps its ledger: what its jobs answered is billed there all the same
    const workspace = await workspaces.find(job.workspaceId, { deleted: true })
    if (!workspace) {
      log.error({ job: job.jobId, workspaceId: job.workspaceId }, 'batch job of no workspace; it will not be billed')
      await finish(job, 'failed', status, completedAt)
      return
    }
    // before anything is written: should the lookup fail, the job stays pending and the next check bills it whole
    const token = job.tokenId ? await tokens.find(job.workspaceId, job.tokenId) : undefined
    const family = familyOfEndpoint(job.endpoint ?? String(upstreamJob.endpoint))
    const cost = costOfJob(job, family, totals, workspace)
    const units = allModels(totals).units
    const record = recordOf(job, upstreamJob, totals, units, cost, completedAt)
    usage.record(record)
    await usage.flush()
    const charge = chargeOf(record.requestId, workspace, token, cost.billedMicros, completedAt)
    // the job is billed once the ledger holds its record, whether or not the spend counters take its charge then: the
    // one check that ends the watch tells the metrics before the charge, which a later poll may send again
    if (!await finish(job, 'recorded', status, completedAt)) return
    announce(job, record, workspace, { models: [...totals.byModel.keys()], requests: totals.succeeded })
    await charger.charge(job.jobId, charge)
  }

  /**
   * An earlier check wrote the job's record, but the ledger did not hold it yet when that check would have ended the
   * watch (PostgreSQL failing: the record waited in the recorder's spool), so the job stayed pending. The ledger's
   * record is the job's bill, whatever became of the job since (deleted, its output gone, its key removed): the job is
   * billed and charged from it, as any recorded job.
   */
  async function billedEarlier (job: WatchedJob, record: LedgerRecord, status: string | null) {
    const workspace = await workspaces.find(job.workspaceId, { deleted: true })
    if (!await finish(job, 'recorded', status, record.createdAt)) return
    if (workspace) announce(job, record, workspace, {})
    await charger.chargeRecorded(job)
  }

  /** Tells the metrics (the onBilled listeners) and the log of a job billed: once, by the check ending its watch. */
  function announce (job: WatchedJob, record: Billed, workspace: { slug: string, currency: string },
    detail: { models?: Array<string | undefined>, requests?: number }) {
    const facts: BilledFacts = {
      workspace: workspace.slug,
      operation: 'batch',
      model: record.pricedModel ?? undefined,
      status: record.status,
      inputTokens: record.promptTokens,
      outputTokens: record.completionTokens,
      billedMicros: record.billedCostMicros,
      currency: workspace.currency
    }
    for (const listener of billedListeners) listener(facts)
    log.info({
      job: job.jobId, workspace: workspace.slug, model: record.model, ...detail, billedMicros: record.billedCostMicros
    }, 'batch job billed')
  }

  /**
   * Each model's units at its own price, summed: a client cannot have a dear model's answers billed at a cheap one's
   * price. The priced model is named only when one price applied to every answer.
   */
  function costOfJob (job: WatchedJob, family: MeteredFamily | undefined, totals: BatchTotals,
    workspace: { currency: string, markupBps: number }): JobCost {
    const cost: JobCost = { listMicros: 0, billedMicros: 0, pricedModel: undefined }
    const pricedModels = new Set<string | undefined>()
    for (const [model, used] of totals.byModel) {
      const price = family && model ? prices.resolve(model, family, workspace.currency) : undefined
      pricedModels.add(price?.model)
      if (!family || !price) {
        log.warn({ job: job.jobId, model }, 'batch job has no price in the book: its answers are recorded at zero cost')
        continue
      }
      const priced = costOfModel(used, price, { family, markupBps: workspace.markupBps, batch: true })
      cost.listMicros += priced.listMicros
      cost.billedMicros += priced.billedMicros
    }
    cost.pricedModel = pricedModels.size === 1 ? [...pricedModels][0] : undefined
    return cost
  }

  /**
   * Ends the watch, once: true for the one check that does it. `recorded` only once the ledger has the record — if
   * it is still in the spool, the job stays pending and the next check records it again, which changes nothing.
   * `failed` only while the ledger has none: a record that reached it meanwhile is billed by the next check.
   */
  async function finish (job: WatchedJob, outcome: 'recorded' | 'failed', status: string | null, completedAt: Date) {
    const ledger = outcome === 'recorded' ? inLedger(job) : not(inLedger(job))
    const done = await db.update(watchedJobs)
      .set({ status: outcome, upstreamStatus: status, completedAt, checkedAt: sql`now()` })
      .where(and(eq(watchedJobs.jobId, job.jobId), pendingWatch, ledger))
      .returning({ jobId: watchedJobs.jobId })
    return done.length === 1
  }

  return {
    async watch (job) {
      await db.insert(watchedJobs).values(job).onConflictDoNothing({ target: watchedJobs.jobId })
    },

    async seen (workspaceId, shown, keyName) {
      const job = shown as Record<string, unknown> | null
      if (job === null || typeof job !== 'object' || typeof job.id !== 'string') return
      if (closed || !TERMINAL_STATUSES.has(String(job.status))) return
      // a job being checked elsewhere is left to that check
      const [claimed] = await claim(and(pendingWatch, ownWatch(workspaceId, job.id), unclaimed), 1)
      if (claimed) await checkRead(claimed, { job, keyName })
    },

    settle (workspaceId, jobId, deleting = 'job') {
      // deletions of one job at once share one check: each would otherwise query PostgreSQL every step for as long as
      // another replica's check holds the job, and a client can send as many as it likes
      const key = `${workspaceId}/${jobId}/${deleting}`
      let settling = settlings.get(key)
      if (!settling) {
        settling = settleWatch(ownWatch(workspaceId, jobId), deleting).catch((err: unknown) => {
          // any other failure is the deletion's 500, logged with its cause there
          if (databaseUnanswered(err)) {
            log.warn({ err, job: jobId }, 'batch job not checked before its deletion: the database does not answer')
          }
          throw err
        }).finally(() => settlings.delete(key))
        settlings.set(key, settling)
      }
      return settling
    },

    outputOwner: (workspaceId, fileId, signal) => outputOwners.ownerOf(workspaceId, fileId, signal),

    poll,

    onBilled (listener) {
      billedListeners.push(listener)
    },

    async close () {
      closed = true
      clearInterval(timer)
      await Promise.all([polling, ...reading])
    }
  }
}

// how long one check may hold a job before another replica may take it: reading a large output file takes a while
const CHECK_LEASE_MS = 5 * 60_000
// how long a client's deletion waits for a check of the job under way elsewhere, and how often it looks
const SETTLE_WAIT_MS = 10_000
const SETTLE_STEP_MS = 500
// what a check gives for a job no key could read (its Mistral key gone; invalid, and no valid key sees the job): no
// status of Mistral's, which it could not read
const KEY_GONE = 'KEY_GONE'
const NO_VALID_KEY = 'NO_VALID_KEY'
// how long after a job completed its output may be missing before it is taken as deleted: a file not yet served
// right after the job ended must not lose the job, and a client deletes its output hours later, if at all
const OUTPUT_GRACE_MS = 60 * 60_000

type LedgerRecord = typeof usageRecords.$inferSelect

/** A job as a client's read through the gateway showed it, and the Mistral key that read went out with. */
interface Shown {
  job: Record<string, unknown>
  keyName: string
}

/** The key a check reads a job with, and the job as that key shows it (undefined: Mistral has no such job). */
interface Reader {
  key: ReadingKey
  upstreamJob: Record<string, unknown> | undefined
}

/** What the metrics and the log say of a billed job: its record's, as written, or as read back from the ledger. */
type Billed = Pick<LedgerRecord,
'model' | 'pricedModel' | 'status' | 'promptTokens' | 'completionTokens' | 'billedCostMicros'>

/** What a job costs, summed over its models. */
interface JobCost {
  listMicros: number
  billedMicros: number
  /** the price book's id of the one price every answer was billed at; undefined when there were several, or none */
  pricedModel: string | undefined
}

// no check holds the job: a check moves `checked_at` a lease ahead while it runs
const unclaimed = or(isNull(watchedJobs.checkedAt), lte(watchedJobs.checkedAt, sql`now()`))

const pendingWatch = eq(watchedJobs.status, 'pending')

// what a poll checks: the jobs not billed yet, and those billed whose charge the spend counters have not taken yet
const awaitingCheck = or(pendingWatch,
  and(eq(watchedJobs.status, 'recorded'), isNull(watchedJobs.chargedAt)))

const ownWatch = (workspaceId: string, jobId: string) =>
  and(eq(watchedJobs.jobId, jobId), eq(watchedJobs.workspaceId, workspaceId))

const inLedger = (job: WatchedJob) =>
  sql`exists (select 1 from ${usageRecords} where ${usageRecords.requestId} = ${batchRequestId(job.jobId)})`

/** When a job was claimed: the claim set `checked_at` a lease ahead of PostgreSQL's clock. */
function claimedAt (job: WatchedJob): Date | SQL {
  return job.checkedAt ? new Date(job.checkedAt.getTime() - CHECK_LEASE_MS) : sql`now()`
}

/** When Mistral says the job completed (`completed_at`, Unix seconds), if it does. */
function completedAtOf (upstreamJob: Record<string, unknown>): Date | undefined {
  return typeof upstreamJob.completed_at === 'number' ? new Date(upstreamJob.completed_at * 1000) : undefined
}

/** The job's model as the client asked for it: in the create call, else as Mistral shows the job. */
function jobModelOf (job: WatchedJob, upstreamJob: Record<string, unknown>): string | undefined {
  return job.model ?? (typeof upstreamJob.model === 'string' ? upstreamJob.model : undefined)
}

/** How many requests Mistral says the job answered (`succeeded_requests`), 0 when it does not say. */
function succeededRequestsOf (upstreamJob: Record<string, unknown>): number {
  return typeof upstreamJob.succeeded_requests === 'number' ? upstreamJob.succeeded_requests : 0
}

/** One model's units at its price; OCR pages whose answers carry annotations have a price of their own. */
function costOfModel (used: ModelUsage, price: UnitPrices, options: CostOptions): Cost {
  const plain = costOf(meteredOf(used), price, options)
  if (used.annotatedPages === 0) return plain
  const annotated = costOf({ ...zeroUnits, pages: used.annotatedPages }, price, { ...options, annotated: true })
  return {
    listMicros: plain.listMicros + annotated.listMicros,
    billedMicros: plain.billedMicros + annotated.billedMicros
  }
}

/** The units priced at the plain rates: annotated OCR pages are left to their own price. */
function meteredOf (used: ModelUsage): MeteredUsage {
  const n = (unit: string) => used.units[unit] ?? 0
  return {
    promptTokens: n('promptTokens'),
    cachedTokens: n('cachedTokens'),
    completionTokens: n('completionTokens'),
    audioSeconds: n('audioSeconds'),
    pages: n('pages') - used.annotatedPages,
    characters: n('characters')
  }
}

/**
 * The job's one usage record: every model's units summed (`units`), its cost the sum of theirs. The model is the
 * job's as the client asked for it, else the one model its answers named (an agent job names none); null when they
 * named several.
 */
function recordOf (job: WatchedJob, upstreamJob: Record<string, unknown>, totals: BatchTotals,
  units: Record<string, number>, cost: JobCost, completedAt: Date): UsageRecord & Billed {
  const n = (unit: string) => units[unit] ?? 0
  const answeredModels = [...totals.byModel.keys()]
  const createdAt = typeof upstreamJob.created_at === 'number'
    ? upstreamJob.created_at * 1000
    : job.createdAt.getTime()
  return {
    requestId: batchRequestId(job.jobId),
    workspaceId: job.workspaceId,
    tokenId: job.tokenId,
    keyName: job.keyName,
    operation: 'batch',
    model: jobModelOf(job, upstreamJob) ?? (answeredModels.length === 1 ? answeredModels[0] : undefined) ?? null,
    pricedModel: cost.pricedModel ?? null,
    promptTokens: n('promptTokens'),
    cachedTokens: n('cachedTokens'),
    completionTokens: n('completionTokens'),
    totalTokens: n('totalTokens'),
    connectorTokens: n('connectorTokens'),
    pages: n('pages'),
    audioSeconds: n('audioSeconds'),
    characters: n('characters'),
    listCostMicros: cost.listMicros,
    billedCostMicros: cost.billedMicros,
    estimated: false,
    streamed: false,
    status: 200,
    upstreamStatus: 200,
    // from creation to completion: how long the client waited for its results
    latencyMs: Math.max(0, Math.min(2_147_483_647, completedAt.getTime() - createdAt)),
    ttftMs: null,
    // billed in the period the job ended in
    createdAt: completedAt
  }
}

const zeroUnits: MeteredUsage = {
  promptTokens: 0, cachedTokens: 0, completionTokens: 0, audioSeconds: 0, pages: 0, characters: 0
}
