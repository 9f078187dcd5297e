import { Cluster, type Redis } from 'ioredis'
import type { InvalidationBus } from '../tenancy/invalidation-bus.js'

/** Why calls stay away from a Mistral key for a while. */
export type BlockReason = 'rate_limited' | 'spend_limit' | 'breaker_open'

export interface Block {
  reason: BlockReason
  /** local epoch ms */
  until: number
}

export interface KeyHealthOptions {
  redis: Redis | Cluster | null
  bus: InvalidationBus
  clock?: () => number
  /** first backoff of a 429 without any hint, doubled per 429 in a row, capped, jittered */
  backoffBaseMs?: number
  backoffMaxMs?: number
  /** how long a 429 that means "spend limit" keeps the key away */
  spendLimitMs?: number
  /** failures (502-504, a status outside 200-599, a connection error or timeout) within the window that open the breaker */
  breakerThreshold?: number
  breakerWindowMs?: number
  breakerOpenMs?: number
  /**
   * How long a forgotten key's id is remembered, so that what calls already under way with it meet is ignored: longer
   * than any call can last (UPSTREAM_TOTAL_TIMEOUT_MS and a margin)
   */
  forgetForMs?: number
}

export interface KeyHealth {
  /** Whether calls may go to this key now: undefined, or why not and until when. Memory only: no round trip. */
  blocked (keyId: string): Block | undefined
  /** After Mistral's 429: the cooldown (from its headers, else backoff), shared with every replica. */
  rateLimited (workspaceId: string, keyId: string, waitMs: number | undefined, spendLimit: boolean): Promise<Block>
  /**
   * A failure (502-504, a status outside 200-599, no connection or answer in time): counted across replicas; enough
   * of them within the window open the breaker for every replica.
   */
  failed (workspaceId: string, keyId: string): Promise<void>
  succeeded (workspaceId: string, keyId: string): void
  /** When the breaker's open time is over, exactly one call (across replicas) may probe. */
  claimProbe (workspaceId: string, keyId: string): Promise<boolean>
  /** Whether `claimProbe` would win now, without claiming: whether a retry could take this key. */
  probeFree (workspaceId: string, keyId: string): Promise<boolean>
  /** Keeps Mistral's remaining-quota headers of a successful call (at most one write a second per key). */
  noteQuota (workspaceId: string, keyId: string, headers: Record<string, string | string[] | undefined>): void
  /** Reads the cooldowns and breakers in force from Redis: at start, and after pub/sub may have missed some. */
  load (): Promise<void>
  /** How many keys this replica knows to be cooling down or behind an open breaker (for metrics). */
  cooling (): number
  /** The last quota headers seen for a key, by any replica, and when. */
  quota (workspaceId: string, keyId: string): Promise<{ observedAt: string, headers: Record<string, string> } | null>
  /** Keys whose breaker this replica knows to be open, or half-open (its open time is over, a probe may go). */
  breakers (): { open: number, halfOpen: number }
  /** The last quota headers this replica saw, per key (read at scrape time by the metrics). */
  observedQuotas (): ObservedQuota[]
  /**
   * A key replaced or deleted, whose id no call uses again: what is known of it goes, here, in Redis and on every
   * replica, rather than lingering until it ends (an open breaker never does: it waits half-open for a probe). What
   * calls still under way with it meet afterwards (a 503, a 429, quota headers) is ignored for `forgetForMs`.
   */
  forget (workspaceId: string, keyId: string): Promise<void>
  /** Stops writing again the forgettings Redis did not take, once the writing under way (if any) has ended. */
  close (): Promise<void>
}

export interface ObservedQuota {
  workspaceId: string
  keyId: string
  /** when this replica saw the headers (epoch ms): a window that has reset since makes them stale */
  observedAt: number
  headers: Record<string, string>
}

// Mistral's rate-limit headers, every generation (MISTRAL-NOTES §3.3)
const QUOTA_HEADER = /^(x-)?ratelimit(bysize)?-/

