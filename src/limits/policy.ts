/** Rate limits of a workspace, a token, or a model within a workspace. Absent: no limit. */
export interface RateLimits {
  rpm?: number
  rpd?: number
  tpm?: number
  concurrency?: number
}

export interface WorkspaceLimits extends RateLimits {
  /** per-model overrides, keyed by the price book's canonical model id */
  models?: Record<string, RateLimits>
}

/** Spend caps in micro-units of the workspace currency, over calendar periods of the workspace time zone. */
export interface SpendCaps {
  daily?: number
  monthly?: number
  lifetime?: number
  /** percentages of each cap recorded once per period when crossed (default 50, 80, 100) */
  thresholds?: number[]
  /** lower max_tokens to what the budget affords instead of refusing (default true) */
  clampMaxTokens?: boolean
}

export const DEFAULT_THRESHOLDS = [50, 80, 100]

export const hasRates = (limits: RateLimits | undefined) =>
  limits !== undefined && (limits.rpm !== undefined || limits.rpd !== undefined || limits.tpm !== undefined ||
    limits.concurrency !== undefined)

export const hasCaps = (caps: SpendCaps | undefined) =>
  caps !== undefined && (caps.daily !== undefined || caps.monthly !== undefined || caps.lifetime !== undefined)
