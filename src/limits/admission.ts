import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import { GatewayError, retryAfterHeaders } from '../errors.js'
import type { InvalidationBus } from '../tenancy/invalidation-bus.js'
import { calendarPeriods, type CalendarPeriods } from './periods.js'
import { DEFAULT_THRESHOLDS, hasCaps, hasRates, type RateLimits, type SpendCaps, type WorkspaceLimits } from './policy.js'
import type {
  AdmissionStore, AdmitInput, AdmitResult, DenyReason, HeldCall, Quote, RateInfo, ScopeInput, SeedEntry, SettleInput
} from './store.js'

export type { Quote }

export interface AdmissionSubject {
  requestId: string
  workspace: { id: string, timezone: string, limits: WorkspaceLimits, caps: SpendCaps }
  token: { id: string, limits: RateLimits, caps: SpendCaps }
  /** canonical model id, for per-model limits */
  model: string | undefined
}

/** An admitted call: settle it exactly once, whatever happens. */
export interface Ticket {
  prefix: string
  id: string
  store: AdmissionStore
  /** max_tokens after clamping to the budget, when it was lowered */
  clampedMaxTokens: number | undefined
  reservedTokens: number
  /** micro-units reserved under each spend key */
  reservedCost: number
  /** spend key, cap, thresholds */
  spend: Array<[string, number, number[]]>
  /** lease sets it holds a slot in */
  conc: string[]
  thresholds: number[]
  /** x-ratelimit-* and x-tramontane-budget-remaining for the response */
  headers: Record<string, string>
  /**
   * when the store admitted it, by the store's clock (Redis' for every replica): the instant its calendar periods
   * were chosen by, so the ledger dates the call in the day and month its spend counters hold it in
   */
  admittedAt: number
}

/** A cost known only after the fact: a batch job, billed when it ends (src/usage/batch-watcher.ts). */
export interface Charge {
  /** the usage record's request id: a charge counts once */
  id: string
  workspace: { id: string, timezone: string, caps: SpendCaps }
  token: { id: string, caps: SpendCaps } | undefined
  /** billed micro-units */
  cost: number
  /** when it is billed (ms): the calendar periods it counts in */
  at: number
}

export interface LedgerSums {
  /** billed micro-units settled in [from, to) (the whole ledger when both are undefined) */
  spent (workspaceId: string, tokenId: string | undefined, from?: number, to?: number): Promise<number>
  /**
   * the same sum without the calls of `exclude` (nor the batch jobs whose charge is still to come: it counts them), and
   * which of the request ids `among` it holds, read at one instant
   */
  spentAmong (workspaceId: string, tokenId: string | undefined, from: number | undefined, to: number | undefined,
    among: string[], exclude?: string[]): Promise<{ spent: number, recorded: string[] }>
}

interface AdmissionOptions {
  store: AdmissionStore
  /** in-process rate limits for when the shared store is unreachable */
  fallback: AdmissionStore
  ledger: LedgerSums
  /** writes what this replica has queued, so that a seed from the ledger includes it */
  flushLedger: () => Promise<void>
  /** tells the other replicas that a workspace's state was lost in the shared store (absent: one replica) */
  bus?: InvalidationBus
  /** how long replicas get to put back what their calls in flight hold, after the shared store lost it */
  recoveryMs?: number
  log: FastifyBaseLogger
  leaseMs?: number
  formatMoney: (micros: number) => string
  /** the replica's clock, only a first guess at the calendar period: the store's own time decides */
  clock?: () => number
  /** how long a call waits for in-flight reservations to settle before a spend cap refuses it */
  holdMs?: number
}

