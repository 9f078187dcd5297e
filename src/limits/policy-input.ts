import { badRequest } from '../errors.js'
import { formatMoney, parseMoney } from '../pricing/money.js'
import type { RateLimits, SpendCaps, WorkspaceLimits } from './policy.js'

// The admin API speaks decimal strings in the workspace currency ("25.00"); inside, everything is micro-units.

export interface RateLimitsInput {
  rpm?: number | null
  rpd?: number | null
  tpm?: number | null
  concurrency?: number | null
}

export interface WorkspaceLimitsInput extends RateLimitsInput {
  models?: Record<string, RateLimitsInput | null> | null
}

export interface SpendCapsInput {
  daily?: string | null
  monthly?: string | null
  lifetime?: string | null
  thresholds?: number[] | null
  clampMaxTokens?: boolean | null
}

const RATE_FIELDS = ['rpm', 'rpd', 'tpm', 'concurrency'] as const
const CAP_FIELDS = ['daily', 'monthly', 'lifetime'] as const

/** Merges a PATCH into the current limits: a field set to null is removed, an absent one is kept. */
export function mergeRateLimits (current: RateLimits, patch: RateLimitsInput, where = 'limits'): RateLimits {
  const next: RateLimits = { ...current }
  for (const field of RATE_FIELDS) {
    const value = patch[field]
    if (value === undefined) continue
    if (value === null) delete next[field]
    else if (!Number.isSafeInteger(value) || value < 1) throw badRequest(`${where}.${field} must be a positive integer or null`, { param: `${where}.${field}` })
    else next[field] = value
  }
  return next
}

export function mergeWorkspaceLimits (current: WorkspaceLimits, patch: WorkspaceLimitsInput): WorkspaceLimits {
  const { models: currentModels, ...rates } = current
  const next: WorkspaceLimits = mergeRateLimits(rates, patch)
  let models = { ...(currentModels ?? {}) }
  if (patch.models === null) models = {}
  for (const [model, limits] of Object.entries(patch.models ?? {})) {
    if (limits === null) delete models[model]
    else models[model] = mergeRateLimits(models[model] ?? {}, limits, `limits.models.${model}`)
  }
  if (Object.keys(models).length > 0) next.models = models
  return next
}

export function mergeSpendCaps (current: SpendCaps, patch: SpendCapsInput): SpendCaps {
  const next: SpendCaps = { ...current }
  for (const field of CAP_FIELDS) {
    const value = patch[field]
    if (value === undefined) continue
    if (value === null) delete next[field]
    else {
      try {
        next[field] = parseMoney(value)
      } catch (err) {
        throw badRequest(`caps.${field}: ${(err as Error).message}`, { param: `caps.${field}` })
      }
    }
  }
  if (patch.thresholds === null) delete next.thresholds
  else if (patch.thresholds !== undefined) {
    if (!patch.thresholds.every((pct) => Number.isInteger(pct) && pct >= 1 && pct <= 100)) {
      throw badRequest('caps.thresholds must be whole percentages from 1 to 100', { param: 'caps.thresholds' })
    }
    next.thresholds = [...new Set(patch.thresholds)].sort((a, b) => a - b)
  }
  if (patch.clampMaxTokens === null) delete next.clampMaxTokens
  else if (patch.clampMaxTokens !== undefined) next.clampMaxTokens = patch.clampMaxTokens
  return next
}

/** Caps as the API shows them: money as decimal strings. */
export function capsView (caps: SpendCaps) {
  return {
    daily: caps.daily === undefined ? null : formatMoney(caps.daily),
    monthly: caps.monthly === undefined ? null : formatMoney(caps.monthly),
    lifetime: caps.lifetime === undefined ? null : formatMoney(caps.lifetime),
    thresholds: caps.thresholds ?? [50, 80, 100],
    clampMaxTokens: caps.clampMaxTokens ?? true
  }
}
