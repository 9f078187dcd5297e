import { randomUUID } from 'node:crypto'
import Fastify, {
  LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import swagger from '@fastify/swagger'
import { SerializerSelector, type SerializerFactory } from '@fastify/fast-json-stringify-compiler'
import swaggerUi from '@fastify/swagger-ui'
import { pricesRoutes } from './admin/prices-routes.js'
import { adminRoutes } from './admin/routes.js'
import { usageRoutes } from './admin/usage-routes.js'
import { ErrorBody } from './admin/schemas.js'
import type { Config } from './config.js'
import { openDatabase } from './db/client.js'
import { badRequest, errorHandler, errorEnvelope, shuttingDown, unknownRoute } from './errors.js'
import { createGatewayEvents, type GatewayEvents } from './events.js'
import { healthRoutes } from './health.js'
import { metricsPlugin } from './metrics.js'
import { createScrapeFacts } from './scrape-facts.js'
import { loggerOptions } from './logger.js'
import { proxyRoutes } from './proxy/routes.js'
import { createUpstreamPool } from './proxy/upstream.js'
import { answered, trackRequestLine, writeRequestLine } from './request-line.js'
import { selfServiceRoutes } from './self-service/routes.js'
import { servicesPlugin } from './services.js'
import { parseMasterKeys } from './tenancy/master-keys.js'
import { checkRingOpensStoredKeys } from './tenancy/mistral-keys.js'

export interface BuildOptions {
  config: Config
  /** Replaces the logger built from the config (tests capture log lines with it). */
  logger?: FastifyBaseLogger
}

const buildSerializer = SerializerSelector()

/**
 * Fastify's serialisers, each compiled on its first use instead of at boot. Every status of every admin route has
 * its own (155, each error status with an Ajv of its own), and most are never used by a given replica: compiled at
 * boot they held 4 MB of heap and 10 MB of resident memory (issue #7). A broken response schema now fails its first
 * reply (a 500) instead of the start.
 */
const lazySerializers: SerializerFactory = (externalSchemas, options) => {
  const compile = buildSerializer(externalSchemas, options)
  return (route) => {
    let serialize: ((data: unknown) => string) | undefined
    return (data) => (serialize ??= compile(route))(data)
  }
}

const MAX_PATH_PARAMETER = 1024

/** Builds the gateway: database migrated, services wired, routes registered. Never listens. */
export async function buildApp ({ config, logger }: BuildOptions): Promise<FastifyInstance> {
  if (!config.TRAMONTANE_ADMIN_TOKEN || !config.TRAMONTANE_MASTER_KEYS) {
    throw new Error('TRAMONTANE_ADMIN_TOKEN and TRAMONTANE_MASTER_KEYS are required')
  }
  const app = Fastify({
    ...(logger ? { loggerInstance: logger } : { logger: loggerOptions(config) }),
    // the request id is the ledger's primary key: always ours, never the client's
    genReqId: () => randomUUID(),
    // one line per request, written by writeRequestLine with the facts of the call
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.BODY_LIMIT_BYTES,
    // a model id may be 200 characters (the price book's bound), and Mistral's own ids are far shorter: Fastify's 100
    // refused some of those. Past this bound, frameworkErrors answers
    routerOptions: { maxParamLength: MAX_PATH_PARAMETER },
    // a URL the router cannot read (a broken percent-escape, a path parameter past the bound) is answered by Fastify
    // before any hook, in a shape of its own: the gateway's envelope, request id and request line instead
    frameworkErrors: (err, request, reply) => {
      trackRequestLine(request, reply)
      reply.raw.once('finish', () => writeRequestLine(request, reply))
      reply.header('x-request-id', request.id)
      const message = err.code === 'FST_ERR_MAX_PARAM_LENGTH'
        ? `A part of the request path is longer than ${MAX_PATH_PARAMETER} characters`
        : 'The request path has an invalid percent-encoding'
      return errorHandler(badRequest(message), request, reply)
    },
    // a slow generation can hold a request for many minutes: the upstream timeouts bound it, not Node's
    requestTimeout: 0,
    // once closing, a call on a kept-alive connection gets the gateway's own 503 (app.addHook below), in the envelope,
    // with its request id and line, not Fastify's bare one
    return503OnClosing: false,
    schemaController: { compilersFactory: { buildSerializer: lazySerializers } },
    // an operator's typo ("timeZone") must be an error, not silently dropped
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true } }
  })
  app.setErrorHandler(errorHandler)
  app.setNotFoundHandler((request, reply) => {
    const error = unknownRoute(`${request.method} ${request.url.split('?')[0]} is not a route of this gateway`)
    return reply.code(404).send(errorEnvelope(
      { type: error.type, code: error.code, message: error.message, param: null }, request.id))
  })
  app.decorateRequest('line', null)
  app.decorateRequest('admitted', false)
  // callback hooks, not async ones: every call runs them, and an async hook costs each call a promise and a turn of
  // the microtask queue (the onSend one before the answer's write). With callbacks only, reply.send writes the answer
  // before it returns, and the proxy meters a whole answer after that (proxy/routes.ts): an async onSend hook would
  // put the metering back in front of the write
  let closing = false
  app.addHook('onRequest', (request, reply, done) => {
    trackRequestLine(request, reply)
    if (!closing) return done()
    reply.header('connection', 'close')
    done(shuttingDown())
  })
  app.addHook('onSend', (request, reply, payload, done) => {
    reply.header('x-request-id', request.id)
    // a client would send its next call on this connection, which only gets a 503 now
    if (closing) reply.header('connection', 'close')
    answered(request, reply)
    done(null, payload)
  })
  app.addHook('onResponse', (request, reply, done) => {
    writeRequestLine(request, reply)
    done()
  })

  const database = await openDatabase({
    url: config.DATABASE_URL, dataDir: config.DATA_DIR, queryTimeoutMs: config.PG_QUERY_TIMEOUT_MS
  })
  try {
    await database.migrate()
    await checkRingOpensStoredKeys(database.db, parseMasterKeys(config.TRAMONTANE_MASTER_KEYS))
  } catch (err) {
    await database.close()
    throw err
  }
  await app.register(servicesPlugin, { config, database })
  // the proxy's connections to Mistral: the metrics read how many calls wait for one
  const upstream = createUpstreamPool(config)
  app.addHook('onClose', async () => { await upstream.close() })
  await app.register(metricsPlugin, {
    port: config.METRICS_PORT,
    host: config.METRICS_HOST ?? config.HOST,
    spoolDepth: () => app.usage.pending(),
    spoolOldestAge: () => app.usage.oldestPendingMs() / 1000,
    spoolWritable: () => app.usage.spoolWritable(),
    coolingKeys: () => app.keyHealth.cooling(),
    breakers: () => app.keyHealth.breakers(),
    quotas: () => app.keyHealth.observedQuotas(),
    upstreamQueued: () => upstream.waiting,
    facts: createScrapeFacts(database.db, app.log),
    workspaceLabel: config.METRICS_WORKSPACE_LABEL,
    workspaceLabelLimit: config.METRICS_WORKSPACE_LABEL_LIMIT,
    adminToken: config.TRAMONTANE_ADMIN_TOKEN
  })
  app.decorate('events', createGatewayEvents(app.log))
  // crossings are announced in the order they happened: the slug's lookup for one may take longer than the next's
  let announced = Promise.resolve()
  app.admission.onThreshold((crossing) => {
    app.metrics.thresholdCrossed(crossing.cap, crossing.percent)
    // admission knows a workspace by its id only: the event names its slug too (a rare read, three a cap a period)
    const at = new Date().toISOString()
    const workspace = app.tenancy.workspaces.find(crossing.workspaceId).catch(() => undefined)
    announced = announced.then(() => workspace).then((found) => {
      app.events.emit('spend.threshold', { type: 'spend.threshold', ...crossing, workspaceSlug: found?.slug ?? null, at })
    }).catch((err: unknown) => app.log.error({ err }, 'announcing a spend threshold failed'))
  })
  app.batchJobs.onBilled((facts) => app.metrics.billed(facts))

  let draining = false
  app.decorate('drain', () => { draining = true })
  // Node's server.close() ends only the keep-alive connections idle at that moment: one whose stream finishes later
  // would hold close() for the keep-alive timeout, past SHUTDOWN_GRACE_MS. End each one as it goes idle.
  app.addHook('preClose', async () => {
    closing = true
    const sweep = setInterval(() => app.server.closeIdleConnections(), 100).unref()
    app.server.once('close', () => clearInterval(sweep))
  })
  app.addSchema(ErrorBody)
  await app.register(swagger, {
    openapi: {
      info: { title: 'tramontane admin API', version: '1', description: 'Manage workspaces, Mistral keys, tokens, usage and prices.' },
      components: { securitySchemes: { adminToken: { type: 'http', scheme: 'bearer', description: 'TRAMONTANE_ADMIN_TOKEN' } } }
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
  await app.register(healthRoutes, { isDraining: () => draining })
  await app.register(adminRoutes, { prefix: '/admin/v1', adminToken: config.TRAMONTANE_ADMIN_TOKEN })
  await app.register(pricesRoutes, { prefix: '/admin/v1', adminToken: config.TRAMONTANE_ADMIN_TOKEN })
  await app.register(usageRoutes, {
    prefix: '/admin/v1', adminToken: config.TRAMONTANE_ADMIN_TOKEN, longestCallMs: config.UPSTREAM_TOTAL_TIMEOUT_MS
  })
  await app.register(selfServiceRoutes, { prefix: '/tramontane/v1' })
  await app.register(async (proxy) => {
    // every answer of /v1 and /v2 counts once in the requests counter: the meter counts the calls admitted, this hook
    // the ones answered before (token, route, body, admission), the gateway's own 503s among them. A callback hook,
    // as above: a metered call pays a check, no counter
    proxy.addHook('onResponse', (request, reply, done) => {
      if (!request.admitted) {
        const operation = request.operation ?? undefined
        app.metrics.unmetered(request.tenant?.workspace.slug, operation && (operation.metered ?? operation.area),
          reply.statusCode)
      }
      done()
    })
    await proxy.register(proxyRoutes, { config, pool: upstream })
  })
  return app
}

declare module 'fastify' {
  interface FastifyRequest {
    /** a proxied call admission let through: from there the meter counts it, however it ends (src/proxy/meter.ts) */
    admitted: boolean
  }
  interface FastifyInstance {
    /** Readiness goes 503 so that load balancers stop sending before the server closes. */
    drain (): void
    /** spend thresholds and invalid Mistral keys, for whoever subscribes (src/events.ts) */
    events: GatewayEvents
  }
}