export interface Admission {
  readonly store: AdmissionStore
  readonly ledger: LedgerSums
  /** Admits or throws the denial; undefined when no limit or cap applies to the call. */
  admit (subject: AdmissionSubject, quote: Quote): Promise<Ticket | undefined>
  /** Resolves after the first try; one the store did not take is sent again in the background (settleUntilTaken). */
  settle (ticket: Ticket, actual: { cost: number, tokens: number }): Promise<void>
  /**
   * Adds a charge to the spend of every cap of its workspace and token, in the periods it is billed in, once per id
   * (for the hour the store remembers settled ids), each cap crossing its own scope's thresholds. Throws when the
   * store does not take it: it is not sent again here, its caller keeps it (the batch watcher, in the job's watch) and
   * sends it again. A counter not in the store is vouched for, as a settlement is: its seed counts the charge unless
   * the ledger sum holds it.
   */
  charge (charge: Charge): Promise<void>
  /**
   * A workspace just created: its first capped call need not wait for replicas to put back what a loss of the
   * store took, as none of its calls can be in flight. Best effort: without it that call waits `recoveryMs`.
   */
  welcome (workspaceId: string): Promise<void>
  /**
   * A deleted workspace: every key of it in the store goes (its spend counters, rate windows, reservations, settled
   * ids; in Redis also its Mistral keys' cooldowns, which share its prefix), and so does what this replica's fallback
   * limiter holds. This replica stops renewing its calls in flight; each of them, wherever it runs, may still write a
   * little back when it settles (docs/operations.md#redis).
   */
  forget (workspaceId: string): Promise<void>
  /** Called once per period and cap for each threshold crossed (50/80/100 % by default). */
  onThreshold (listener: (crossing: ThresholdCrossing) => void): void
  /** Stops renewing leases; sends the settlements the store still holds and waits for them. */
  close (): Promise<void>
}

/** A spend cap's threshold crossed for the first time in its period (recorded once across replicas). */
export interface ThresholdCrossing {
  workspaceId: string
  /** whose cap: the workspace's, or one token's own */
  scope: 'workspace' | 'token'
  tokenId: string | null
  cap: 'daily' | 'monthly' | 'lifetime'
  /** the calendar period in the workspace's time zone, as in the counter's key (`2026-12-06`, `2026-12`); lifetime: null */
  periodId: string | null
  percent: number
}

const CAP_KIND = { d: 'daily', m: 'monthly', l: 'lifetime' } as const
// A settlement the store did not take is sent again, backing off up to a few seconds, for at most ten minutes: the
// settle script ignores an id settled in the hour before (its `done` set), so one whose answer was lost but that did
// reach Redis counts once, and a renewal does not put its reservation back meanwhile
const RETRY_FIRST_MS = 100
const RETRY_MAX_MS = 5_000
const RETRY_FOR_MS = 10 * 60_000
const LIMIT_WORDS: Record<string, string> = {
  rpm: 'requests per minute', rpd: 'requests per day', tpm: 'tokens per minute', concurrency: 'concurrent calls'
}

/**
 * The zone a call's day and month are read in: its workspace's, where a daily or monthly cap counts in them; else
 * UTC, as nothing does (rates slide, a lifetime cap has no period), so that a zone this replica's Node does not know
 * (time_zone_unknown) fails only what it would count.
 */
function periodZone (workspace: { timezone: string, caps: SpendCaps }, token: { caps: SpendCaps } | undefined): string {
  return calendarCap(workspace.caps) || calendarCap(token?.caps) ? workspace.timezone : 'UTC'
}

function calendarCap (caps: SpendCaps | undefined): boolean {
  return caps?.daily !== undefined || caps?.monthly !== undefined
}

