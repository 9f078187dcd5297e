import { and, asc, eq, inArray, isNull, lt, lte, or, sql, type SQL } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from '../db/client.js'
import { usageRecords, watchedJobs, type UsageRecord, type WatchedJob } from '../db/schema.js'
import type { Admission } from '../limits/admission.js'
import type { BilledFacts } from '../metrics.js'
import type { SpendCaps } from '../limits/policy.js'
import { costOf, type MeteredUsage } from '../pricing/cost.js'
import type { PriceBook } from '../pricing/price-book.js'
import type { MistralKeyStore } from '../tenancy/mistral-keys.js'
import type { TokenStore } from '../tenancy/tokens.js'
import type { WorkspaceStore } from '../tenancy/workspaces.js'
import {
  addJsonl, addLine, emptyTotals, familyOfEndpoint, TERMINAL_STATUSES, type BatchTotals
} from './batch-output.js'
import type { BatchUpstream } from './batch-upstream.js'
import type { UsageRecorder } from './recorder.js'

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
   * A client of the workspace read the job through the gateway: if it has ended, bill it now rather than at the next
   * poll. A job of another workspace is not touched.
   */
  seen (workspaceId: string, job: unknown): Promise<void>
  /** Checks the pending jobs that are due; every replica polls, a job is checked by one of them at a time. */
  poll (): Promise<void>
  /** Called once per job billed, by the one replica that records it (the metrics count it there). */
  onBilled (listener: (facts: BilledFacts) => void): void
  close (): Promise<void>
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
  /** how often pending jobs are checked, and how long a check holds a job from the other replicas */
  intervalMs: number
  /** jobs claimed by one poll */
  claimSize?: number
}

/**
 * Bills each batch job once, when it ends (MISTRAL-NOTES §2.6): its output lines' usage, summed, at the batch
 * discount, as ONE usage record `batch:<job id>`. State is in `watched_jobs`, so a restart loses nothing. Any number
 * of replicas may check the same job; it still ends in one record: the recorder is idempotent by request id, and
 * only the check that turns the job from pending to recorded — which it does only once the record is in the ledger —
 * adds the cost to the spend counters.
 */