// every block in force, by its end (Redis' clock): a replica that starts or reconnects reads them here, so it never
// sends a cooling key upstream for want of a pub/sub message it was not there to hear. One key for all workspaces:
// it is read only at start and on reconnect, never on the hot path.
const REGISTRY = 'tmt:key-blocks'

/** A block as this replica keeps it: its end on the local clock, and as it was announced (Redis' clock, if any). */
interface HeldBlock extends Block {
  announcedUntil?: number
}

// the key ids forgotten (replaced or deleted) lately, `workspace:key`, by the end of their memory (Redis' clock): a
// replica that starts, or whose pub/sub was away when one was forgotten, drops what it still holds of them. Read at
// start and on reconnect only, like the registry
const FORGOTTEN = 'tmt:key-forgotten'

// forgotten ids a replica remembers at most (the oldest go first): key rotations, not calls, so far more than enough
const FORGOTTEN_MAX = 10_000

// a forgetting Redis did not take on a connection that stays up (a command refused, timed out) is written again after
// this, twice as long at each failure up to a minute; a reconnect's reload writes it at once as well
const RESAVE_FIRST_MS = 1_000
const RESAVE_MAX_MS = 60_000

// how long a measured offset to Redis' clock is trusted: NTP may correct either clock while a replica runs
const OFFSET_MAX_AGE_MS = 60_000

// what every script that writes a key's health answers once the key is forgotten (KEYS[last] exists): a call that
// took the key before it was replaced ends later, on a replica that may not have heard of the replacement yet
const FORGOTTEN_REPLY = 'forgotten'
/** The first line of such a script: KEYS[n] is the key's forgotten mark. */
const unlessForgotten = (n: number) => `if redis.call('EXISTS', KEYS[${n}]) == 1 then return '${FORGOTTEN_REPLY}' end`

// extends a cooldown, never shortens it: returns the remaining ms and the end, by Redis' clock
const EXTEND = `
${unlessForgotten(2)}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local untilMs = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if untilMs > current then
  redis.call('HSET', KEYS[1], 'until', untilMs, 'reason', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
  current = untilMs
end
return {current - now, current}
`

// a 429 without a hint: the next step of the shared backoff, in the same script that sets the cooldown, unless one is
// already in force. A call refused while one is in force was sent before it began (none is sent during it): counting
// it too would make one burst of refusals look like many in a row and push the backoff to its ceiling, so it gets what
// is left of the cooldown in force. ARGV: the first step, the ceiling (ms), a random number in [0, 1) for the jitter,
// how long the streak is remembered. Returns {remaining ms, end, streak (0: one was in force), reason}, by Redis' clock
const BACKOFF = `
${unlessForgotten(3)}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local current = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if current > now then return {current - now, current, 0, redis.call('HGET', KEYS[1], 'reason')} end
local streak = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
local step = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) * 2 ^ math.min(streak - 1, 30))
local ms = math.ceil(step / 2 + tonumber(ARGV[3]) * step / 2)
redis.call('HSET', KEYS[1], 'until', now + ms, 'reason', 'rate_limited')
redis.call('PEXPIRE', KEYS[1], ms + 1000)
return {ms, now + ms, streak, 'rate_limited'}
`

// one more failure within the window (ARGV[1], ms): returns how many
const COUNT_FAILURE = `
${unlessForgotten(2)}
local counted = redis.call('INCR', KEYS[1])
if counted == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) end
return counted
`

// the last quota headers seen (ARGV[1]), kept for ARGV[2] ms
const KEEP_QUOTA = `
${unlessForgotten(2)}
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
`

// everything of a key goes, and the key is marked forgotten for ARGV[1] ms (KEYS[6]): the scripts above write nothing
// of it after this, whichever replica's late call they run for. Returns Redis' clock (ms)
const FORGET = `
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[6], '1', 'PX', tonumber(ARGV[1]))
local clock = redis.call('TIME')
return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
`

