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
   * replica, rather than lingering until it ends (an open breaker never does: it waits half-open for a probe).
   */
  forget (workspaceId: string, keyId: string): Promise<void>
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

// how long a measured offset to Redis' clock is trusted: NTP may correct either clock while a replica runs
const OFFSET_MAX_AGE_MS = 60_000

// extends a cooldown, never shortens it: returns the remaining ms and the end, by Redis' clock
const EXTEND = `
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
  const blocks = new Map<string, HeldBlock>()
  const streaks = new Map<string, number>() // 429s in a row without a hint, this replica's view when Redis is absent
  const failures = new Map<string, number[]>()
  const probes = new Map<string, number>()
  const quotas = new Map<string, { workspaceId: string, observedAt: string, headers: Record<string, string> }>()
  const quotaWritten = new Map<string, number>()
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
    if (message?.type === 'key-forgotten') return drop(message.keyId)
    if (message === null || message.type !== 'key-health') return
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
    const now = measurable ? await measure(measurable) : redisNow(await redis.time())
    // a block outlives its end by a second (EXTEND's PEXPIRE): a breaker half-open; anything older is gone
    await redis.zremrangebyscore(REGISTRY, '-inf', now - 1000)
    const members = await redis.zrangebyscore(REGISTRY, now - 1000, '+inf')
    await Promise.all(members.map(async (member) => {
      const [workspaceId, keyId] = member.split(':')
      const [until, reason] = await redis.hmget(blockKey(workspaceId, keyId), 'until', 'reason')
      if (until === null || reason === null) return
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
    const key = blockKey(workspaceId, keyId)
    const sent = clock()
    const extended = await shared((client) => (wait === 'backoff'
      ? client.eval(BACKOFF, 2, key, streakKey(workspaceId, keyId), backoffBase, backoffMax, Math.random(), backoffMax * 4)
      : client.eval(EXTEND, 1, key, wait, reason)) as Promise<[number, number, number?, string?]>)
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
      const now = clock()
      // a failed probe: the breaker opens again at once, for everyone
      if (blocks.get(keyId)?.reason === 'breaker_open') {
        blocks.delete(keyId)
        await share(workspaceId, keyId, 'breaker_open', openMs)
        return
      }
      const key = failuresKey(workspaceId, keyId)
      let count = await shared(async (client) => {
        const counted = Number(await client.incr(key))
        if (counted === 1) await client.pexpire(key, windowMs)
        return counted
      })
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
      if (now - (quotaWritten.get(keyId) ?? 0) < 1_000) return
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
        void redis.set(quotaKey(workspaceId, keyId), JSON.stringify(entry), 'PX', 86_400_000).catch(() => {})
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
      drop(keyId)
      // one hash slot (the workspace's): one DEL, on a Cluster too; the registry is a slot of its own
      await shared((client) => Promise.all([
        client.del(blockKey(workspaceId, keyId), streakKey(workspaceId, keyId), failuresKey(workspaceId, keyId),
          probeKey(workspaceId, keyId), quotaKey(workspaceId, keyId)),
        client.zrem(REGISTRY, `${workspaceId}:${keyId}`)
      ]))
      await bus.publish({ type: 'key-forgotten', keyId })
    }
  }
}

/** Redis' `TIME` reply in epoch ms, to the microsecond. */
const redisNow = ([seconds, micros]: Array<number | string>) => Number(seconds) * 1000 + Number(micros) / 1000

const blockKey = (workspaceId: string, keyId: string) => `tmt:{ws:${workspaceId}}:key:${keyId}:block`
const streakKey = (workspaceId: string, keyId: string) => `tmt:{ws:${workspaceId}}:key:${keyId}:streak`
const failuresKey = (workspaceId: string, keyId: string) => `tmt:{ws:${workspaceId}}:key:${keyId}:failures`
const probeKey = (workspaceId: string, keyId: string) => `tmt:{ws:${workspaceId}}:key:${keyId}:probe`
const quotaKey = (workspaceId: string, keyId: string) => `tmt:{ws:${workspaceId}}:key:${keyId}:quota`
