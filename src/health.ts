import { Type } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import { notReady } from './errors.js'

type Reach = 'ok' | 'unreachable'

// a readiness probe times out after a second or so: a dependency that has not answered by then counts as unreachable,
// rather than the probe's timeout taking the replica out (the driver's own connection timeout is 5 s)
const PING_TIMEOUT_MS = 500

/**
 * `/healthz`: the process answers. `/readyz`: this replica can take calls (migrated, listening, not draining), 503 only
 * while it drains. PostgreSQL and Redis are reported, not required: an outage of either is shared by every replica,
 * and taking them all out of the load balancer would refuse the calls the gateway goes on serving without them
 * (cached tokens, spooled usage, in-process rate limits). `?deep=true` answers 503 when one is unreachable too, for a
 * monitor, not a load balancer.
 */
export async function healthRoutes (app: FastifyInstance, { isDraining }: { isDraining: () => boolean }) {
  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }))
  app.get('/readyz', {
    schema: { hide: true, querystring: Type.Object({ deep: Type.Optional(Type.Boolean()) }) }
  }, async (request) => {
    if (isDraining()) throw notReady('Shutting down')
    const { redis: redisHandle } = app
    const [database, redis] = await Promise.all([
      reach(() => app.database.ping()),
      redisHandle ? reach(() => redisHandle.client.ping()) : 'in-process' as const
    ])
    if ((request.query as { deep?: boolean }).deep === true) {
      if (database === 'unreachable') throw notReady('The database is unreachable')
      if (redis === 'unreachable') throw notReady('Redis is unreachable')
    }
    return { status: 'ready', database, redis }
  })
}

/** Whether `ping` answers within PING_TIMEOUT_MS. */
async function reach (ping: () => Promise<unknown>): Promise<Reach> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(reject, PING_TIMEOUT_MS) })
  try {
    await Promise.race([ping(), late])
    return 'ok'
  } catch {
    return 'unreachable'
  } finally {
    clearTimeout(timer)
  }
}
