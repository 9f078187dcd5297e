import { Type, type Static } from '@sinclair/typebox'
import { envSchema } from 'env-schema'

// Node's timers hold at most 2^31 - 1 ms; a longer delay fires after 1 ms (TimeoutOverflowWarning), so a timeout meant
// as "no limit" would abort every call at once
export const MAX_TIMER_MS = 2_147_483_647
export const DEFAULT_WORKSPACE_LABEL_LIMIT = 1_000

const ConfigSchema = Type.Object({
  PORT: Type.Integer({ default: 8080, minimum: 0, maximum: 65535 }),
  HOST: Type.String({ default: '0.0.0.0' }),
  // set: GET /metrics is served on this port, without a credential, and not on PORT, so that only the scraper reaches it
  METRICS_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
  // the address METRICS_PORT listens on (unset: HOST): loopback, for a scraper on the same host
  METRICS_HOST: Type.Optional(Type.String({ minLength: 1 })),
  LOG_LEVEL: Type.String({ default: 'info' }),
  // false: the per-call metrics carry no workspace label (an agency with very many workspaces); the scrape-time
  // gauges (spend, caps, Mistral's quota) keep it
  METRICS_WORKSPACE_LABEL: Type.Boolean({ default: true }),
  // how many workspace slugs a replica labels, in the order it sees them, before the rest share `__other__`: every
  // family naming a workspace has up to this many series more per other label. Past 100,000 one family outgrows
  // what a Prometheus holds comfortably: METRICS_WORKSPACE_LABEL=false is the way there
  METRICS_WORKSPACE_LABEL_LIMIT: Type.Integer({ default: DEFAULT_WORKSPACE_LABEL_LIMIT, minimum: 1, maximum: 100_000 }),
  // unset: embedded PostgreSQL (PGlite) in DATA_DIR
  DATABASE_URL: Type.Optional(Type.String({ minLength: 1 })),
  // on PostgreSQL, the longest one of the gateway's statements may wait (on a lock another session holds, on a
  // connection gone silent) before it is given up, as if PostgreSQL were down (a 503); migrations are not bounded by it
  PG_QUERY_TIMEOUT_MS: Type.Integer({ default: 10_000, minimum: 100, maximum: MAX_TIMER_MS }),
  DATA_DIR: Type.String({ default: './data' }),
  // usage records wait here until PostgreSQL has them (default: DATA_DIR/spool); one folder per running gateway
  USAGE_SPOOL_DIR: Type.Optional(Type.String({ minLength: 1 })),
  // unset: in-process store, one replica only
  REDIS_URL: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_COMMAND_TIMEOUT_MS: Type.Integer({ default: 1_000, minimum: 10, maximum: MAX_TIMER_MS }),
  MISTRAL_BASE_URL: Type.String({ default: 'https://api.mistral.ai' }),
  // 'id:<base64 of 32 bytes>,...': the first wraps new data keys, all of them unwrap
  TRAMONTANE_MASTER_KEYS: Type.Optional(Type.String({ minLength: 1 })),
  TRAMONTANE_ADMIN_TOKEN: Type.Optional(Type.String({ minLength: 32 })),
  // base64 images and documents travel inside JSON bodies (Mistral accepts images up to 20 MB)
  BODY_LIMIT_BYTES: Type.Integer({ default: 64 * 1024 * 1024, minimum: 1024 }),
  UPSTREAM_CONNECT_TIMEOUT_MS: Type.Integer({ default: 10_000, minimum: 1, maximum: MAX_TIMER_MS }),
  // a long non-streamed generation sends no header until it is done
  UPSTREAM_HEADERS_TIMEOUT_MS: Type.Integer({ default: 600_000, minimum: 1, maximum: MAX_TIMER_MS }),
  // Mistral itself drops a stream after 10 minutes of silence (known-limitations)
  UPSTREAM_IDLE_TIMEOUT_MS: Type.Integer({ default: 600_000, minimum: 1, maximum: MAX_TIMER_MS }),
  UPSTREAM_TOTAL_TIMEOUT_MS: Type.Integer({ default: 3_600_000, minimum: 1, maximum: MAX_TIMER_MS }),
  UPSTREAM_CONNECTIONS: Type.Integer({ default: 256, minimum: 1 }),
  // how long a call may wait for one of them while all are busy, then 503 upstream_busy (HAProxy's `timeout queue`
  // defaults to its connect timeout alike): waiting, it holds its concurrency slot and its reservation
  UPSTREAM_QUEUE_TIMEOUT_MS: Type.Integer({ default: 10_000, minimum: 1, maximum: MAX_TIMER_MS }),
  // retries happen only before the first byte reaches the client (DESIGN.md): 429 after failover, 502-504, a status
  // outside 200-599, connection errors and timeouts before Mistral answers
  UPSTREAM_RETRIES: Type.Integer({ default: 2, minimum: 0, maximum: 10 }),
  UPSTREAM_RETRY_MAX_WAIT_MS: Type.Integer({ default: 10_000, minimum: 0, maximum: MAX_TIMER_MS }),
  // retries are at most this share of upstream calls (plus a small burst), so an outage is not multiplied
  UPSTREAM_RETRY_BUDGET_PERCENT: Type.Integer({ default: 10, minimum: 0, maximum: 100 }),
  // a call for a cooling key waits for the cooldown if it ends within this, instead of answering 429
  UPSTREAM_COOLDOWN_HOLD_MS: Type.Integer({ default: 3_000, minimum: 0, maximum: MAX_TIMER_MS }),
  UPSTREAM_BACKOFF_MAX_MS: Type.Integer({ default: 60_000, minimum: 100, maximum: MAX_TIMER_MS }),
  BREAKER_THRESHOLD: Type.Integer({ default: 5, minimum: 1 }),
  BREAKER_OPEN_MS: Type.Integer({ default: 15_000, minimum: 100, maximum: MAX_TIMER_MS }),
  // a call a spend cap would afford once the calls in flight settle waits this long for them, then is refused
  ADMISSION_HOLD_MS: Type.Integer({ default: 10_000, minimum: 0, maximum: MAX_TIMER_MS }),
  TOKEN_CACHE_TTL_MS: Type.Integer({ default: 10_000, minimum: 0, maximum: MAX_TIMER_MS }),
  // how often pending batch jobs are checked upstream, to bill each once it has ended
  BATCH_POLL_INTERVAL_MS: Type.Integer({ default: 60_000, minimum: 50, maximum: MAX_TIMER_MS }),
  // on SIGTERM, how long readiness answers 503 while calls are still served, before the listener closes: the time a
  // load balancer takes to stop routing here (0: close at once, for a plain process with none in front). No load
  // balancer takes minutes; a longer value is a typo that would hold every shutdown
  SHUTDOWN_DELAY_MS: Type.Integer({ default: 0, minimum: 0, maximum: 600_000 }),
  // after SHUTDOWN_DELAY_MS, how long calls in flight may take to finish before their connections are cut
  SHUTDOWN_GRACE_MS: Type.Integer({ default: 30_000, minimum: 0, maximum: MAX_TIMER_MS })
})

export type Config = Readonly<Static<typeof ConfigSchema>>

/** Parses the environment once; the only reader of process.env. */
export function loadConfig (env: Record<string, string | undefined> = process.env): Config {
  const data: Record<string, string> = {}
  for (const key of Object.keys(ConfigSchema.properties)) {
    const value = env[key]
    if (value !== undefined && value !== '') data[key] = value
  }
  return Object.freeze(envSchema<Config>({ schema: ConfigSchema, data, dotenv: false }))
}
