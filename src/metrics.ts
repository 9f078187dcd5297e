import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import fp from 'fastify-plugin'
import { requireAdminToken } from './admin/admin-auth.js'
import type { FastifyInstance } from 'fastify'
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import pkg from '../package.json' with { type: 'json' }
import { CounterCells, HistogramCells } from './metric-cells.js'
import { FALLBACK_MODEL } from './pricing/price-book.js'
import type { ObservedQuota } from './resilience/key-health.js'
import { DEFAULT_WORKSPACE_LABEL_LIMIT } from './config.js'
import type { ScrapeFacts, ScrapeFactsReader } from './scrape-facts.js'

// OpenTelemetry GenAI semantic conventions, in Prometheus form, plus the gateway's own accounting. Labels are
// bounded: a workspace slug (capped, then `__other__`), a model the price book knows (else `other`), an operation
// family, a status class, and on money the workspace's currency (an ISO 4217 code the operator set: a handful).
// Never token ids, user strings, prompts or raw paths (DESIGN.md).

// semconv buckets for gen_ai.client.token.usage and the duration histograms
const TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
const DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
// a millisecond or two on a healthy replica; seconds while admission waits (a cap's calls in flight, a store's loss)
const OVERHEAD_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
// statuses Mistral and the gateway answer with (MISTRAL-NOTES §3.2); anything else is `other`
const KNOWN_CODES = new Set([200, 201, 204, 400, 401, 403, 404, 408, 409, 410, 413, 415, 422, 429, 500, 502, 503, 504])
// Mistral's rate-limit headers, every generation (MISTRAL-NOTES §3.3): the older `bysize` ones count tokens
const QUOTA_HEADER = /^(?:x-)?ratelimit(bysize)?-(limit|remaining)(?:-(tokens|req))?(?:-(minute|month))?$/
// a minute's quota says nothing a minute after it was read: the window it counted has reset since. The first
// generation's headers name no window; the one they count resets within a minute too (its `-reset` is in seconds)
const MINUTE_MS = 60_000
// the workspace label of a call answered before its token was read (no token, an unknown one, an outage)
const NO_WORKSPACE = '__none__'
// the operation label of a call answered before it was classified
const NO_OPERATION = 'unknown'

export interface CallFacts {
  workspace: string
  operation: string
  /** the price book's canonical id (bounded by the book); undefined: `other` */
  model: string | undefined
  status: number
  durationMs: number
  upstreamMs?: number
  /** the answer was an event stream, metered or not (the `stream` label); absent: a time to first token says so */
  streamed?: boolean
  ttftMs?: number | null
  inputTokens?: number
  outputTokens?: number
  billedMicros?: number
  /**
   * the workspace's currency, which `billedMicros` is in: money of different currencies never shares a series
   * (absent: the `currency` label is empty)
   */
  currency?: string
}

/** A cost known only after the fact: a batch job, billed when it ends (src/usage/batch-watcher.ts). */
export interface BilledFacts {
  workspace: string
  operation: string
  /** the price book's canonical id (bounded by the book); undefined: `other` */
  model: string | undefined
  status: number
  inputTokens: number
  outputTokens: number
  billedMicros: number
  /** the workspace's currency, which `billedMicros` is in */
  currency: string
}

export interface Metrics {
  registry: Registry
  /** one proxied call, once it is over */
  call (facts: CallFacts): void
  /**
   * Counts a cost billed apart from any call (a batch job) in the requests, tokens and spend counters, and in no
   * histogram: a job lasts hours, and its tokens are many calls'; either would skew the per-call distributions.
   */
  billed (facts: BilledFacts): void
  /**
   * A call of /v1 or /v2 answered before the meter took it (token, route, body or admission refused, or could not be
   * checked): counted in the requests counter only, so that it holds every answer, the gateway's own 5xx included.
   * `workspace` and `operation` as far as they are known.
   */
  unmetered (workspace: string | undefined, operation: string | undefined, status: number): void
  denied (workspace: string, limit: string): void
  upstream (status: number): void
  retried (): void
  streamEnded (reason: 'complete' | 'client_abort' | 'upstream_cut' | 'upstream_stalled' | 'upstream_timeout'): void
  inFlight (delta: 1 | -1): void
  thresholdCrossed (period: string, percent: number): void
  /** The exposition text: reads the scrape-time facts once, then every family. */
  scrape (): Promise<string>
}

