import { and, eq, isNull, sql, type AnyColumn, type SQL } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from '../db/client.js'
import { usageRecords, watchedJobs, type WatchedJob } from '../db/schema.js'
import type { Admission, Charge } from '../limits/admission.js'
import type { SpendCaps } from '../limits/policy.js'
import type { TokenStore } from '../tenancy/tokens.js'
import type { WorkspaceStore } from '../tenancy/workspaces.js'

/**
 * A billed batch job's cost, on its way to the spend counters. The job's watch says whether they took it
 * (`charged_at`), not the memory of the replica that billed it: a charge Redis did not take (a reconnect, the command
 * timeout) is sent again by any replica's poll, after a restart too. The counters count a charge once per request id
 * (for the hour Redis remembers settled ids), so one sent again after its first try did arrive changes nothing.
 */
export interface BatchCharger {
  /**
   * Charges a job just recorded (undefined: it has nothing to charge). Never throws: a charge the counters do not
   * take, or whose note in the watch PostgreSQL does not take, is left to the next poll, which sends it again.
   */
  charge (jobId: string, charge: Charge | undefined): Promise<void>
  /**
   * Charges a recorded job whose charge was not noted before, from its record in the ledger. Throws when PostgreSQL
   * does not answer.
   */
  chargeRecorded (job: WatchedJob): Promise<void>
}

/**
 * A batch job's one record in the ledger, by request id, which is also its charge's id in the spend counters: the
 * watch's job id behind a prefix of its own, which no proxied call's request id has.
 */
export function batchRequestId (jobId: string): string {
  return BATCH_PREFIX + jobId
}

const BATCH_PREFIX = 'batch:'

/**
 * A billed job's charge to its workspace's (and token's) spend counters; undefined for a deleted workspace, whose
 * state in Redis was forgotten: a charge would bring its counters back.
 */
export function chargeOf (requestId: string,
  workspace: { id: string, timezone: string, caps: unknown, deletedAt: Date | null },
  token: { id: string, caps: unknown } | undefined, cost: number, at: Date): Charge | undefined {
  if (workspace.deletedAt !== null) return undefined
  return {
    id: requestId,
    workspace: { id: workspace.id, timezone: workspace.timezone, caps: workspace.caps as SpendCaps },
    token: token ? { id: token.id, caps: token.caps as SpendCaps } : undefined,
    cost,
    at: at.getTime()
  }
}

interface ChargerOptions {
  db: Database
  admission: Admission
  workspaces: WorkspaceStore
  tokens: TokenStore
  log: FastifyBaseLogger
}

export function createBatchCharger ({ db, admission, workspaces, tokens, log }: ChargerOptions): BatchCharger {
  async function charged (jobId: string) {
    await db.update(watchedJobs).set({ chargedAt: sql`now()` })
      .where(and(eq(watchedJobs.jobId, jobId), isNull(watchedJobs.chargedAt)))
  }

  async function send (jobId: string, what: Charge) {
    try {
      await admission.charge(what)
    } catch (err) {
      log.warn({ err, job: jobId }, 'batch job charge not taken by the spend counters; the next poll sends it again')
      return
    }
    await charged(jobId)
  }

  return {
    async charge (jobId, what) {
      try {
        await (what ? send(jobId, what) : charged(jobId))
      } catch (err) {
        log.warn({ err, job: jobId },
          'batch job charge not noted in its watch; the next poll sends it again, which counts it once')
      }
    },

    async chargeRecorded (job) {
      const [record] = await db.select({ cost: usageRecords.billedCostMicros, at: usageRecords.createdAt })
        .from(usageRecords).where(eq(usageRecords.requestId, batchRequestId(job.jobId)))
      // a watch is recorded only once the ledger holds the record; should it be gone, there is nothing to charge from
      if (!record) return await charged(job.jobId)
      const workspace = await workspaces.find(job.workspaceId, { deleted: true })
      const token = job.tokenId ? await tokens.find(job.workspaceId, job.tokenId) : undefined
      const charge = workspace && chargeOf(batchRequestId(job.jobId), workspace, token, record.cost, record.at)
      await (charge ? send(job.jobId, charge) : charged(job.jobId))
    }
  }
}

/**
 * The ledger records of batch jobs whose charge the spend counters have not taken yet: a seed of the counters from the
 * ledger leaves them out of its sum (and out of the calls it says the ledger holds), as their charge will count them,
 * whether it comes before the seed (vouched for) or after it.
 */
export function awaitingCharge (requestId: AnyColumn): SQL {
  return sql`(${requestId} like ${BATCH_PREFIX + '%'} and exists (select 1 from ${watchedJobs}
    where ${watchedJobs.jobId} = substr(${requestId}, ${BATCH_PREFIX.length + 1}) and ${watchedJobs.chargedAt} is null
    and ${watchedJobs.status} <> 'failed'))`
}
