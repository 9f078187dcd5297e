import { setTimeout as sleep } from 'node:timers/promises'
import type { Readable } from 'node:stream'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import type { AuditLog } from '../audit/audit-log.js'
import type { Config } from '../config.js'
import { databaseUnanswered } from '../db/sql-state.js'
import {
  databaseUnavailable, GatewayError, retryAfterHeaders, shuttingDown, unknownMistralKey, upstreamTimeout,
  upstreamUnreachable
} from '../errors.js'
import type { Metrics } from '../metrics.js'
import { failedAnswer } from '../resilience/failed-answer.js'
import type { KeyHealth } from '../resilience/key-health.js'
import { isSpendLimit, retryAfterMs } from '../resilience/retry-after.js'
import type { RetryBudget } from '../resilience/retry-budget.js'
import type { MistralKeyStore, UsableKey } from '../tenancy/mistral-keys.js'
import type { CooldownPolicy, CooldownStrategy } from '../tenancy/workspaces.js'
import { upstreamHeaders } from './headers.js'
import { UpstreamQueueTimeoutError, type UpstreamPool } from './upstream.js'

export interface AttemptDeps {
  pool: UpstreamPool
  prefix: string
  keys: MistralKeyStore
  health: KeyHealth
  budget: RetryBudget
  metrics: Metrics
  audit: AuditLog
  config: Config
  log: FastifyBaseLogger
}

export interface Attempt {
  request: FastifyRequest
  workspaceId: string
  /** key names to try, in order; one when the token or the header pins it */
  candidates: string[]
  body: string | undefined
  /** a streamed upload can be sent once only */
  rawBody: Readable | undefined
  signal: AbortSignal
}

export interface Answer {
  upstream: Dispatcher.ResponseData
  key: UsableKey
}

/** Connection failures that happen before the request can have left: sending it again cannot repeat its effect. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT'])

/**
 * Whether a call may be sent again after a failure that leaves unknown whether Mistral acted on it (a connection cut
 * once the request may have left, no answer in time, a 502 or 504 from a hop in between): GET, PUT and DELETE, whose
 * repetition changes nothing, and the metered calls that store nothing (a repeated one costs, as with any gateway's
 * retries; failing the client's call instead would cost it the answer). A POST or PATCH that creates or changes
 * something is not: a second batch job would run at Mistral, billed to the agency and to no client, and a
 * conversation's turn sent twice would be in its stored history twice.
 */
function resendableAfterDoubt (request: FastifyRequest): boolean {
  if (request.method !== 'POST' && request.method !== 'PATCH') return true
  const metered = request.operation?.metered ?? null
  return metered !== null && metered !== 'conversation'
}

const MAX_HOLD_SPREAD_MS = 250

/**
 * Every call held for a key, on every replica, waits for the same end of its cooldown: woken at once they would meet
 * Mistral's per-second limit together. Each wakes up to a quarter of its hold (at most 250 ms) later, at random,
 * within the `left` ms its UPSTREAM_RETRY_MAX_WAIT_MS leaves after the hold.
 */
function holdSpread (hold: number, left: number): number {
  return Math.random() * Math.max(0, Math.min(MAX_HOLD_SPREAD_MS, hold / 4, left))
}

/** The gateway's order when the workspace sets none: another key first, then a short hold (issue 4). */
const DEFAULT_ORDER: readonly CooldownStrategy[] = ['failover', 'hold']

/** What a call may do while its preferred key is unusable, tried in order; after them the client gets the answer. */
export interface CooldownPlan {
  order: readonly CooldownStrategy[]
  holdMs: number
}

/** The workspace's cooldown setting, the gateway's defaults where it sets nothing. */
export function cooldownPlan (setting: CooldownPolicy,
  config: Pick<Config, 'UPSTREAM_COOLDOWN_HOLD_MS'>): CooldownPlan {
  return { order: setting.order ?? DEFAULT_ORDER, holdMs: setting.holdMs ?? config.UPSTREAM_COOLDOWN_HOLD_MS }
}

