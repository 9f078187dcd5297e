import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from '../db/client.js'
import type { UsageRecord } from '../db/schema.js'
import { sqlState } from '../db/sql-state.js'
import { insertUsageRecords } from './ledger-insert.js'
import type { Spool } from './spool.js'

export interface UsageRecorder {
  /** Spools what to bill for a call that has started, should the gateway die before `record` (never queued). */
  begin (provisional: UsageRecord): void
  /**
   * Queues one record for the ledger and spools it; never waits on PostgreSQL. Neither this nor `begin` throws: a
   * spool that cannot be written loses the copy on disk, not the record.
   */
  record (row: UsageRecord): void
  /** Writes everything queued so far (tests, shutdown, a re-seed of the spend counters). */
  flush (): Promise<void>
  /** records not yet in the ledger */
  pending (): number
  /** how long the oldest of them has waited, in ms (0 when none waits) */
  oldestPendingMs (): number
  /** false since the spool's last write failed: records still reach PostgreSQL, without a copy on disk */
  spoolWritable (): boolean
  close (): Promise<void>
}

interface RecorderOptions {
  db: Database
  log: FastifyBaseLogger
  spool: Spool
  intervalMs?: number
  batchSize?: number
  /** how often to look for the spools of gateways that died */
  orphanScanMs?: number
}

/** How often a recorder looks for the spools of gateways that died, by default. */
export const ORPHAN_SCAN_MS = 10_000

/**
 * Batches ledger writes off the request path, through a durable spool (src/usage/spool.ts): a record is on disk
 * as it is queued, and leaves the disk only once its batch is committed. A write is idempotent by request id, so
 * a batch retried after a failure, or replayed after a crash, never counts a call twice. While PostgreSQL is down,
 * records wait in memory and on disk and are written when it answers again.
 */