export function createAdmission (options: AdmissionOptions): Admission {
  const { store, fallback, ledger, flushLedger, log, formatMoney } = options
  const leaseMs = options.leaseMs ?? 60_000
  const clock = options.clock ?? Date.now
  const holdMs = options.holdMs ?? 10_000
  const recoveryMs = options.recoveryMs ?? 500
  const live = new Map<string, Ticket>()
  // the loss each workspace was last recovered from (by the time Redis gave it), so a replica helps once per loss
  const recovered = new Map<string, number>()
  // re-seeds under way, by workspace prefix and the counters they seed
  const seeding = new Map<string, Promise<void>>()
  const thresholdListeners: Array<(crossing: ThresholdCrossing) => void> = []
  // the workspaces deleted while this replica ran: a settlement failing then is not sent again
  const forgotten = new Set<string>()
  // settlements waiting to be sent again, by request id
  const retries = new Map<string, { prefix: string, timer: NodeJS.Timeout, send: () => Promise<void> }>()
  let closed = false
  // a call that outlives its lease keeps it: every replica renews its own calls, a dead one stops
  const renewal = setInterval(() => renewAll(), Math.floor(leaseMs / 3))
  renewal.unref()

  // renewal also puts back a call the store lost (FLUSHALL, restart): so a loss heals within leaseMs / 3 at worst
  async function renewAll (only?: string) {
    const byStore = new Map<AdmissionStore, Map<string, HeldCall[]>>()
    for (const ticket of live.values()) {
      if (only !== undefined && ticket.prefix !== only) continue
      const prefixes = byStore.get(ticket.store) ?? new Map<string, HeldCall[]>()
      byStore.set(ticket.store, prefixes)
      const spend = ticket.spend.map(([key]) => key)
      const held = { id: ticket.id, cost: ticket.reservedCost, spend, conc: ticket.conc }
      prefixes.set(ticket.prefix, [...(prefixes.get(ticket.prefix) ?? []), held])
    }
    for (const [target, prefixes] of byStore) {
      for (const [prefix, calls] of prefixes) {
        // a call that settled, or whose workspace was deleted, while an earlier renewal was awaited is not put back
        const still = calls.filter((call) => live.has(call.id))
        if (still.length === 0) continue
        await target.renew(prefix, still, leaseMs).catch((err) => log.warn({ err }, 'lease renewal failed'))
      }
    }
  }

  /**
   * The shared store lost a workspace's state: put back the room this replica's calls in flight hold, and write what
   * it has settled, before anyone reads the ledger (the admission that saw the loss waits recoveryMs for this).
   */
  async function recover (prefix: string) {
    await renewAll(prefix)
    await flushLedger().catch((err) => log.warn({ err }, 'usage flush for a re-seed failed'))
  }

  options.bus?.subscribe((message) => {
    // a reconnect may have missed a notice: put back whatever the store lost of every call in flight
    if (message === null) void renewAll()
    else if (message.type === 'spend-recovery') void recover(`tmt:{ws:${message.workspaceId}}`)
  })

  return {
    store,
    ledger,
    async admit (subject, quote) {
      const { workspace, token } = subject
      const modelLimits = subject.model ? workspace.limits.models?.[subject.model] : undefined
      const capped = hasCaps(workspace.caps) || hasCaps(token.caps)
      if (!capped && !hasRates(workspace.limits) && !hasRates(token.limits) && !hasRates(modelLimits)) return undefined

      const prefix = `tmt:{ws:${workspace.id}}`
      // each cap reports its own scope's thresholds: a token's, else the workspace's, else 50/80/100 %
      const workspaceThresholds = workspace.caps.thresholds ?? DEFAULT_THRESHOLDS
      const tokenThresholds = token.caps.thresholds ?? workspaceThresholds
      const scopes: ScopeInput[] = [scope(`${prefix}:w`, workspace.limits, workspace.caps, workspaceThresholds)]
      const names = ['workspace']
      if (hasRates(token.limits) || hasCaps(token.caps)) {
        scopes.push(scope(`${prefix}:t:${token.id}`, token.limits, token.caps, tokenThresholds))
        names.push('token')
      }
      if (modelLimits && hasRates(modelLimits)) {
        scopes.push(scope(`${prefix}:m:${subject.model}`, modelLimits, undefined))
        names.push(`model ${subject.model}`)
      }
      const clamp = workspace.caps.clampMaxTokens !== false && token.caps.clampMaxTokens !== false
      const zone = periodZone(workspace, token)
      let periods = calendarPeriods(clock(), zone)
      let target = store
      let holdUntil = Date.now() + holdMs
      for (let attempt = 0; attempt < 4; attempt++) {
        const input: AdmitInput = {
          id: subject.requestId,
          scopes,
          day: period(periods.day),
          month: period(periods.month),
          cost: quote.cost,
          promptCost: quote.promptCost,
          outputPerMillion: quote.outputPerMillion,
          maxTokens: quote.maxTokens,
          n: quote.n,
          promptTokens: quote.promptTokens,
          clamp,
          lease: leaseMs,
          quiet: recoveryMs
        }
        let result: AdmitResult
        try {
          result = await target.admit(prefix, input)
        } catch (err) {
          // DESIGN.md: budgets fail closed; rate limits degrade to this replica's own limiter
          if (capped) throw budgetUnavailable(err)
          log.warn({ err }, 'admission store unreachable: in-process rate limits')
          target = fallback
          continue
        }
        if (result.kind === 'period') {
          periods = calendarPeriods(result.now, zone)
          continue
        }
        if (result.kind === 'seed') {
          if (result.recovery) {
            // the first replica to see the loss tells the others; each helps once, then the ledger is read
            if (recovered.get(prefix) !== result.recovery.since) {
              recovered.set(prefix, result.recovery.since)
              await options.bus?.publish({ type: 'spend-recovery', workspaceId: workspace.id })
                .catch((err: unknown) => log.warn({ err }, 'spend recovery notice failed'))
              if (!options.bus) await recover(prefix)
            }
            if (Date.now() > holdUntil) throw budgetUnavailable(new Error('the store stayed in recovery'))
            attempt--
            // the wait for the replicas is not the wait for calls in flight to settle: it does not shorten that one
            holdUntil += result.recovery.waitMs
            await sleep(result.recovery.waitMs + 1)
            continue
          }
          await seed(target, prefix, result.missing, subject, periods)
          continue
        }
        if (result.kind === 'denied') {
          // the room is held by calls in flight, which settle in a moment and usually for far less than their
          // worst case: wait for them (bounded) rather than refuse a call the cap will afford
          if (result.busy && Date.now() < holdUntil) {
            attempt--
            await sleep(10 + Math.random() * 40)
            continue
          }
          if (result.crossed) announce(prefix, result.crossed)
          throw denial(result, names, scopes, formatMoney)
        }
        const caps = scopes.flatMap((entry) =>
          spendEntries(entry, periods, entry.p === `${prefix}:w` ? workspaceThresholds : tokenThresholds))
        const ticket: Ticket = {
          prefix,
          id: subject.requestId,
          store: target,
          clampedMaxTokens: result.maxTokens < quote.maxTokens ? result.maxTokens : undefined,
          reservedTokens: result.tokens,
          reservedCost: result.cost,
          spend: caps,
          conc: scopes.filter((entry) => entry.conc !== undefined).map((entry) => `${entry.p}:conc`),
          thresholds: workspaceThresholds,
          headers: rateHeaders(result.rpm, result.tpm, result.budgetLeft, formatMoney),
          admittedAt: result.now
        }
        live.set(ticket.id, ticket)
        return ticket
      }
      throw budgetUnavailable(new Error('admission did not settle after retries'))
    },

    settle (ticket, actual) {
      // the ticket stays live until the store takes its settlement: renewal keeps its reservation meanwhile
      return settleUntilTaken(ticket.store, ticket.prefix, {
        id: ticket.id,
        cost: actual.cost,
        tokens: actual.tokens,
        reservedTokens: ticket.reservedTokens,
        spend: ticket.spend,
        thresholds: ticket.thresholds
      }, ticket.conc.length > 0, ticket)
    },

    async charge ({ id, workspace, token, cost, at }) {
      // nothing to count without a cap; nor a calendar to read (a zone this replica's Node may not know)
      if (!hasCaps(workspace.caps) && !(token && hasCaps(token.caps))) return
      const prefix = `tmt:{ws:${workspace.id}}`
      const periods = calendarPeriods(at, periodZone(workspace, token))
      const workspaceThresholds = workspace.caps.thresholds ?? DEFAULT_THRESHOLDS
      const spend = spendEntries(scope(`${prefix}:w`, undefined, workspace.caps), periods, workspaceThresholds)
      if (token && hasCaps(token.caps)) {
        spend.push(...spendEntries(scope(`${prefix}:t:${token.id}`, undefined, token.caps), periods,
          token.caps.thresholds ?? workspaceThresholds))
      }
      if (spend.length === 0) return
      // settling an id that holds no reservation only adds its cost, once
      announce(prefix, await store.settle(prefix,
        { id, cost, tokens: 0, reservedTokens: 0, spend, thresholds: workspaceThresholds }, false))
    },

    async welcome (workspaceId) {
      await store.markNew(`tmt:{ws:${workspaceId}}`)
        .catch((err: unknown) => log.warn({ err }, 'a new workspace could not be marked in the admission store'))
    },

    async forget (workspaceId) {
      const prefix = `tmt:{ws:${workspaceId}}`
      // a renewal finds neither the reservation nor the settled id, and would put the call back for good; a retried
      // settlement would bring the counters back
      forgotten.add(prefix)
      for (const [id, ticket] of live) if (ticket.prefix === prefix) live.delete(id)
      for (const [id, retry] of retries) {
        if (retry.prefix !== prefix) continue
        clearTimeout(retry.timer)
        retries.delete(id)
      }
      recovered.delete(prefix)
      await fallback.forget(prefix)
      await store.forget(prefix)
    },

    onThreshold (listener) {
      thresholdListeners.push(listener)
    },

    async close () {
      clearInterval(renewal)
      closed = true
      // the settlements waiting for a retry get one last try
      const last = [...retries.values()]
      for (const retry of last) clearTimeout(retry.timer)
      retries.clear()
      await Promise.all(last.map((retry) => retry.send()))
      await store.flush()
    }
  }

  /**
   * Sends a settlement until the store takes it. One lost (a reconnect, a command timeout) would leave the call's cost
   * out of its spend counters until their period ends: a counter that still exists is never seeded from the ledger
   * again. A call's ticket stays live meanwhile, so renewal keeps its reservation; once the retries run out (past
   * RETRY_FOR_MS, or at close) it is dropped, its reservation expires, and the counters miss its cost.
   */
  async function settleUntilTaken (target: AdmissionStore, prefix: string, input: SettleInput, freesSlot: boolean,
    ticket: Ticket, attempt = 0, firstFailedAt?: number): Promise<void> {
    try {
      const crossed = await target.settle(prefix, input, freesSlot)
      live.delete(ticket.id)
      announce(prefix, crossed)
    } catch (err) {
      // a workspace forgotten meanwhile: its counters are gone, and must stay so
      if (live.get(ticket.id) !== ticket || forgotten.has(prefix)) return
      const since = firstFailedAt ?? Date.now()
      if (closed || Date.now() - since >= RETRY_FOR_MS) {
        live.delete(ticket.id)
        log.error({ err, requestId: input.id }, 'settlement failed for good; the spend counters miss its cost')
        return
      }
      log.warn({ err, requestId: input.id }, 'settlement failed; retrying')
      const send = () => settleUntilTaken(target, prefix, input, freesSlot, ticket, attempt + 1, since)
      // jittered, so that the settlements a blip failed do not all come back at once
      const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** attempt) * (0.5 + Math.random() / 2)
      const timer = setTimeout(() => {
        retries.delete(input.id)
        void send()
      }, delay)
      timer.unref()
      retries.set(input.id, { prefix, timer, send })
    }
  }

  function announce (prefix: string, crossed: Array<[string, number]>) {
    for (const [key, percent] of crossed) {
      const crossing = { ...crossingOf(key), workspaceId: prefix.slice(8, -1), percent }
      log.warn(crossing, 'spend cap threshold crossed')
      for (const listener of thresholdListeners) {
        try {
          listener(crossing)
        } catch (err) {
          log.error({ err }, 'threshold listener failed')
        }
      }
    }
  }

  async function seed (target: AdmissionStore, prefix: string, missing: Array<{ scope: number, kind: 'd' | 'm' | 'l', key: string }>,
    subject: AdmissionSubject, periods: CalendarPeriods) {
    // every call waiting on the same lost counters would otherwise read the ledger on its own
    const flight = `${prefix} ${missing.map(({ key }) => key).sort().join(' ')}`
    const running = seeding.get(flight)
    if (running) return await running
    const seeded = seedOnce(target, prefix, missing, subject, periods)
      // budgets fail closed (DESIGN.md): a store or ledger that cannot be read is a 503, never a 500
      .catch((err: unknown) => { throw err instanceof GatewayError ? err : budgetUnavailable(err) })
      .finally(() => seeding.delete(flight))
    seeding.set(flight, seeded)
    return await seeded
  }

  async function seedOnce (target: AdmissionStore, prefix: string, missing: Array<{ scope: number, kind: 'd' | 'm' | 'l', key: string }>,
    subject: AdmissionSubject, periods: CalendarPeriods) {
    await flushLedger()
    for (let attempt = 0; attempt < 3; attempt++) {
      // calls that settled while a counter was missing vouched for their cost: the ledger says which it already holds.
      // Calls in flight (their reservations put back) count when they settle: the ledger sum leaves them out
      const { vouched, held } = await target.snapshot(prefix, missing.map(({ key }) => key))
      const entries: SeedEntry[] = []
      for (const [i, { scope: index, kind, key }] of missing.entries()) {
        const tokenId = index === 0 ? undefined : subject.token.id
        const window = kind === 'd' ? periods.day : kind === 'm' ? periods.month : undefined
        const { spent, recorded } =
          await ledger.spentAmong(subject.workspace.id, tokenId, window?.start, window?.end, vouched[i], held)
        entries.push([key, spent, recorded, vouched[i]])
      }
      // false: a call the snapshot did not know vouched meanwhile, and the ledger may already hold it
      if (await target.seed(prefix, entries, held)) return
    }
    throw budgetUnavailable(new Error('the spend counters could not be re-seeded from a stable snapshot'))
  }
}