/**
 * Sends a call to Mistral with the first usable key, and tries again — another key, or the same after a short
 * wait, as the workspace's cooldown order allows — only while no byte has gone to the client (DESIGN.md). Never
 * sends on a key that is cooling down, whose breaker is open, or that Mistral rejected.
 */
export async function sendWithRetries (attempt: Attempt, deps: AttemptDeps): Promise<Answer> {
  const { request, workspaceId, candidates, body, rawBody, signal } = attempt
  const { pool, prefix, keys, health, budget, config, log } = deps
  const started = Date.now()
  const resendable = rawBody === undefined
  const resendableAfterFailure = resendableAfterDoubt(request)
  const plan = cooldownPlan(request.tenant?.workspace.cooldown ?? {}, config)
  let tries = 0
  let failovers = 0
  let lastFailure: GatewayError | undefined
  // the key this call just met a 429 on: what comes next is a failover (another key) or a retry (the same one)
  let after429: string | undefined
  budget.earn()

  while (true) {
    const choice = await pickCallKey(workspaceId, candidates, plan, mayHold, deps, request.log)
    if ('error' in choice) throw lastFailure ?? choice.error
    if ('hold' in choice) {
      after429 = undefined // mayHold counted it
      await sleep(holdDelay(choice.hold, started, config), undefined, { signal })
      continue
    }
    const key = choice.key
    if (after429 !== undefined && lastFailure !== undefined) {
      // moving on to another key of the workspace is failover, not a retry: it costs no retry budget
      if (key.id !== after429 && failovers < candidates.length - 1) failovers++
      else if (!(await mayRetry())) throw lastFailure
      after429 = undefined
    }
    let upstream: Dispatcher.ResponseData
    try {
      upstream = await pool.request({
        path: prefix + request.url,
        method: request.method as Dispatcher.HttpMethod,
        headers: upstreamHeaders(request.headers, key.secret, rawBody !== undefined, request.operation?.security),
        body: rawBody ?? body,
        signal
      })
    } catch (err) {
      if (signal.aborted) throw err
      // every connection of this replica stayed busy: the call never left, no fault of the key's, and a retry would
      // only wait in the same queue
      if (err instanceof UpstreamQueueTimeoutError) {
        deps.metrics.denied(request.tenant?.workspace.slug ?? '', 'upstream_busy')
        throw busyError(err.waitedMs)
      }
      const failure = connectionFailure(err)
      // the gateway's own fault (undefined: its 500) or its shutdown (not_ready), not Mistral's nor the network's:
      // nothing to hold against the key, and a retry would meet the same
      if (failure === undefined) throw err
      if (failure.code === 'not_ready') throw failure
      await health.failed(workspaceId, key.id).catch(() => {})
      const sent = !NOT_SENT.has((err as NodeJS.ErrnoException).code ?? '')
      if ((sent && !resendableAfterFailure) || !(await mayRetry())) throw failure
      lastFailure = failure
      await backoff()
      continue
    }

    const status = upstream.statusCode
    deps.metrics.upstream(status)
    if (status === 429) {
      const text = await upstream.body.text().catch(() => '')
      const spendLimit = isSpendLimit(text)
      const block = await health.rateLimited(workspaceId, key.id, retryAfterMs(upstream.headers, Date.now()), spendLimit)
      log.warn({ key: key.name, reason: block.reason, cooldownMs: block.until - Date.now() }, 'Mistral answered 429')
      lastFailure = rateLimitedError(block.reason, block.until - Date.now(), key.name)
      if (!resendable) throw lastFailure
      after429 = key.id // the workspace's cooldown order decides, in pickKey
      continue
    }
    // a route Mistral authenticates otherwise (an admin key, the user context) rejects a workspace key that serves
    // inference well: its 401 is the client's answer, and says nothing of the key
    if (status === 401 && request.operation?.security === 'ApiKey') {
      await upstream.body.dump().catch(() => {})
      lastFailure = invalidKeyError(key.name)
      // the mark and its audit row commit together: a mark nobody could find in the audit log, or a row for a mark
      // that did not happen, would mislead the operator
      const marked = await keys.markInvalid(workspaceId, key.id, (tx, row) => deps.audit.record({
        actor: 'gateway', action: 'mistral_key.invalid', targetType: 'mistral_key', targetId: row.id, workspaceId,
        details: { name: row.name }
      }, tx)).catch((err: unknown) => {
        // PostgreSQL away or slow past PG_QUERY_TIMEOUT_MS, or the audit row refused: the key stays active, so the
        // cooldown order would only pick it again; the call ends here with mistral_key_rejected all the same (the
        // error names queries and ids, never a key)
        log.error({ key: key.name, err }, 'Mistral rejected a workspace key, which could not be marked invalid')
        return undefined
      })
      if (marked === undefined) throw lastFailure
      if (marked) {
        log.error({ key: key.name }, 'Mistral rejected a workspace key: marked invalid')
        request.server.events.emit('mistral_key.invalid', {
          type: 'mistral_key.invalid',
          workspaceId,
          workspaceSlug: request.tenant?.workspace.slug ?? '',
          keyId: key.id,
          keyName: key.name,
          at: new Date().toISOString()
        })
      }
      // only another key can serve the call now: failover, which the workspace's cooldown order allows or not (in
      // pickKey), and which costs no retry; never more of them than the workspace has other keys
      if (!resendable || signal.aborted || failovers >= candidates.length - 1) throw lastFailure
      failovers++
      continue
    }
    if (failedAnswer(status)) {
      await health.failed(workspaceId, key.id).catch(() => {})
      // the last try's answer reaches the client as Mistral sent it (one outside 200-599 as a 502, in routes.ts); so
      // does one after which no key could take a retry (this one's breaker just opened, the others are cooling or
      // rejected): a retry could only end in a 503 or 429 of the gateway's own
      // a 503 is Mistral refusing the call; a 502 or 504 may come from a hop after Mistral took it
      const mayHaveActed = status !== 503
      if ((!mayHaveActed || resendableAfterFailure) && await anyKeyLeft() && await mayRetry()) {
        await upstream.body.dump().catch(() => {})
        await backoff()
        continue
      }
      return { upstream, key }
    }
    health.succeeded(workspaceId, key.id)
    health.noteQuota(workspaceId, key.id, upstream.headers)
    return { upstream, key }
  }

  /**
   * Whether a key of the call could take a retry: the choice the retry makes (pickKey), asked without claiming a
   * breaker's probe or spending a retry on a hold, so the two never disagree (a retry that finds no key ends in the
   * gateway's own 429 or 503, and costs the client Mistral's answer). A hold ends at the same instant either way.
   */
  async function anyKeyLeft (): Promise<boolean> {
    const fits = async (wait: number) => holdFitsCall(wait, started, config)
    const choice = await pickKey(workspaceId, candidates, plan, fits, deps, 'look').catch(() => undefined)
    return choice !== undefined && !('error' in choice)
  }

  /** Waiting out this call's own 429 is a retry. */
  async function mayHold (wait: number): Promise<boolean> {
    if (!holdFitsCall(wait, started, config)) return false
    return after429 === undefined || await mayRetry()
  }

  async function mayRetry (): Promise<boolean> {
    if (!resendable || signal.aborted || tries >= config.UPSTREAM_RETRIES) return false
    if (Date.now() - started >= config.UPSTREAM_RETRY_MAX_WAIT_MS) return false
    if (!budget.spend()) return false
    tries++
    deps.metrics.retried()
    return true
  }

  async function backoff () {
    // full jitter on 250 ms × 2^try, within what is left of the total wait
    const step = Math.min(4_000, 250 * 2 ** tries)
    const left = config.UPSTREAM_RETRY_MAX_WAIT_MS - (Date.now() - started)
    await sleep(Math.max(0, Math.min(left, Math.random() * step)), undefined, { signal })
  }
}

