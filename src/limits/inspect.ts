import { GatewayError, retryAfterHeaders } from '../errors.js'
import { formatMoney } from '../pricing/money.js'
import type { LedgerSums } from './admission.js'
import { calendarPeriods, type CalendarPeriods } from './periods.js'
import { hasCaps, type RateLimits, type SpendCaps } from './policy.js'
import type { AdmissionStore, ScopeUsage } from './store.js'

export interface ScopeToInspect {
  name: string
  /** key prefix, as admission builds it */
  p: string
  limits: RateLimits
  caps?: SpendCaps
  /** ledger filter for caps not yet in the store */
  tokenId?: string
}

/**
 * Each limit and cap of some scopes with what is used, reserved and left, and when it resets
 * (`GET /admin/v1/workspaces/{ws}/limits`). Read-only: nothing is seeded or taken.
 */
export async function inspectLimits ({ store, ledger, workspaceId, timezone, scopes }: {
  store: AdmissionStore
  ledger: LedgerSums
  workspaceId: string
  timezone: string
  scopes: ScopeToInspect[]
}) {
  // computed for a daily or monthly cap only: a zone this replica's Node does not know (time_zone_unknown) then fails
  // the inspection of a workspace with such a cap, not of every workspace in that zone
  let periods: CalendarPeriods | undefined
  const calendar = () => (periods ??= calendarPeriods(Date.now(), timezone))
  const capKeys = (scope: ScopeToInspect) => {
    const keys: Array<{ kind: 'daily' | 'monthly' | 'lifetime', key: string, cap: number, from?: number, to?: number }> = []
    const caps = scope.caps
    if (!caps || !hasCaps(caps)) return keys
    if (caps.daily !== undefined) {
      const { day } = calendar()
      keys.push({ kind: 'daily', key: `${scope.p}:spend:d:${day.id}`, cap: caps.daily, from: day.start, to: day.end })
    }
    if (caps.monthly !== undefined) {
      const { month } = calendar()
      keys.push({
        kind: 'monthly', key: `${scope.p}:spend:m:${month.id}`, cap: caps.monthly, from: month.start, to: month.end
      })
    }
    if (caps.lifetime !== undefined) keys.push({ kind: 'lifetime', key: `${scope.p}:spend:l`, cap: caps.lifetime })
    return keys
  }
  const prefix = `tmt:{ws:${workspaceId}}`
  const inspection = await store.inspect(prefix, scopes.map((scope) => ({ p: scope.p, spend: capKeys(scope).map((entry) => entry.key) })))
    .catch((cause: unknown) => {
      throw new GatewayError(503, 'server_error', 'limits_unavailable',
        'What the limits and caps have used cannot be read right now (the shared store is unreachable)',
        { headers: retryAfterHeaders(5_000), cause })
    })
  const out: Record<string, unknown> = {}
  for (const [i, scope] of scopes.entries()) {
    const usage = inspection.scopes[i] as ScopeUsage
    const limits: Record<string, unknown> = {}
    const rate = (limit: number | undefined, used: number, resetMs: number) => limit === undefined
      ? undefined
      : { limit, used, remaining: Math.max(0, limit - used), resetsInMs: Math.max(0, resetMs) }
    limits.rpm = rate(scope.limits.rpm, usage.rpm, usage.rpmReset)
    limits.rpd = rate(scope.limits.rpd, usage.rpd, 3_600_000 - (inspection.now % 3_600_000))
    limits.tpm = rate(scope.limits.tpm, usage.tpm, 1000 - (inspection.now % 1000))
    limits.concurrency = rate(scope.limits.concurrency, usage.conc, 0)
    const caps: Record<string, unknown> = {}
    for (const [j, entry] of capKeys(scope).entries()) {
      const [, stored, reserved] = usage.spend[j] ?? ['', -1, 0]
      const settled = stored >= 0 ? stored : await ledger.spent(workspaceId, scope.tokenId, entry.from, entry.to)
      caps[entry.kind] = {
        cap: formatMoney(entry.cap),
        settled: formatMoney(settled),
        reserved: formatMoney(reserved),
        left: formatMoney(Math.max(0, entry.cap - settled - reserved)),
        resetsAt: entry.to === undefined ? null : new Date(entry.to).toISOString()
      }
    }
    out[scope.name] = { limits: Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== undefined)), caps }
  }
  return out
}