/** `tmt:{ws:<id>}:w:spend:m:2026-11` or `tmt:{ws:<id>}:t:<token id>:spend:d:2026-11-05` or `…:spend:l` */
function crossingOf (key: string): Pick<ThresholdCrossing, 'scope' | 'tokenId' | 'cap' | 'periodId'> {
  const parts = key.slice(key.indexOf('}') + 2).split(':')
  const token = parts[0] === 't'
  const kind = parts[token ? 3 : 2] as 'd' | 'm' | 'l'
  return {
    scope: token ? 'token' : 'workspace',
    tokenId: token ? parts[1] : null,
    cap: CAP_KIND[kind],
    periodId: parts[token ? 4 : 3] ?? null
  }
}

function scope (p: string, limits: RateLimits | undefined, caps: SpendCaps | undefined,
  thresholds = DEFAULT_THRESHOLDS): ScopeInput {
  const entry: ScopeInput = { p }
  if (limits?.rpm !== undefined) entry.rpm = limits.rpm
  if (limits?.rpd !== undefined) entry.rpd = limits.rpd
  if (limits?.tpm !== undefined) entry.tpm = limits.tpm
  if (limits?.concurrency !== undefined) entry.conc = limits.concurrency
  if (caps && hasCaps(caps)) {
    entry.caps = {}
    if (caps.daily !== undefined) entry.caps.d = caps.daily
    if (caps.monthly !== undefined) entry.caps.m = caps.monthly
    if (caps.lifetime !== undefined) entry.caps.l = caps.lifetime
    // the stores' default: left out, so that the usual call's input stays as short as it was
    if (thresholds !== DEFAULT_THRESHOLDS) entry.th = thresholds
  }
  return entry
}

