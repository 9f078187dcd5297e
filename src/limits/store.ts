/** One scope of limits: the workspace, a token, or a model within the workspace. */
export interface ScopeInput {
  /** key prefix, e.g. `tmt:{ws:<id>}:w` */
  p: string
  rpm?: number
  rpd?: number
  tpm?: number
  conc?: number
  /** spend caps in micro-units: d(ay), m(onth), l(ifetime) */
  caps?: Partial<Record<'d' | 'm' | 'l', number>>
  /** the percentages of its caps a refusal reports (absent: DEFAULT_THRESHOLDS, which the gateway then leaves out) */
  th?: number[]
}

export interface PeriodInput {
  id: string
  s: number
  e: number
}

/** What a call may cost at worst, worked out by the proxy from the request and the price book. */
export interface Quote {
  /** billed micro-units of the worst case: prompt estimate + maxTokens × n */
  cost: number
  /** billed micro-units of the prompt alone */
  promptCost: number
  /** billed micro-units of a million output tokens across the n choices; 0 when output is not priced by token */
  outputPerMillion: number
  maxTokens: number
  n: number
  promptTokens: number
}

export interface AdmitInput extends Quote {
  id: string
  scopes: ScopeInput[]
  day: PeriodInput
  month: PeriodInput
  /** whether max_tokens may be lowered to what the budget affords */
  clamp: boolean
  /** ms a reservation and its leases live unless renewed */
  lease: number
  /**
   * When none of the workspace's state is in the store (lost, or new here): how long replicas get to put back what
   * their calls in flight hold before the ledger is read. Absent: seed at once.
   */
  quiet?: number
}

export type DenyReason = 'rpm' | 'rpd' | 'tpm' | 'tpm_too_large' | 'concurrency' | 'cap_d' | 'cap_m' | 'cap_l'

/** limit, remaining, ms until reset */
export type RateInfo = [number, number, number]

export type AdmitResult =
  | { kind: 'admitted', now: number, maxTokens: number, cost: number, tokens: number, budgetLeft: number | null,
    rpm?: RateInfo, tpm?: RateInfo }
  | { kind: 'denied', reason: DenyReason, scope: number, retryAfterMs: number | null, now: number,
    /** a cap denial where only reservations of calls in flight hold the room: worth waiting for */
    busy?: boolean
    /**
     * threshold crossings the refusal recorded, as a settlement's are: of every cap of the call, each threshold its
     * settled spend is at or past and that was not recorded in the period (none while calls in flight hold the room).
     * A cap's 100 % is its being reached: less than a micro-unit of its settled room left, not merely too little for
     * this call
     */
    crossed?: Array<[string, number]> }
  | { kind: 'seed', missing: Array<{ scope: number, kind: 'd' | 'm' | 'l', key: string }>,
    /** the workspace's state was lost: put back what this replica holds, wait waitMs, ask again */
    recovery?: { since: number, waitMs: number } }
  | { kind: 'period', now: number }

/** What an admitted call holds, so that a replica can put it back if the store lost it. */
export interface HeldCall {
  id: string
  /** reserved micro-units */
  cost: number
  /** spend keys the cost is reserved under */
  spend: string[]
  /** concurrency lease sets (`P:conc`) it holds a lease in */
  conc: string[]
}

/**
 * A spend counter to seed: the ledger's sum (without the calls held at the snapshot), which of the calls vouched for
 * on it at the snapshot the sum holds, and which it was asked about (the vouched ids of the snapshot).
 */
export type SeedEntry = [key: string, ledger: number, recorded: string[], asked: string[]]

/** What a re-seed reads of the store at one instant, before it asks the ledger. */
export interface SeedSnapshot {
  /** per spend key: request ids of the calls that settled into it while it was missing */
  vouched: string[][]
  /** request ids of the calls holding a reservation: their settlement will count them, so the ledger sum must not */
  held: string[]
}

export interface SettleInput {
  id: string
  /** billed micro-units Mistral's report comes to */
  cost: number
  tokens: number
  reservedTokens: number
  /** every spend key the call was admitted under, with its cap and, where its scope sets them, its thresholds */
  spend: Array<[key: string, cap: number, thresholds?: number[]]>
  /** the thresholds of a spend key that names none */
  thresholds: number[]
}