export interface MetricsOptions {
  /** the number of records waiting for PostgreSQL, read at scrape time */
  spoolDepth: () => number
  /** seconds the oldest of them has waited (0 when none waits), read at scrape time */
  spoolOldestAge: () => number
  /** whether the usage spool took the last record written to it, read at scrape time */
  spoolWritable: () => boolean
  /** cooling Mistral keys, read at scrape time */
  coolingKeys: () => number
  /** open and half-open breakers, read at scrape time */
  breakers: () => { open: number, halfOpen: number }
  /** Mistral's last rate-limit headers per key, read at scrape time */
  quotas: () => ObservedQuota[]
  /** proxied calls waiting for a free connection to Mistral, read at scrape time */
  upstreamQueued: () => number
  /** spend, caps and key statuses from PostgreSQL, read at scrape time */
  facts: ScrapeFactsReader
  /**
   * false: the workspace label is empty on the families every call adds to; the scrape-time ones keep it (Mistral's
   * quota per key, a key's name meaning nothing without its workspace; spend and caps, which the cap alerts join by
   * it), each capped at `workspaceLabelLimit` series, and so do the refusals of limits and caps, which the cap alert
   * reads. Money keeps its `currency` label either way
   */
  workspaceLabel?: boolean
  /** how many workspace slugs are labelled before the rest share `__other__` (METRICS_WORKSPACE_LABEL_LIMIT) */
  workspaceLabelLimit?: number
}