/** A key to send with, a wait for one (ms), or the error to answer. */
type KeyChoice = { key: UsableKey } | { hold: number } | { error: GatewayError }

/** A hold is one of the waits UPSTREAM_RETRY_MAX_WAIT_MS bounds, counted from the call's start. */
export function holdFitsCall (wait: number, started: number,
  config: Pick<Config, 'UPSTREAM_RETRY_MAX_WAIT_MS'>): boolean {
  return Date.now() - started + wait <= config.UPSTREAM_RETRY_MAX_WAIT_MS
}

/** How long a call held for a key sleeps: past the hold's end, spread (holdSpread) within its retry time's rest. */
export function holdDelay (hold: number, started: number, config: Pick<Config, 'UPSTREAM_RETRY_MAX_WAIT_MS'>): number {
  const left = config.UPSTREAM_RETRY_MAX_WAIT_MS - (Date.now() - started) - hold
  return hold + 5 + holdSpread(hold, left)
}

/**
 * A call's pick of a key (pickKey), as the call answers a failed one: a key PostgreSQL did not let the gateway read
 * (never read yet) is the database's outage answer, not Mistral unreachable.
 */
export async function pickCallKey (workspaceId: string, candidates: string[], plan: CooldownPlan,
  mayHold: (wait: number) => Promise<boolean>, deps: AttemptDeps, log: FastifyBaseLogger, look?: 'look'):