export function createUsageRecorder ({
  db, log, spool, intervalMs = 200, batchSize = 500, orphanScanMs = ORPHAN_SCAN_MS
}: RecorderOptions): UsageRecorder {
  let queue: UsageRecord[] = []
  // when each record of the queue was queued (performance.now(), in the queue's order): the age of the oldest tells a
  // write that is stuck from a queue that is merely busy
  let queuedAt: number[] = []
  let writing: Promise<void> | undefined
  let failing = false
  let spoolFailing = false
  // the segment each call in flight began in
  const begun = new Map<string, number>()

  function adoptOrphans () {
    const { records, unfinished, broken } = readSpooled(spool.claimOrphans())
    queue.push(...records, ...unfinished)
    const now = performance.now()
    for (let i = queuedAt.length; i < queue.length; i++) queuedAt.push(now)
    if (records.length + unfinished.length + broken > 0) {
      log.warn({ records: records.length, unfinished: unfinished.length, broken },
        'replaying the usage spool of a gateway that stopped')
    }
  }
  adoptOrphans()

  const timer = setInterval(() => { void flush() }, intervalMs)
  timer.unref()
  const scan = setInterval(adoptOrphans, orphanScanMs)
  scan.unref()

  async function writeQueued () {
    // every record of the segments sealed here is in the queue: once the queue is empty they are all in the ledger
    await spool.sealSynced().catch((err: unknown) => {
      // the records are still in the page cache: a crash keeps them, only a power loss could not
      log.error({ err }, 'usage spool sync failed')
    })
    while (queue.length > 0) {
      const batch = queue.slice(0, batchSize)
      try {
        await insertUsageRecords(db, batch)
      } catch (err) {
        if (!refusedRecord(err) || !(await insertOneByOne(batch))) {
          if (!failing) log.error({ err, pending: queue.length }, 'usage write failed: records wait in the spool')
          failing = true
          return
        }
      }
      queue = queue.slice(batch.length)
      queuedAt = queuedAt.slice(batch.length)
    }
    if (failing) log.info('usage writes resumed: the spool is drained')
    failing = false
    await spool.release()
  }

  /**
   * A batch PostgreSQL refused for what one of its records holds, written record by record: a record it refuses on its
   * own is set aside in the log, whole (ids, model, counts and costs: no secret), for the operator to bill by hand,
   * rather than holding back every record after it, on this replica and on any that replays its spool. False when
   * the database stopped answering meanwhile: the batch waits, as any other.
   */
  async function insertOneByOne (batch: UsageRecord[]): Promise<boolean> {
    for (const record of batch) {
      try {
        await insertUsageRecords(db, [record])
      } catch (err) {
        if (!refusedRecord(err)) return false
        log.error({ err, record }, 'usage record refused by PostgreSQL: set aside, not in the ledger')
      }
    }
    return true
  }

  /**
   * Appends a line to the spool; the segment's number, or undefined when the disk refused it. A record is queued
   * whatever the spool does: it only loses its copy on disk (a crash before its batch is written would lose it), and
   * a throw here would end a call's metering, or the process from a stream's event listener.
   */
  function spooled (kind: string, row: UsageRecord): number | undefined {
    try {
      const segment = spool.append(kind + JSON.stringify(row))
      if (spoolFailing) log.info('usage spool writable again')
      spoolFailing = false
      return segment
    } catch (err) {
      if (!spoolFailing) {
        log.error({ err }, 'usage spool write failed: records go to PostgreSQL with no copy on disk until it is ' +
          'writable again')
      }
      spoolFailing = true
      return undefined
    }
  }

  function flush (): Promise<void> {
    writing ??= writeQueued().finally(() => { writing = undefined })
    return writing
  }

  return {
    begin (provisional) {
      const segment = spooled(BEGIN, provisional)
      if (segment === undefined) return
      spool.pin(segment)
      begun.set(provisional.requestId, segment)
    },
    record (row) {
      queue.push(row)
      queuedAt.push(performance.now())
      spooled(RECORD, row)
      const segment = begun.get(row.requestId)
      if (segment !== undefined) {
        begun.delete(row.requestId)
        spool.unpin(segment)
      }
      if (queue.length >= batchSize) void flush()
    },
    async flush () {
      // a flush already under way may have started before the latest records were queued
      await flush()
      if (queue.length > 0) await flush()
    },
    pending: () => queue.length,
    oldestPendingMs: () => queuedAt.length === 0 ? 0 : performance.now() - queuedAt[0],
    spoolWritable: () => !spoolFailing,
    async close () {
      clearInterval(timer)
      clearInterval(scan)
      await this.flush()
      spool.close()
    }
  }
}

// what PostgreSQL says of a value it cannot store: text it cannot hold (a NUL, broken JSON or Unicode), a number or a
// date out of range, a null or a value a constraint refuses. Anything else is no fault of a record's: its batch waits,
// as while PostgreSQL is down
const REFUSED_VALUE = new Set(['22001', '22003', '22008', '22009', '22021', '22P02', '22P05', '23502', '23514'])

/** PostgreSQL refused the statement for a value in it, not because it could not be reached. */
function refusedRecord (err: unknown): boolean {
  const code = sqlState(err)
  return code !== undefined && REFUSED_VALUE.has(code)
}

// a spooled line is a call's start (what to bill should the gateway die before its end) or its record
const BEGIN = 'b'
const RECORD = 'r'

/** The records of a dead gateway's spool, and a provisional record for each call it began but never ended. */
export function readSpooled (lines: string[]) {
  const ended = new Map<string, UsageRecord>()
  const started = new Map<string, UsageRecord>()
  let broken = 0
  for (const line of lines) {
    let row: UsageRecord
    try {
      row = JSON.parse(line.slice(1)) as UsageRecord
    } catch {
      // only the last line of a segment can be cut, by a crash in the middle of its write
      broken += 1
      continue
    }
    row.createdAt = row.createdAt === undefined ? undefined : new Date(row.createdAt)
    if (line.startsWith(RECORD)) ended.set(row.requestId, row)
    else if (line.startsWith(BEGIN)) started.set(row.requestId, row)
    else broken += 1
  }
  const unfinished = [...started.values()].filter((row) => !ended.has(row.requestId))
  return { records: [...ended.values()], unfinished, broken }
}