/**
 * The shared health of Mistral keys: 429 cooldowns and circuit breakers. State lives in Redis (one hash slot per
 * workspace) and every change is pushed to all replicas over the invalidation bus, so the check on the hot path is a
 * Map lookup. With no Redis, the same in one process; and while Redis cannot answer, each replica decides alone from
 * what it knows, rather than failing the call it was deciding for (a 429 must still reach the client as a 429, and
 * still cool the key).
 */
export function createKeyHealth (options: KeyHealthOptions): KeyHealth {
  const { redis, bus } = options
  const clock = options.clock ?? Date.now
  const backoffBase = options.backoffBaseMs ?? 1_000
  const backoffMax = options.backoffMaxMs ?? 60_000
  const spendLimitMs = options.spendLimitMs ?? 300_000
  const threshold = options.breakerThreshold ?? 5
  const windowMs = options.breakerWindowMs ?? 30_000
  const openMs = options.breakerOpenMs ?? 15_000
  const forgetForMs = options.forgetForMs ?? 3_660_000
  const blocks = new Map<string, HeldBlock>()
  const streaks = new Map<string, number>() // 429s in a row without a hint, this replica's view when Redis is absent
  const failures = new Map<string, number[]>()
  const probes = new Map<string, number>()
  const quotas = new Map<string, { workspaceId: string, observedAt: string, headers: Record<string, string> }>()
  const quotaWritten = new Map<string, number>()
  // key ids forgotten lately, until when (local ms): what calls already under way with them meet is ignored
  const forgotten = new Map<string, number>()
  // forgotten keys whose forgetting Redis did not take (key id → workspace id): written, and announced again, on a
  // timer and at each reload, until Redis takes them, or Redis and the replicas that heard nothing would keep what
  // they know of them
  const unsaved = new Map<string, string>()
  let resave: NodeJS.Timeout | undefined
  // the timer's writing under way, which close() waits for
  let resaving: Promise<void> | undefined
  let resaveMs = RESAVE_FIRST_MS
  let closed = false
  // Redis' clock minus this replica's (ms). A block ends at an instant of Redis' clock (EXTEND's TIME), and every
  // replica converts that same instant to its own clock with its own offset: all of them lift the block together,
  // however late pub/sub brought the news and however far apart their clocks are. Measured on one Redis only: a
  // Cluster answers TIME from any node, not the one whose clock set the block, so there (and until a first
  // measurement) a block counts what was left of it from when the news arrived.
  const measurable = redis !== null && !(redis instanceof Cluster) ? redis : undefined
  let offset = 0
  let offsetAt = -Infinity
  // one measurement at a time: a burst of messages after a quiet minute, or a reconnect meanwhile, starts only one
  let measuring: Promise<number> | undefined

  bus.subscribe((message) => {
    // pub/sub reconnected: messages may have been missed while it was away
    if (message === null) void load().catch(() => {})
    if (message?.type === 'key-forgotten') return remember(message.keyId)
    if (message === null || message.type !== 'key-health' || isForgotten(message.keyId)) return
    // whichever replica succeeds next on this key resets the shared backoff, not only the one that saw the 429s
    if (message.reason === 'rate_limited') streaks.set(message.keyId, streaks.get(message.keyId) ?? 0)
    if (message.remainingMs <= 0) return void blocks.delete(message.keyId)
    // an older replica sends only what was left: counted from the arrival, it ends late by pub/sub's delay
    extendLocal(message.keyId, {
      reason: message.reason,
      until: localEnd(message.until, message.remainingMs),
      announcedUntil: typeof message.until === 'number' ? message.until : undefined
    })
    // an offset a minute old is still used (a clock NTP slews drifts by milliseconds a minute at most), and renewed
    if (measurable && clock() - offsetAt > OFFSET_MAX_AGE_MS) void measure(measurable).catch(() => {})
  })

  /** A block's end on this replica's clock: Redis' instant through the offset, else what was left of it from now. */
  function localEnd (until: unknown, remainingMs: number): number {
    const known = offsetAt !== -Infinity && typeof until === 'number' && Number.isFinite(until)
    return known ? (until as number) - offset : clock() + remainingMs
  }

  /** Redis' clock now, from the measurement under way or a new one, which sets `offset`. */
  function measure (client: Redis): Promise<number> {
    measuring ??= measureOffset(client).finally(() => { measuring = undefined })
    return measuring
  }

  /**
   * TIME was read somewhere within the round trip, so its midpoint is off by at most half the round trip: of a few,
   * the shortest is kept (as NTP does).
   */
  async function measureOffset (client: Redis): Promise<number> {
    let shortest = Infinity
    let measured = 0
    for (let i = 0; i < 3; i++) {
      const sent = clock()
      const time = await client.time()
      const received = clock()
      if (received - sent >= shortest) continue
      shortest = received - sent
      measured = redisNow(time) - (sent + received) / 2
    }
    offset = measured
    offsetAt = clock()
    return offsetAt + offset
  }

  async function load () {
    if (!redis) return
    await saveUnsaved()
    const now = measurable ? await measure(measurable) : redisNow(await redis.time())
    // what this replica may have missed being told: keys forgotten since it started, or while its pub/sub was away
    await redis.zremrangebyscore(FORGOTTEN, '-inf', now)
    const gone = await redis.zrangebyscore(FORGOTTEN, now, '+inf', 'WITHSCORES')
    for (let i = 0; i < gone.length; i += 2) {
      const end = Number(gone[i + 1])
      remember(gone[i].split(':')[1], localEnd(end, end - now))
    }
    // a block outlives its end by a second (EXTEND's PEXPIRE): a breaker half-open; anything older is gone
    await redis.zremrangebyscore(REGISTRY, '-inf', now - 1000)
    const members = await redis.zrangebyscore(REGISTRY, now - 1000, '+inf')
    await Promise.all(members.map(async (member) => {
      const [workspaceId, keyId] = member.split(':')
      const [until, reason] = await redis.hmget(blockKey(workspaceId, keyId), 'until', 'reason')
      if (until === null || reason === null || isForgotten(keyId)) return
      const announcedUntil = Number(until)
      extendLocal(keyId, {
        reason: reason as BlockReason, until: localEnd(announcedUntil, announcedUntil - now), announcedUntil
      })
    }))
  }

  /** `own`: the end this replica worked out from its own call to Redis, the best estimate of that block's end. */
  function extendLocal (keyId: string, block: HeldBlock, own = false) {
    const current = blocks.get(keyId)
    // the same block heard again (this replica's own message, a reload, another replica's news of it): the estimate
    // this replica has is kept, unless it is the replica's own
    if (current && block.announcedUntil !== undefined && current.announcedUntil === block.announcedUntil) {
      if (own) blocks.set(keyId, block)
      return
    }
    if (!current || block.until > current.until || current.until <= clock()) blocks.set(keyId, block)
  }

  /**
   * Sets a cooldown, or extends one (never shortens it), in Redis and on every replica: for `wait` ms, or for the next
   * step of the backoff of a 429 without a hint.
   */
  async function share (workspaceId: string, keyId: string, reason: BlockReason, wait: number | 'backoff'):
  Promise<Block> {
    // a late answer to a call that took a key since forgotten: its client is told what the answer said, and nothing
    // of it is kept (the call's retry, if any, picks the key that replaced it)
    const unkept = { reason, until: clock() + (wait === 'backoff' ? backoffBase : wait) }
    if (isForgotten(keyId)) return unkept
    const key = blockKey(workspaceId, keyId)
    const forgottenMark = forgottenKey(workspaceId, keyId)
    const sent = clock()
    const extended = await shared((client) => (wait === 'backoff'
      ? client.eval(BACKOFF, 3, key, streakKey(workspaceId, keyId), forgottenMark, backoffBase, backoffMax,
        Math.random(), backoffMax * 4)
      : client.eval(EXTEND, 2, key, forgottenMark, wait, reason)) as
      Promise<[number, number, number?, string?] | typeof FORGOTTEN_REPLY>)
    if (extended === FORGOTTEN_REPLY) remember(keyId) // forgotten by a replica whose message has not come yet
    if (isForgotten(keyId)) return unkept
    let remaining: number
    let until: number // by Redis' clock once Redis has answered
    let localUntil: number
    if (redis && extended) {
      const received = clock()
      remaining = Number(extended[0])
      until = Number(extended[1])
      if (wait === 'backoff') {
        if (Number(extended[2]) > 0) streaks.set(keyId, Number(extended[2]))
        reason = (extended[3] ?? reason) as BlockReason
      }
      // Redis counted `remaining` at an instant between sent and received: the end lies in that window shifted by it.
      // The offset, measured on a loaded machine, may be off by half a slow round trip; this call's own is the bound
      localUntil = Math.min(Math.max(localEnd(until, remaining), sent + remaining), received + remaining)
      void redis.zadd(REGISTRY, 'GT', until, `${workspaceId}:${keyId}`).catch(() => {})
    } else {
      // decided and held in one synchronous step: the calls of a burst, each refused, see each other's cooldown
      const local = wait === 'backoff' ? localBackoff(keyId) : { ms: wait, reason }
      remaining = local.ms
      reason = local.reason
      until = clock() + remaining
      localUntil = until
    }
    const block = { reason, until: localUntil, announcedUntil: until }
    extendLocal(keyId, block, true)
    // `until` for this version's replicas; `remainingMs` still for older ones, during a rolling upgrade
    await bus.publish({ type: 'key-health', keyId, reason, until, remainingMs: remaining }).catch(() => {})
    const held = blocks.get(keyId) ?? block
    return { reason: held.reason, until: held.until }
  }

  /** The backoff on this replica alone (no Redis, or none answering), as BACKOFF does it in Redis. */
  function localBackoff (keyId: string): { ms: number, reason: BlockReason } {
    const now = clock()
    const inForce = blocks.get(keyId)
    if (inForce && inForce.until > now) return { ms: inForce.until - now, reason: inForce.reason }
    const streak = (streaks.get(keyId) ?? 0) + 1
    streaks.set(keyId, streak)
    const step = Math.min(backoffMax, backoffBase * 2 ** Math.min(streak - 1, 30))
    // "equal jitter": at least half the step, so replicas that saw the same 429 do not come back together
    return { ms: Math.ceil(step / 2 + Math.random() * step / 2), reason: 'rate_limited' }
  }

  /** Everything this replica knows of a key. */
  function drop (keyId: string) {
    for (const known of [blocks, streaks, failures, probes, quotas, quotaWritten]) known.delete(keyId)
  }

  /** A key forgotten: what this replica knows of it goes, and what it hears of it until `until` is ignored. */
  function remember (keyId: string, until = clock() + forgetForMs) {
    drop(keyId)
    const known = forgotten.get(keyId) ?? -Infinity
    forgotten.delete(keyId) // the latest last, for the trimming below
    forgotten.set(keyId, Math.max(known, until))
    for (const [oldest, end] of forgotten) {
      if (end > clock() && forgotten.size <= FORGOTTEN_MAX) break
      forgotten.delete(oldest)
    }
  }

  function isForgotten (keyId: string): boolean {
    return (forgotten.get(keyId) ?? -Infinity) > clock()
  }

  /** Writes a forgetting to Redis (see FORGET), then tells every replica; one Redis did not take is tried again. */
  async function saveForgetting (workspaceId: string, keyId: string) {
    const member = `${workspaceId}:${keyId}`
    // one hash slot (the workspace's): one script, on a Cluster too; the two registries are a slot each
    const saved = await shared(async (client) => {
      const now = Number(await client.eval(FORGET, 6, blockKey(workspaceId, keyId), streakKey(workspaceId, keyId),
        failuresKey(workspaceId, keyId), probeKey(workspaceId, keyId), quotaKey(workspaceId, keyId),
        forgottenKey(workspaceId, keyId), forgetForMs))
      await Promise.all([
        client.zrem(REGISTRY, member),
        client.zadd(FORGOTTEN, now + forgetForMs, member),
        client.zremrangebyscore(FORGOTTEN, '-inf', now)
      ])
      return true
    })
    if (redis && !saved) {
      unsaved.delete(keyId)
      unsaved.set(keyId, workspaceId)
      if (unsaved.size > FORGOTTEN_MAX) unsaved.delete(unsaved.keys().next().value as string)
      scheduleResave()
    } else {
      resaveMs = RESAVE_FIRST_MS // taken: the next failure starts over
      // Redis answers again: the forgettings still waiting go a first step from now, not after the backoff their
      // failures grew (up to RESAVE_MAX_MS)
      if (unsaved.size > 0) {
        clearTimeout(resave)
        resave = undefined
        scheduleResave()
      }
    }
    await bus.publish({ type: 'key-forgotten', keyId })
  }

  /** The forgettings Redis did not take, written again; those it still does not take wait for the timer. */
  async function saveUnsaved () {
    const retried = [...unsaved]
    unsaved.clear() // a load that runs meanwhile (the bus's reload on the same reconnect) does not write them twice
    for (const [keyId, workspaceId] of retried) await saveForgetting(workspaceId, keyId).catch(() => {})
  }

  function scheduleResave () {
    if (closed || resave) return
    resave = setTimeout(() => {
      resave = undefined
      const writing = saveUnsaved().finally(() => { if (resaving === writing) resaving = undefined })
      resaving = writing
    }, resaveMs).unref()
    resaveMs = Math.min(resaveMs * 2, RESAVE_MAX_MS)
  }

  /** A command on the shared state; undefined without Redis, or when it cannot answer (the caller decides alone). */
  async function shared<T> (command: (client: Redis | Cluster) => Promise<T>): Promise<T | undefined> {
    if (!redis) return undefined
    try {
      return await command(redis)
    } catch {
      return undefined
    }
  }

  return {
    blocked (keyId) {
      const block = blocks.get(keyId)
      if (!block) return undefined
      if (block.until <= clock()) {
        // an open breaker's time is over: half-open, the caller must claim the probe
        if (block.reason === 'breaker_open') return { reason: 'breaker_open', until: block.until }
        blocks.delete(keyId)
        return undefined
      }
      return { reason: block.reason, until: block.until }
    },

    async rateLimited (workspaceId, keyId, waitMs, spendLimit) {
      if (spendLimit) return share(workspaceId, keyId, 'spend_limit', Math.max(waitMs ?? 0, spendLimitMs))
      return share(workspaceId, keyId, 'rate_limited', waitMs ?? 'backoff')
    },

    async failed (workspaceId, keyId) {
      if (isForgotten(keyId)) return
      const now = clock()
      // a failed probe: the breaker opens again at once, for everyone
      if (blocks.get(keyId)?.reason === 'breaker_open') {
        blocks.delete(keyId)
        await share(workspaceId, keyId, 'breaker_open', openMs)
        return
      }
      const key = failuresKey(workspaceId, keyId)
      const counted = await shared((client) =>
        client.eval(COUNT_FAILURE, 2, key, forgottenKey(workspaceId, keyId), windowMs) as Promise<number | string>)
      if (counted === FORGOTTEN_REPLY) return remember(keyId)
      let count = counted === undefined ? undefined : Number(counted)
      if (count === undefined) {
        const recent = (failures.get(keyId) ?? []).filter((at) => at > now - windowMs)
        recent.push(now)
        failures.set(keyId, recent)
        count = recent.length
      }
      if (count >= threshold) {
        await shared((client) => client.del(key))
        failures.delete(keyId)
        await share(workspaceId, keyId, 'breaker_open', openMs)
      }
    },

    succeeded (workspaceId, keyId) {
      const block = blocks.get(keyId)
      const hadStreak = streaks.has(keyId)
      if (!hadStreak && !(block?.reason === 'breaker_open')) return
      streaks.delete(keyId)
      failures.delete(keyId)
      // a successful probe closes the breaker for everyone; a success after 429s resets the backoff
      if (block?.reason === 'breaker_open') {
        blocks.delete(keyId)
        void bus.publish({ type: 'key-health', keyId, reason: 'breaker_open', remainingMs: 0 }).catch(() => {})
        if (redis) {
          void redis.del(blockKey(workspaceId, keyId)).catch(() => {})
          void redis.zrem(REGISTRY, `${workspaceId}:${keyId}`).catch(() => {})
        }
      }
      if (redis && hadStreak) void redis.del(streakKey(workspaceId, keyId)).catch(() => {})
    },

    load,

    cooling () {
      const now = clock()
      let count = 0
      for (const block of blocks.values()) if (block.until > now || block.reason === 'breaker_open') count++
      return count
    },

    noteQuota (workspaceId, keyId, headers) {
      const now = clock()
      if (isForgotten(keyId) || now - (quotaWritten.get(keyId) ?? 0) < 1_000) return
      const seen: Record<string, string> = {}
      for (const name in headers) {
        const value = headers[name]
        if (QUOTA_HEADER.test(name) && typeof value === 'string') seen[name] = value
      }
      if (Object.keys(seen).length === 0) return
      quotaWritten.set(keyId, now)
      const entry = { observedAt: new Date(now).toISOString(), headers: seen }
      quotas.set(keyId, { workspaceId, ...entry })
      if (redis) {
        void (redis.eval(KEEP_QUOTA, 2, quotaKey(workspaceId, keyId), forgottenKey(workspaceId, keyId),
          JSON.stringify(entry), 86_400_000) as Promise<number | string>)
          .then((kept) => { if (kept === FORGOTTEN_REPLY) remember(keyId) }, () => {})
      }
    },

    async quota (workspaceId, keyId) {
      if (redis) {
        const raw = await redis.get(quotaKey(workspaceId, keyId)).catch(() => null)
        if (raw) return JSON.parse(raw) as { observedAt: string, headers: Record<string, string> }
      }
      const local = quotas.get(keyId)
      return local ? { observedAt: local.observedAt, headers: local.headers } : null
    },

    breakers () {
      const now = clock()
      let open = 0
      let halfOpen = 0
      for (const block of blocks.values()) {
        if (block.reason !== 'breaker_open') continue
        if (block.until > now) open++
        else halfOpen++
      }
      return { open, halfOpen }
    },

    observedQuotas () {
      return [...quotas].map(([keyId, { workspaceId, observedAt, headers }]) =>
        ({ workspaceId, keyId, observedAt: Date.parse(observedAt), headers }))
    },

    async claimProbe (workspaceId, keyId) {
      const now = clock()
      const claimed = await shared((client) =>
        client.set(probeKey(workspaceId, keyId), '1', 'PX', openMs, 'NX'))
      if (claimed !== undefined) return claimed === 'OK'
      if ((probes.get(keyId) ?? 0) > now) return false
      probes.set(keyId, now + openMs)
      return true
    },

    async probeFree (workspaceId, keyId) {
      const taken = await shared((client) => client.exists(probeKey(workspaceId, keyId)))
      if (taken !== undefined) return taken === 0
      return (probes.get(keyId) ?? 0) <= clock()
    },

    async forget (workspaceId, keyId) {
      remember(keyId)
      await saveForgetting(workspaceId, keyId)
    },

    async close () {
      closed = true
      clearTimeout(resave)
      resave = undefined
      await resaving
    }
  }
}

/** Redis' `TIME` reply in epoch ms, to the microsecond. */
const redisNow = ([seconds, micros]: Array<number | string>) => Number(seconds) * 1000 + Number(micros) / 1000

/** A key's health in Redis, one entry a part, all in its workspace's hash slot (one script reaches them on a Cluster). */
const healthKey = (part: 'block' | 'streak' | 'failures' | 'probe' | 'quota' | 'forgotten') =>
  (workspaceId: string, keyId: string) => `tmt:{ws:${workspaceId}}:key:${keyId}:${part}`
const blockKey = healthKey('block')
const streakKey = healthKey('streak')
const failuresKey = healthKey('failures')
const probeKey = healthKey('probe')
const quotaKey = healthKey('quota')
const forgottenKey = healthKey('forgotten')