const period = ({ id, start, end }: { id: string, start: number, end: number }) => ({ id, s: start, e: end })

/** a scope's spend caps as a settlement names them: key, cap, thresholds */
function spendEntries (entry: ScopeInput, periods: CalendarPeriods, thresholds: number[]) {
  return Object.entries(entry.caps ?? {})
    .map(([kind, cap]): [string, number, number[]] => [spendKey(entry.p, kind, periods), cap, thresholds])
}

function spendKey (p: string, kind: string, periods: CalendarPeriods) {
  if (kind === 'd') return `${p}:spend:d:${periods.day.id}`
  if (kind === 'm') return `${p}:spend:m:${periods.month.id}`
  return `${p}:spend:l`
}

const seconds = (ms: number) => `${Math.max(0, Math.ceil(ms / 1000))}s`

function rateHeaders (rpm: RateInfo | undefined, tpm: RateInfo | undefined, budgetLeft: number | null,
  formatMoney: (micros: number) => string) {
  const headers: Record<string, string> = {}
  if (rpm) {
    headers['x-ratelimit-limit-requests'] = String(rpm[0])
    headers['x-ratelimit-remaining-requests'] = String(Math.max(0, rpm[1]))
    headers['x-ratelimit-reset-requests'] = seconds(rpm[2])
  }
  if (tpm) {
    headers['x-ratelimit-limit-tokens'] = String(tpm[0])
    headers['x-ratelimit-remaining-tokens'] = String(Math.max(0, tpm[1]))
    headers['x-ratelimit-reset-tokens'] = seconds(tpm[2])
  }
  if (budgetLeft !== null) headers['x-tramontane-budget-remaining'] = formatMoney(Math.max(0, budgetLeft))
  return headers
}

