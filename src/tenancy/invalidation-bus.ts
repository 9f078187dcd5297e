import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Cluster, Redis } from 'ioredis'

/** What one replica tells all others so that their caches forget at once (DESIGN.md: revocation is pushed). */
export type Invalidation =
  | { type: 'token', hash: string } // revoked or changed: hex sha256 of the token
  | { type: 'workspace', workspaceId: string } // settings, status, deletion, keys
  | { type: 'prices' } // an operator changed the price book: reload it
  | {
    type: 'key-health'
    keyId: string
    reason: 'rate_limited' | 'spend_limit' | 'breaker_open'
    /** the block's end, epoch ms by Redis' clock; absent from the messages of older replicas */
    until?: number
    /** what was left of the block when it was set (0: lifted); all that older replicas read */
    remainingMs: number
  }
  | { type: 'spend-recovery', workspaceId: string } // Redis lost the workspace's counters: put back calls in flight
  | { type: 'key-forgotten', keyId: string } // a Mistral key replaced or deleted: forget its health (cooldown, breaker)

export interface InvalidationBus {
  /**
   * Never rejects: the change it announces is committed (and audited) by then, and must be answered as such. A message
   * about something cached that Redis cannot take is not lost for good: once Redis takes messages again, every replica
   * is told to forget everything (as a replica that reconnects does), and caches have a time limit besides.
   */
  publish (message: Invalidation): Promise<void>
  /** `null` means "messages may have been missed": forget everything. */
  subscribe (listener: (message: Invalidation | null) => void): void
  close (): Promise<void>
}

const CHANNEL = 'tmt:invalidations'
// what every replica reads as "messages may have been missed": `null`, which older replicas understand too
const FORGET_EVERYTHING = 'null'
// what another replica caches and would keep past a change it did not hear of (a forgotten key's breaker, held
// half-open for good, is such a thing: its reload drops it); a lost key-health notice leaves none (a replica meets the
// block itself), nor a lost spend recovery (calls in flight are renewed on a timer besides)
const CACHE_INVALIDATIONS: ReadonlySet<Invalidation['type']> =
  new Set(['token', 'workspace', 'prices', 'key-forgotten'])
// a forget-everything that timed out on a connection still up (no 'ready' follows) is tried again after this, twice as
// long at each failure up to a minute: Redis may have delivered it all the same, and each one it delivers empties every
// replica's caches
const REPUBLISH_FIRST_MS = 1_000
const REPUBLISH_MAX_MS = 60_000

export function createLocalBus (): InvalidationBus {
  const emitter = new EventEmitter()
  return {
    async publish (message) { emitter.emit('message', message) },
    subscribe (listener) { emitter.on('message', listener) },
    async close () { emitter.removeAllListeners() }
  }
}

export function createRedisBus (client: Redis | Cluster, subscriber: Redis | Cluster): InvalidationBus {
  const emitter = new EventEmitter()
  // a replica hears its own messages when it publishes them: their echo from Redis is dropped, or it would handle
  // each twice (and, for a cooldown counted from the arrival, as before a first offset measurement, extend it by the
  // time pub/sub took to bring it back)
  const origin = randomUUID()
  let connectedBefore = false
  subscriber.on('message', (channel: string, raw: string) => {
    if (channel !== CHANNEL) return
    try {
      const message = JSON.parse(raw) as (Invalidation & { origin?: string }) | null
      if (message?.origin === origin) return
      if (message !== null) delete message.origin
      emitter.emit('message', message)
    } catch {
      // unreadable, or a listener failed on it: what it said is unknown, so every cache starts over
      emitter.emit('message', null)
    }
  })
  // after a reconnect anything published meanwhile is lost: every cache starts over
  subscriber.on('ready', () => {
    if (connectedBefore) emitter.emit('message', null)
    connectedBefore = true
  })
  subscriber.subscribe(CHANNEL).catch(() => {})

  // A message Redis did not take (the command client queues nothing while disconnected) would leave the other replicas
  // with what it announced the end of (a replaced Mistral key, a revoked token) until their caches expire: once
  // Redis takes messages again they are all told to forget everything, this one included
  let missed = false
  let retry: NodeJS.Timeout | undefined
  let retryMs = REPUBLISH_FIRST_MS
  const send = (payload: string, invalidatesCache: boolean) => client.publish(CHANNEL, payload).then(() => {
    if (payload === FORGET_EVERYTHING) retryMs = REPUBLISH_FIRST_MS // taken: the next failure starts over
  }, () => {
    if (!invalidatesCache) return
    missed = true
    if (client.status !== 'ready' || retry) return // 'ready' announces it
    retry = setTimeout(announceMissed, retryMs).unref()
    retryMs = Math.min(retryMs * 2, REPUBLISH_MAX_MS)
  })
  function announceMissed () {
    clearTimeout(retry)
    retry = undefined
    if (!missed) return
    missed = false
    void send(FORGET_EVERYTHING, true)
  }
  client.on('ready', announceMissed)

  return {
    async publish (message) {
      // the local replica must forget even when Redis is unreachable
      emitter.emit('message', message)
      await send(JSON.stringify({ ...message, origin }), CACHE_INVALIDATIONS.has(message.type))
    },
    subscribe (listener) { emitter.on('message', listener) },
    async close () {
      clearTimeout(retry)
      client.off('ready', announceMissed)
      emitter.removeAllListeners()
    }
  }
}