export function createMetrics (options: MetricsOptions): Metrics {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const registers = [registry]
  // also the Mistral keys whose quota is charted: a workspace has a handful, so as many as there are workspace labels
  const maxWorkspaces = options.workspaceLabelLimit ?? DEFAULT_WORKSPACE_LABEL_LIMIT
  const seenWorkspaces = new Set<string>()
  const overflow = new Counter({
    name: 'tramontane_metric_label_overflow_total',
    help: 'Calls and denials labelled __other__ because the workspace label cap was reached',
    registers
  })

  // the families every call adds to: cells of the gateway's own (src/metric-cells.ts), label values in this order
  const tokens = new HistogramCells('gen_ai_client_token_usage', 'Tokens used per call (OTel gen_ai.client.token.usage)',
    ['gen_ai_operation_name', 'gen_ai_request_model', 'gen_ai_token_type', 'workspace'], TOKEN_BUCKETS, registry)
  const duration = new HistogramCells('gen_ai_client_operation_duration_seconds', 'Duration of a call as the client saw it',
    ['gen_ai_operation_name', 'gen_ai_request_model', 'status_class', 'workspace'], DURATION_BUCKETS, registry)
  // `stream` tells apart the answers whose duration is the whole generation as it streamed (their delay shows in
  // the time to first token) from those that come in one piece
  const serverDuration = new HistogramCells('gen_ai_server_request_duration_seconds',
    'Duration of the upstream call to Mistral', ['gen_ai_operation_name', 'gen_ai_request_model', 'stream'],
    DURATION_BUCKETS, registry)
  const ttft = new HistogramCells('gen_ai_server_time_to_first_token_seconds',
    'Time to the first byte of a streamed answer', ['gen_ai_operation_name', 'gen_ai_request_model'], TTFT_BUCKETS, registry)
  // the client's duration minus Mistral's part, call by call: the two histograms above hold different calls (the
  // client's also those Mistral never answered), so the difference of their means is no call's overhead. By
  // operation alone: a model changes nothing before the hand-over, and one label value is a cell lookup with no key
  // to build (tens of ns a call, where two labels' cost some hundreds)
  const overhead = new HistogramCells('tramontane_gateway_overhead_seconds',
    'Time a call Mistral answered spent in the gateway before it was handed to Mistral (token, body, admission)',
    ['operation'], OVERHEAD_BUCKETS, registry)
  const requests = new CounterCells('tramontane_requests_total', 'Proxied calls by outcome',
    ['workspace', 'operation', 'model', 'status_class'], registry)
  const tokenTotal = new CounterCells('tramontane_tokens_total', 'Tokens Mistral reported',
    ['workspace', 'operation', 'model', 'type'], registry)
  // by currency whatever `workspaceLabel` says: a sum of euros and dollars means nothing
  const spend = new CounterCells('tramontane_spend_micros_total', 'Billed spend in micro-units of each workspace currency',
    ['workspace', 'operation', 'model', 'currency'], registry)
  const denials = new Counter({
    name: 'tramontane_rate_limit_denials_total', help: 'Calls the gateway refused, by the limit that refused them',
    labelNames: ['workspace', 'limit'], registers
  })
  const upstreamResponses = new CounterCells('tramontane_upstream_responses_total',
    'Mistral answers by status class and code (known codes, else other)', ['status_class', 'code'], registry)
  const retries = new Counter({ name: 'tramontane_upstream_retries_total', help: 'Upstream calls retried', registers })
  const streams = new Counter({
    name: 'tramontane_stream_terminations_total', help: 'Streams ended, by how', labelNames: ['reason'], registers
  })
  const thresholds = new Counter({
    name: 'tramontane_spend_threshold_crossings_total', help: 'Spend cap thresholds crossed (once per cap and period)',
    labelNames: ['period', 'percent'], registers
  })
  const inFlight = new Gauge({ name: 'tramontane_in_flight_calls', help: 'Proxied calls in flight on this replica', registers })
  new Gauge({
    name: 'tramontane_usage_spool_depth', help: 'Usage records waiting to be written to PostgreSQL', registers,
    collect () { this.set(options.spoolDepth()) }
  })
  // what the spool alert reads: the depth of a healthy busy replica is never 0 when scraped, this age stays under a
  // flush interval (200 ms) until PostgreSQL stops taking records
  new Gauge({
    name: 'tramontane_usage_spool_oldest_age_seconds',
    help: 'How long the oldest usage record waiting for PostgreSQL has waited (0 when none waits)', registers,
    collect () { this.set(options.spoolOldestAge()) }
  })
  new Gauge({
    name: 'tramontane_usage_spool_writable',
    help: '1 while the usage spool takes records, 0 since a write to it failed (records still reach PostgreSQL, ' +
      'with no copy on disk)',
    registers,
    collect () { this.set(options.spoolWritable() ? 1 : 0) }
  })
  new Gauge({
    name: 'tramontane_upstream_queued_calls',
    help: 'Calls waiting for a connection to Mistral: all UPSTREAM_CONNECTIONS of this replica are busy', registers,
    collect () { this.set(options.upstreamQueued()) }
  })
  new Gauge({
    name: 'tramontane_upstream_cooldowns_active', help: 'Mistral keys cooling down after a 429 or an open breaker', registers,
    collect () { this.set(options.coolingKeys()) }
  })
  new Gauge({
    name: 'tramontane_build_info', help: 'Version of the gateway', labelNames: ['version'], registers
  }).set({ version: pkg.version }, 1)
  new Gauge({
    name: 'tramontane_upstream_breakers',
    help: 'Mistral keys whose circuit breaker is open or half-open, as this replica knows',
    labelNames: ['state'], registers,
    collect () {
      const { open, halfOpen } = options.breakers()
      this.set({ state: 'open' }, open)
      this.set({ state: 'half_open' }, halfOpen)
    }
  })

  // read from PostgreSQL once per scrape (`scrape` below), then handed to the families that show them
  let scraped: ScrapeFacts | undefined
  new Gauge({
    name: 'tramontane_mistral_keys', help: 'Mistral keys of live workspaces by status (invalid: Mistral answered 401)',
    labelNames: ['status'], registers,
    collect () {
      if (!scraped) return
      this.set({ status: 'active' }, scraped.keysByStatus.active)
      this.set({ status: 'invalid' }, scraped.keysByStatus.invalid)
    }
  })
  new Gauge({
    name: 'tramontane_workspace_spend_micros', help: 'Billed spend of the current calendar period, from the ledger',
    labelNames: ['workspace', 'currency', 'period'], registers,
    collect () {
      if (!scraped) return
      this.reset()
      scraped.spend.forEach((entry, index) => {
        const workspace = scrapeLabel(entry.workspace, index)
        const { currency } = entry
        // `__other__` sums the workspaces past the cap: one series per currency
        for (const [period, micros] of Object.entries(entry.spent)) this.inc({ workspace, currency, period }, micros)
      })
    }
  })
  new Gauge({
    name: 'tramontane_workspace_cap_micros', help: 'Spend cap of each period, where the workspace has one',
    labelNames: ['workspace', 'currency', 'period'], registers,
    collect () {
      if (!scraped) return
      this.reset()
      scraped.spend.forEach((entry, index) => {
        const workspace = scrapeLabel(entry.workspace, index)
        // a sum of caps means nothing: `__other__` has spend only
        if (workspace !== entry.workspace) return
        const { currency } = entry
        for (const [period, micros] of Object.entries(entry.caps)) this.set({ workspace, currency, period }, micros)
      })
    }
  })
  const quotaLabels = ['workspace', 'key', 'resource', 'window']
  const quotaRemaining = new Gauge({
    name: 'tramontane_mistral_quota_remaining', help: 'What Mistral last said was left of a key\'s rate limit',
    labelNames: quotaLabels, registers
  })
  const quotaLimit = new Gauge({
    name: 'tramontane_mistral_quota_limit', help: 'The rate limit Mistral last reported for a key',
    labelNames: quotaLabels, registers
  })

  const workspaceOf = (slug: string) => options.workspaceLabel === false ? '' : boundedWorkspace(slug)
  // the first `maxWorkspaces` slugs this process sees, then `__other__`
  const boundedWorkspace = (slug: string) => {
    if (seenWorkspaces.has(slug)) return slug
    if (seenWorkspaces.size < maxWorkspaces) {
      seenWorkspaces.add(slug)
      return slug
    }
    overflow.inc()
    return '__other__'
  }
  // scrape-time families rank workspaces as the facts do (capped first, then by spend): the rest are `__other__`. They
  // keep the label whatever `workspaceLabel` says: one series per capped workspace at most (the limit, then one), and
  // the cap alerts join spend to cap by it
  const scrapeLabel = (slug: string, index: number) => index < maxWorkspaces ? slug : '__other__'
  // the operator's catch-all price row (`*`) prices models the book does not know: they are `other` too
  const modelOf = (model: string | undefined) => model === undefined || model === FALLBACK_MODEL ? 'other' : model
  const statusClass = (status: number) => `${Math.floor(status / 100)}xx`

  function setQuotas (observed: ObservedQuota[], names: ScrapeFacts['keyNames']) {
    quotaRemaining.reset()
    quotaLimit.reset()
    const now = Date.now()
    let keys = 0
    for (const { keyId, observedAt, headers } of observed) {
      const name = names.get(keyId)
      if (!name || keys++ >= maxWorkspaces) continue
      for (const [header, value] of Object.entries(headers)) {
        const match = QUOTA_HEADER.exec(header)
        if (!match || !Number.isFinite(Number(value))) continue
        const [, bySize, kind, resource, window = 'unspecified'] = match
        // a value of a window that has reset since would stand for ever (and win the panel's min across replicas)
        if (!current(window, observedAt, now)) continue
        const labels = {
          workspace: name.workspace,
          key: name.key,
          resource: bySize || resource === 'tokens' ? 'tokens' : 'requests',
          window
        }
        if (kind === 'remaining') quotaRemaining.set(labels, Number(value))
        else quotaLimit.set(labels, Number(value))
      }
    }
  }

  return {
    registry,
    call (facts) {
      const workspace = workspaceOf(facts.workspace)
      const model = modelOf(facts.model)
      const operation = facts.operation
      const status = statusClass(facts.status)
      requests.inc(1, workspace, operation, model, status)
      duration.observe(facts.durationMs / 1000, operation, model, status, workspace)
      // the meter gives a time to first token for streamed answers only
      const ttftMs = facts.ttftMs ?? undefined
      if (facts.upstreamMs !== undefined) {
        const streamed = facts.streamed ?? ttftMs !== undefined
        serverDuration.observe(facts.upstreamMs / 1000, operation, model, streamed ? 'true' : 'false')
        overhead.observe((facts.durationMs - facts.upstreamMs) / 1000, operation)
      }
      if (ttftMs !== undefined) ttft.observe(ttftMs / 1000, operation, model)
      if (facts.inputTokens) {
        tokens.observe(facts.inputTokens, operation, model, 'input', workspace)
        tokenTotal.inc(facts.inputTokens, workspace, operation, model, 'input')
      }
      if (facts.outputTokens) {
        tokens.observe(facts.outputTokens, operation, model, 'output', workspace)
        tokenTotal.inc(facts.outputTokens, workspace, operation, model, 'output')
      }
      if (facts.billedMicros) spend.inc(facts.billedMicros, workspace, operation, model, facts.currency ?? '')
    },
    billed (facts) {
      const workspace = workspaceOf(facts.workspace)
      const model = modelOf(facts.model)
      requests.inc(1, workspace, facts.operation, model, statusClass(facts.status))
      if (facts.inputTokens) tokenTotal.inc(facts.inputTokens, workspace, facts.operation, model, 'input')
      if (facts.outputTokens) tokenTotal.inc(facts.outputTokens, workspace, facts.operation, model, 'output')
      if (facts.billedMicros) spend.inc(facts.billedMicros, workspace, facts.operation, model, facts.currency)
    },
    unmetered (workspace, operation, status) {
      // an unknown workspace takes none of the labels the cap allows
      const label = workspace !== undefined ? workspaceOf(workspace)
        : options.workspaceLabel === false ? '' : NO_WORKSPACE
      requests.inc(1, label, operation ?? NO_OPERATION, 'other', statusClass(status))
    },
    // a refusal names its workspace whatever `workspaceLabel` says: the cap alert tells the operator which client is
    // blocked by it (a refusal is rare, and its series are as bounded as the scrape-time ones)
    denied (workspace, limit) { denials.inc({ workspace: boundedWorkspace(workspace), limit }) },
    upstream (status) {
      const code = KNOWN_CODES.has(status) ? String(status) : 'other'
      upstreamResponses.inc(1, statusClass(status), code)
    },
    retried () { retries.inc() },
    streamEnded (reason) { streams.inc({ reason }) },
    inFlight (delta) { inFlight.inc(delta) },
    thresholdCrossed (period, percent) { thresholds.inc({ period, percent: String(percent) }) },
    async scrape () {
      const observed = options.quotas()
      scraped = await options.facts.read(observed.map((entry) => entry.keyId))
      setQuotas(observed, scraped.keyNames)
      return registry.metrics()
    }
  }
}