Promise<KeyChoice> {
  try {
    return await pickKey(workspaceId, candidates, plan, mayHold, deps, look)
  } catch (err) {
    throw databaseUnanswered(err) ? databaseUnavailable(err, log) : err
  }
}

/** A key that cannot be used now: how long until it can (Infinity: at no known time), and what the client is told. */
interface Blocked {
  wait: number
  error: GatewayError
}

/**
 * The preferred key (the first candidate the workspace has) if it is usable now; else the workspace's cooldown
 * strategies in order: `failover` takes the next usable candidate, `hold` waits for the preferred key (for the
 * soonest of all once failover was allowed) if that ends within the hold. After them: the error to answer. `look`:
 * what it would answer, claiming no breaker's probe.
 */
async function pickKey (workspaceId: string, candidates: string[], plan: CooldownPlan,
  mayHold: (wait: number) => Promise<boolean>, deps: AttemptDeps, look?: 'look'):
Promise<KeyChoice> {
  let next = 0
  let preferred: Blocked | undefined
  while (next < candidates.length && preferred === undefined) {
    const state = await keyState(workspaceId, candidates[next++], deps, look)
    if (state && 'key' in state) return state
    preferred = state
  }
  if (!preferred) {
    throw unknownMistralKey(`No Mistral key named '${candidates[0]}' in this workspace`, { param: 'x-tramontane-key' })
  }
  let soonest = preferred
  for (const strategy of plan.order) {
    if (strategy === 'hold') {
      if (soonest.wait <= plan.holdMs && await mayHold(soonest.wait)) return { hold: soonest.wait }
      continue
    }
    while (next < candidates.length) {
      const state = await keyState(workspaceId, candidates[next++], deps, look)
      if (!state) continue
      if ('key' in state) return state
      if (state.wait < soonest.wait) soonest = state
    }
  }
  return { error: soonest.error }
}