function denial (result: Extract<AdmitResult, { kind: 'denied' }>, names: string[], scopes: ScopeInput[],
  formatMoney: (micros: number) => string): GatewayError {
  const who = names[result.scope] ?? 'workspace'
  const scopeInput = scopes[result.scope]
  const reason: DenyReason = result.reason
  if (reason.startsWith('cap_')) {
    const kind = CAP_KIND[reason.slice(4) as 'd' | 'm' | 'l']
    const cap = scopeInput.caps?.[reason.slice(4) as 'd' | 'm' | 'l'] ?? 0
    // a daily or monthly cap has room again when its period ends; a lifetime cap never, so no Retry-After
    const headers: Record<string, string> = {
      'x-should-retry': 'false', ...(result.retryAfterMs === null ? {} : retryAfterHeaders(result.retryAfterMs))
    }
    return new GatewayError(429, 'insufficient_quota', `${kind}_spend_cap_reached`,
      `The ${who}'s ${kind} spend cap of ${formatMoney(cap)} is reached`, { headers })
  }
  if (reason === 'tpm_too_large') {
    return new GatewayError(429, 'invalid_request_error', 'request_exceeds_token_limit',
      `This call may use more tokens than the ${who}'s whole limit of ${scopeInput.tpm} tokens per minute; ` +
      'lower max_tokens or the prompt', { headers: { 'x-should-retry': 'false' } })
  }
  const retryMs = result.retryAfterMs ?? 1000
  const limit = reason === 'concurrency' ? scopeInput.conc : scopeInput[reason as 'rpm' | 'rpd' | 'tpm']
  const headers: Record<string, string> = { ...retryAfterHeaders(retryMs), 'x-should-retry': 'true' }
  const retrySeconds = Number(headers['retry-after'])
  if (reason === 'rpm' || reason === 'rpd' || reason === 'concurrency') {
    headers['x-ratelimit-limit-requests'] = String(limit)
    headers['x-ratelimit-remaining-requests'] = '0'
    headers['x-ratelimit-reset-requests'] = seconds(retryMs)
  } else {
    headers['x-ratelimit-limit-tokens'] = String(limit)
    headers['x-ratelimit-remaining-tokens'] = '0'
    headers['x-ratelimit-reset-tokens'] = seconds(retryMs)
  }
  const code = reason === 'concurrency' ? 'concurrency_limit_exceeded' : 'rate_limit_exceeded'
  return new GatewayError(429, 'rate_limit_error', code,
    `The ${who}'s limit of ${limit} ${LIMIT_WORDS[reason]} is reached; retry in ${retrySeconds} s`, { headers, param: reason })
}

function budgetUnavailable (cause: unknown) {
  return new GatewayError(503, 'server_error', 'budget_unavailable',
    'Spend caps cannot be checked right now (the shared store is unreachable); the call was not made',
    // when Redis answers again is unknown: a few seconds is what a reconnect usually takes
    { headers: retryAfterHeaders(5_000), cause })
}