/** Whether a quota read at `observedAt` still holds: a minute's for a minute, a month's within its month. */
function current (window: string, observedAt: number, now: number): boolean {
  if (window !== 'month') return now - observedAt <= MINUTE_MS
  // Mistral's month taken as the calendar month in UTC: at worst a value is hidden until the key's next call
  const seen = new Date(observedAt)
  const today = new Date(now)
  return seen.getUTCFullYear() === today.getUTCFullYear() && seen.getUTCMonth() === today.getUTCMonth()
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
    /** the separate metrics listener when METRICS_PORT is set, once the app listens; else null */
    metricsServer: Server | null
  }
}

interface MetricsPluginOptions extends MetricsOptions {
  /** serve /metrics on a port of its own (and not on the app's), opened when the app listens */
  port?: number
  host: string
  /** what a scraper of the app's own port presents: the exposition names every workspace, its spend and its caps */
  adminToken: string
}

/** `GET /metrics` in Prometheus text format, from this app's own registry: on the app, or on a port of its own. */
export const metricsPlugin = fp(async function metricsRoutes (app: FastifyInstance, options: MetricsPluginOptions) {
  const metrics = createMetrics(options)
  app.decorate('metrics', metrics)
  app.decorate('metricsServer', null)
  if (options.port === undefined) {
    // on the port clients reach: one client must not read every other's spend, caps and key names
    await app.register(async (guarded) => {
      requireAdminToken(guarded, options.adminToken)
      guarded.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
        reply.header('content-type', metrics.registry.contentType)
        return metrics.scrape()
      })
    })
    return
  }
  // kept off the public port: a scraper reaches it on the internal network, clients never do
  const port = options.port
  app.addHook('onListen', async () => {
    const server = createServer((request, response) => {
      if (request.method !== 'GET' || request.url?.split('?')[0] !== '/metrics') {
        response.writeHead(404, { 'content-type': 'text/plain' }).end('Not found\n')
        return
      }
      metrics.scrape().then(
        (text) => response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        (err: unknown) => {
          app.log.error({ err }, 'metrics scrape failed')
          response.writeHead(500, { 'content-type': 'text/plain' }).end('Scrape failed\n')
        })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, options.host, () => resolve())
    })
    app.metricsServer = server
    app.log.info({ port: (server.address() as AddressInfo).port }, 'metrics listening on a port of their own')
  })
  app.addHook('onClose', async () => {
    const server = app.metricsServer
    if (!server) return
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
}, { name: 'metrics' })
