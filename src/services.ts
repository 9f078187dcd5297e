import { join } from 'node:path'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createAuditLog, type AuditLog } from './audit/audit-log.js'
import type { Config } from './config.js'
import type { DatabaseHandle } from './db/client.js'
import { openRedis, redisReady, type RedisHandle } from './redis.js'
import { createLocalBus, createRedisBus, type InvalidationBus } from './tenancy/invalidation-bus.js'
import { createKeyCipher } from './tenancy/key-crypto.js'
import { parseMasterKeys } from './tenancy/master-keys.js'
import { createMistralKeyStore, type MistralKeyStore } from './tenancy/mistral-keys.js'
import { createTokenStore, type TokenStore } from './tenancy/tokens.js'
import { createWorkspaceStore, type WorkspaceStore } from './tenancy/workspaces.js'
import { createAdmission, type Admission } from './limits/admission.js'
import { createMemoryStore } from './limits/memory-store.js'
import { createRedisStore } from './limits/redis-store.js'
import { createPriceBook, type PriceBook } from './pricing/price-book.js'
import { formatMoney } from './pricing/money.js'
import { createLedgerSums } from './usage/ledger-sums.js'
import { createKeyHealth, type KeyHealth } from './resilience/key-health.js'
import { operationAreas } from './proxy/operations.js'
import { createUsageRecorder, type UsageRecorder } from './usage/recorder.js'
import { createBatchWatcher, type BatchWatcher } from './usage/batch-watcher.js'
import { createBatchUpstream } from './usage/batch-upstream.js'
import { createSpool } from './usage/spool.js'

export interface Tenancy {
  workspaces: WorkspaceStore
  keys: MistralKeyStore
  tokens: TokenStore
}

declare module 'fastify' {
  interface FastifyInstance {
    database: DatabaseHandle
    redis: RedisHandle | null
    tenancy: Tenancy
    audit: AuditLog
    usage: UsageRecorder
    /** the shipped price table merged with the operator's overrides; reloads when any replica changes it */
    prices: PriceBook
    admission: Admission
    /** pushes cache invalidations and key health to every replica */
    bus: InvalidationBus
    /** 429 cooldowns, breakers and quota of the Mistral keys, shared by the replicas */
    keyHealth: KeyHealth
    /** bills each batch job created through the gateway once, when it ends */
    batchJobs: BatchWatcher
  }
}

interface ServicesOptions {
  config: Config
  database: DatabaseHandle
}

/** Domain services, built from plain factories; the order here is the dependency graph. */
async function services (app: FastifyInstance, { config, database }: ServicesOptions) {
  const redis = config.REDIS_URL ? openRedis(config.REDIS_URL, config.REDIS_COMMAND_TIMEOUT_MS) : null
  const bus: InvalidationBus = redis ? createRedisBus(redis.client, redis.subscriber) : createLocalBus()
  const { db } = database
  const cipher = createKeyCipher(parseMasterKeys(config.TRAMONTANE_MASTER_KEYS ?? ''))
  const keys = createMistralKeyStore({ db, cipher, bus })
  const tokens = createTokenStore({
    db,
    bus,
    cacheTtlMs: config.TOKEN_CACHE_TTL_MS,
    scopes: operationAreas,
    log: app.log
  })
  const usage = createUsageRecorder({
    db, log: app.log, spool: createSpool({ dir: config.USAGE_SPOOL_DIR ?? join(config.DATA_DIR, 'spool') })
  })
  const prices = createPriceBook({ db, bus, log: app.log })
  await prices.load() // a replica must not serve one call at prices the operator has overridden

  app.decorate('database', database)
  app.decorate('redis', redis)
  app.decorate('bus', bus)
  const keyHealth = createKeyHealth({
    redis: redis?.client ?? null,
    bus,
    backoffMaxMs: config.UPSTREAM_BACKOFF_MAX_MS,
    breakerThreshold: config.BREAKER_THRESHOLD,
    breakerOpenMs: config.BREAKER_OPEN_MS,
    // a call that took a key before it was replaced ends within its total timeout (a minute more: its last updates)
    forgetForMs: config.UPSTREAM_TOTAL_TIMEOUT_MS + 60_000
  })
  if (redis) {
    // a replica that starts (or reconnects) after a 429 must know the cooldown before it sends that key upstream
    const loadKeyHealth = () => keyHealth.load().catch((err) => app.log.warn({ err }, 'key cooldowns not read from Redis'))
    redis.client.on('ready', () => { void loadKeyHealth() })
    await redisReady(redis.client, config.REDIS_COMMAND_TIMEOUT_MS).then(loadKeyHealth, () => {})
  }
  app.decorate('keyHealth', keyHealth)
  const workspaces = createWorkspaceStore({ db, maxHoldMs: config.UPSTREAM_RETRY_MAX_WAIT_MS })
  app.decorate('tenancy', { workspaces, keys, tokens })
  app.decorate('audit', createAuditLog({ db }))
  app.decorate('usage', usage)
  app.decorate('prices', prices)
  const admission = createAdmission({
    store: redis ? createRedisStore(redis.client) : createMemoryStore(),
    fallback: createMemoryStore(),
    ledger: createLedgerSums(db),
    flushLedger: () => usage.flush(),
    bus,
    log: app.log,
    formatMoney,
    holdMs: config.ADMISSION_HOLD_MS
  })
  app.decorate('admission', admission)
  const batchUpstream = createBatchUpstream(config, keyHealth)
  const batchJobs = createBatchWatcher({
    db,
    usage,
    prices,
    keys,
    workspaces: app.tenancy.workspaces,
    tokens,
    admission,
    upstream: batchUpstream,
    log: app.log,
    intervalMs: config.BATCH_POLL_INTERVAL_MS
  })
  app.decorate('batchJobs', batchJobs)

  app.addHook('onClose', async () => {
    // a check under way writes its record before the recorder flushes for the last time
    await batchJobs.close()
    await batchUpstream.close()
    prices.close()
    await admission.close()
    await usage.close()
    await keyHealth.close()
    await bus.close()
    await redis?.close()
    await database.close()
  })
}

export const servicesPlugin = fp(services, { name: 'services' })