/**
 * The shared state of admission: Redis for any number of replicas, or process memory for one.
 * Both make the same decisions (test/integration/limits.contract.test.ts runs one suite against each).
 */
export interface AdmissionStore {
  readonly kind: 'redis' | 'memory'
  admit (prefix: string, input: AdmitInput): Promise<AdmitResult>
  /**
   * A workspace just created: none of its calls can be in flight, so its first admission seeds at once instead of
   * waiting `quiet` ms for replicas to put back what a loss took.
   */
  markNew (prefix: string): Promise<void>
  /** The calls vouched for on each (missing) spend key and the calls holding a reservation, at one instant. */
  snapshot (prefix: string, keys: string[]): Promise<SeedSnapshot>
  /**
   * set-if-absent: spend counters re-seeded from the ledger, plus what settled into each while it was missing
   * (vouched for by request id) unless the ledger sum holds that call. False, with nothing written, when a call was
   * vouched for that the snapshot (`held`, with each entry's `asked`) did not know: take a new snapshot.
   */
  seed (prefix: string, entries: SeedEntry[], held: string[]): Promise<boolean>
  /**
   * threshold crossings: [spend key, percent] recorded for the first time. `freesSlot`: the call held a concurrency
   * slot, which a store that holds settlements back (to share a write) must not keep long
   */
  settle (prefix: string, input: SettleInput, freesSlot?: boolean): Promise<Array<[string, number]>>
  /** extends the calls' leases; a call the store lost (and that has not settled) is put back */
  renew (prefix: string, calls: HeldCall[], lease: number): Promise<void>
  /** sends whatever the store holds back (settlements waiting to share a write), and waits for their answers */
  flush (): Promise<void>
  /** read-only: what the scopes have used (a spend key never seeded reads settled -1) */
  inspect (prefix: string, scopes: Array<{ p: string, spend: string[] }>): Promise<Inspection>
  /**
   * the workspace is deleted: everything the store holds for it goes now. Its spend counters and epoch would otherwise
   * stay for days or for good, and its hour of settled ids expire as one large key
   */
  forget (prefix: string): Promise<void>
}

export interface ScopeUsage {
  rpm: number
  rpmReset: number
  rpd: number
  tpm: number
  conc: number
  /** [key, settled (-1: not in the store), reserved] */
  spend: Array<[string, number, number]>
}

export interface Inspection {
  now: number
  scopes: ScopeUsage[]
}

export function decodeAdmit (reply: unknown[]): AdmitResult {
  const code = Number(reply[0])
  if (code === 1) {
    const info = JSON.parse(String(reply[6])) as { rpm?: RateInfo, tpm?: RateInfo }
    const left = Number(reply[5])
    return {
      kind: 'admitted',
      now: Number(reply[1]),
      maxTokens: Number(reply[2]),
      cost: Number(reply[3]),
      tokens: Number(reply[4]),
      budgetLeft: left < 0 ? null : left,
      rpm: info.rpm,
      tpm: info.tpm
    }
  }
  if (code === 0) {
    const retry = Number(reply[3])
    const denied: AdmitResult = {
      kind: 'denied',
      reason: reply[1] as DenyReason,
      scope: Number(reply[2]) - 1,
      retryAfterMs: retry < 0 ? null : retry,
      now: Number(reply[4]),
      busy: Number(reply[5]) === 1
    }
    if (reply[6]) denied.crossed = JSON.parse(String(reply[6])) as Array<[string, number]>
    return denied
  }
  if (code === 2) {
    const missing = JSON.parse(String(reply[1])) as Array<[number, 'd' | 'm' | 'l', string]>
    const result: AdmitResult =
      { kind: 'seed', missing: missing.map(([scope, kind, key]) => ({ scope: scope - 1, kind, key })) }
    if (reply.length > 2) result.recovery = { since: Number(reply[2]), waitMs: Number(reply[3]) }
    return result
  }
  return { kind: 'period', now: Number(reply[1]) }
}