export function createBatchWatcher (options: WatcherOptions): BatchWatcher {
  const { db, usage, prices, keys, workspaces, tokens, admission, upstream, log, intervalMs } = options
  const claimSize = options.claimSize ?? 20
  let polling: Promise<void> | undefined
  // checks started by clients' reads, so that close() waits for them too
  const reading = new Set<Promise<void>>()
  const billedListeners: Array<(facts: BilledFacts) => void> = []
  let closed = false
  const timer = setInterval(() => { void poll() }, intervalMs)
  timer.unref()

  /**
   * Takes the pending jobs that match, for one check: `checked_at` moves CHECK_LEASE_MS ahead while the check runs,
   * then back to when it ended. A job is thus never checked by two replicas at once (unless a check outlives its
   * lease), nor polled again before `intervalMs` has passed; SKIP LOCKED: two polls at once take different jobs.
   */
  async function claim (where: SQL | undefined, limit: number): Promise<WatchedJob[]> {
    const due = db.select({ jobId: watchedJobs.jobId }).from(watchedJobs)
      .where(and(eq(watchedJobs.status, 'pending'), where))
      .orderBy(sql`${watchedJobs.checkedAt} asc nulls first`, asc(watchedJobs.createdAt))
      .limit(limit)
      .for('update', { skipLocked: true })
    return db.update(watchedJobs).set({ checkedAt: sql`now() + ${CHECK_LEASE_MS} * interval '1 millisecond'` })
      .where(inArray(watchedJobs.jobId, due)).returning()
  }

  async function poll (): Promise<void> {
    if (closed) return
    polling ??= (async () => {
      const stale = sql`now() - ${intervalMs} * interval '1 millisecond'`
      const jobs = await claim(or(isNull(watchedJobs.checkedAt), lt(watchedJobs.checkedAt, stale)), claimSize)
      for (const job of jobs) {
        if (closed) break
        await check(job, undefined)
      }
    })().catch((err: unknown) => log.warn({ err }, 'batch jobs poll failed; trying again at the next interval'))
      .finally(() => { polling = undefined })
    return polling
  }

  /** One check of a claimed job: reads it (unless a client's read just showed it) and, if it has ended, bills it. */
  async function check (job: WatchedJob, shown: Record<string, unknown> | undefined): Promise<void> {
    try {
      await checkClaimed(job, shown)
    } catch (err) {
      log.warn({ err, job: job.jobId }, 'batch job check failed; trying again at the next interval')
    } finally {
      await db.update(watchedJobs).set({ checkedAt: sql`now()` })
        .where(and(eq(watchedJobs.jobId, job.jobId), eq(watchedJobs.status, 'pending')))
        .catch((err: unknown) => log.warn({ err, job: job.jobId }, 'batch job lease not released; it expires'))
    }
  }

  async function checkClaimed (job: WatchedJob, shown: Record<string, unknown> | undefined): Promise<void> {
    const key = await keys.resolve(job.workspaceId, job.keyName)
    if (!key) {
      log.warn({ job: job.jobId, key: job.keyName }, 'batch job pending: its Mistral key is gone')
      return
    }
    const upstreamJob = shown ?? await upstream.job(key.secret, job.jobId, false)
    if (!upstreamJob) {
      // deleted upstream before it was read: there is nothing left to bill from
      log.warn({ job: job.jobId }, 'batch job not found upstream; it will not be billed')
      await finish(job, 'failed', 'NOT_FOUND', new Date())
      return
    }
    const status = String(upstreamJob.status)
    if (!TERMINAL_STATUSES.has(status)) {
      await db.update(watchedJobs).set({ upstreamStatus: status }).where(eq(watchedJobs.jobId, job.jobId))
      return
    }
    const totals = await readTotals(key.secret, job.jobId, upstreamJob)
    const completedAt = typeof upstreamJob.completed_at === 'number'
      ? new Date(upstreamJob.completed_at * 1000)
      : new Date()
    if (totals.succeeded === 0) {
      // Mistral bills answered requests only: a job that answered none costs nothing and leaves no record
      await finish(job, 'failed', status, completedAt)
      return
    }
    await bill(job, upstreamJob, status, totals, completedAt)
  }

  /** The output file when there is one, else the results inline (`outputs`, asked for with `inline=true`). */
  async function readTotals (secret: string, jobId: string, job: Record<string, unknown>): Promise<BatchTotals> {
    const totals = emptyTotals()
    if (typeof job.output_file === 'string') {
      await addJsonl(totals, await upstream.fileContent(secret, job.output_file))
      return totals
    }
    const outputs = Array.isArray(job.outputs) ? job.outputs : (await upstream.job(secret, jobId, true))?.outputs
    for (const line of Array.isArray(outputs) ? outputs : []) addLine(totals, line)
    return totals
  }

  async function bill (job: WatchedJob, upstreamJob: Record<string, unknown>, status: string, totals: BatchTotals,
    completedAt: Date) {
    const workspace = await workspaces.find(job.workspaceId)
    if (!workspace) {
      await finish(job, 'failed', status, completedAt)
      return
    }
    const family = familyOfEndpoint(job.endpoint ?? String(upstreamJob.endpoint))
    const model = job.model ?? (typeof upstreamJob.model === 'string' ? upstreamJob.model : undefined) ?? totals.model
    const price = family && model ? prices.resolve(model, family, workspace.currency) : undefined
    if (!price) log.warn({ job: job.jobId, model }, 'batch job has no price in the book: recorded at zero cost')
    const units = totals.units
    const n = (unit: string) => units[unit] ?? 0
    const metered: MeteredUsage = {
      promptTokens: n('promptTokens'),
      cachedTokens: n('cachedTokens'),
      completionTokens: n('completionTokens'),
      audioSeconds: n('audioSeconds'),
      pages: n('pages') - totals.annotatedPages,
      characters: n('characters')
    }
    let listMicros = 0
    let billedMicros = 0
    if (price && family) {
      const options = { family, markupBps: workspace.markupBps, batch: true }
      const plain = costOf(metered, price, options)
      listMicros = plain.listMicros
      billedMicros = plain.billedMicros
      if (totals.annotatedPages > 0) {
        // annotated OCR pages have a price of their own
        const annotated = costOf({ ...zeroUnits, pages: totals.annotatedPages }, price, { ...options, annotated: true })
        listMicros += annotated.listMicros
        billedMicros += annotated.billedMicros
      }
    }
    const createdAt = typeof upstreamJob.created_at === 'number'
      ? upstreamJob.created_at * 1000
      : job.createdAt.getTime()
    const record: UsageRecord = {
      requestId: `batch:${job.jobId}`,
      workspaceId: job.workspaceId,
      tokenId: job.tokenId,
      keyName: job.keyName,
      operation: 'batch',
      model: model ?? null,
      pricedModel: price?.model ?? null,
      promptTokens: metered.promptTokens,
      cachedTokens: metered.cachedTokens,
      completionTokens: metered.completionTokens,
      totalTokens: n('totalTokens'),
      connectorTokens: n('connectorTokens'),
      pages: n('pages'),
      audioSeconds: metered.audioSeconds,
      characters: metered.characters,
      listCostMicros: listMicros,
      billedCostMicros: billedMicros,
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
    usage.record(record)
    await usage.flush()
    if (!await finish(job, 'recorded', status, completedAt)) return
    const facts: BilledFacts = {
      workspace: workspace.slug,
      operation: 'batch',
      model: price?.model,
      status: record.status,
      inputTokens: metered.promptTokens,
      outputTokens: metered.completionTokens,
      billedMicros
    }
    for (const listener of billedListeners) listener(facts)
    const token = job.tokenId ? await tokens.find(job.workspaceId, job.tokenId) : undefined
    await admission.charge({
      id: record.requestId,
      workspace: { id: workspace.id, timezone: workspace.timezone, caps: workspace.caps as SpendCaps },
      token: token ? { id: token.id, caps: token.caps as SpendCaps } : undefined,
      cost: billedMicros,
      at: completedAt.getTime()
    })
    log.info({ job: job.jobId, workspace: workspace.slug, model, requests: totals.succeeded, billedMicros },
      'batch job billed')
  }

  /**
   * Ends the watch, once: true for the one check that does it. `recorded` only once the ledger has the record — if
   * it is still in the spool, the job stays pending and the next check records it again, which changes nothing.
   */
  async function finish (job: WatchedJob, outcome: 'recorded' | 'failed', status: string, completedAt: Date) {
    const recorded = outcome === 'recorded'
      ? sql`exists (select 1 from ${usageRecords} where ${usageRecords.requestId} = ${`batch:${job.jobId}`})`
      : undefined
    const done = await db.update(watchedJobs)
      .set({ status: outcome, upstreamStatus: status, completedAt, checkedAt: sql`now()` })
      .where(and(eq(watchedJobs.jobId, job.jobId), eq(watchedJobs.status, 'pending'), recorded))
      .returning({ jobId: watchedJobs.jobId })
    return done.length === 1
  }

  return {
    async watch (job) {
      await db.insert(watchedJobs).values(job).onConflictDoNothing({ target: watchedJobs.jobId })
    },

    async seen (workspaceId, shown) {
      const job = shown as Record<string, unknown> | null
      if (job === null || typeof job !== 'object' || typeof job.id !== 'string') return
      if (closed || !TERMINAL_STATUSES.has(String(job.status))) return
      // a job being checked elsewhere is left to that check
      const free = or(isNull(watchedJobs.checkedAt), lte(watchedJobs.checkedAt, sql`now()`))
      const mine = and(eq(watchedJobs.jobId, job.id), eq(watchedJobs.workspaceId, workspaceId))
      const [claimed] = await claim(and(mine, free), 1)
      if (!claimed) return
      const checking = check(claimed, job)
      reading.add(checking)
      await checking.finally(() => reading.delete(checking))
    },

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

const zeroUnits: MeteredUsage = {
  promptTokens: 0, cachedTokens: 0, completionTokens: 0, audioSeconds: 0, pages: 0, characters: 0
}