/** A candidate usable now, or why not; undefined when the workspace has no key of that name. */
async function keyState (workspaceId: string, name: string, deps: AttemptDeps, look?: 'look'):
Promise<{ key: UsableKey } | Blocked | undefined> {
  const key = await deps.keys.resolve(workspaceId, name)
  if (!key) return undefined
  if (key.status === 'invalid') return { wait: Infinity, error: invalidKeyError(name) }
  const block = deps.health.blocked(key.id)
  if (!block) return { key }
  const wait = block.until - Date.now()
  if (block.reason === 'breaker_open' && wait <= 0) {
    const probe = look ? deps.health.probeFree(workspaceId, key.id) : deps.health.claimProbe(workspaceId, key.id)
    if (await probe) return { key }
    // another call holds the probe: nothing ends at a known time, so answer (or fail over) now
    return { wait: Infinity, error: breakerError(1000, name) }
  }
  // what is left of the open time, as it is: Retry-After rounds it up to whole seconds, retry-after-ms does not
  const error = block.reason === 'breaker_open'
    ? breakerError(wait, name)
    : rateLimitedError(block.reason, wait, name)
  return { wait: Math.max(wait, 0), error }
}

function rateLimitedError (reason: string, remainingMs: number, keyName: string): GatewayError {
  const retry = retryAfterHeaders(remainingMs)
  if (reason === 'spend_limit') {
    return new GatewayError(429, 'insufficient_quota', 'mistral_spend_limit_reached',
      `Mistral refused the workspace's key '${keyName}': its organisation reached its spend or usage limit`,
      { headers: { 'x-should-retry': 'false', ...retry } })
  }
  return new GatewayError(429, 'rate_limit_error', 'upstream_rate_limited',
    `Mistral is rate limiting the workspace's key '${keyName}'; retry in ${retry['retry-after']} s`,
    { headers: { ...retry, 'x-should-retry': 'true' } })
}

function breakerError (remainingMs: number, keyName: string): GatewayError {
  const retry = retryAfterHeaders(remainingMs)
  return new GatewayError(503, 'server_error', 'upstream_unavailable',
    `Mistral keeps failing for the workspace's key '${keyName}'; calls resume in ${retry['retry-after']} s`,
    { headers: retry })
}

function busyError (waitedMs: number): GatewayError {
  const retry = retryAfterHeaders(waitedMs)
  return new GatewayError(503, 'server_error', 'upstream_busy',
    `The gateway's connections to Mistral are all busy: none came free within ${waitedMs} ms; retry in ` +
    `${retry['retry-after']} s`, { headers: retry })
}

function invalidKeyError (keyName: string): GatewayError {
  return new GatewayError(502, 'upstream_error', 'mistral_key_rejected',
    `Mistral rejected the workspace's key '${keyName}' (401); the operator must replace it`)
}

/**
 * undici's errors of the gateway's own making (nodejs/undici lib/core/errors.js): a request it built wrong, or a body
 * stream that ended short of (or past) the content-length sent with it. Node's parser never ends a client's body
 * short (a client that stops sending gets Node's 400, or is gone): the stream is the gateway's.
 */
const GATEWAY_FAULTS = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED', 'UND_ERR_INVALID_RETURN_VALUE',
  'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH'])

/** The pool closed (the gateway's shutdown, app.ts) or destroyed: nothing of Mistral's. */
const POOL_CLOSED = new Set(['UND_ERR_CLOSED', 'UND_ERR_DESTROYED'])

/**
 * undici failures by `err.code` (nodejs/undici docs/api/Errors.md): timeouts are 504, the gateway closing its pool a
 * 503, the rest of the network's and Mistral's a 502. Undefined for a fault of the gateway's own, which the error
 * handler answers as its logged 500.
 */
function connectionFailure (err: unknown): GatewayError | undefined {
  const code = (err as NodeJS.ErrnoException).code ?? ''
  if (GATEWAY_FAULTS.has(code)) return undefined
  if (POOL_CLOSED.has(code)) return shuttingDown(err)
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return upstreamTimeout('Mistral did not answer in time')
  }
  return upstreamUnreachable('Mistral could not be reached', { cause: err })
}
