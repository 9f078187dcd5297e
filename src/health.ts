import type { FastifyInstance } from 'fastify'
import { notReady } from './errors.js'

/** `/healthz`: the process answers. `/readyz`: it can serve (database, Redis when configured, not draining). */
export async function healthRoutes (app: FastifyInstance, { isDraining }: { isDraining: () => boolean }) {
  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }))
  app.get('/readyz', { schema: { hide: true } }, async () => {
    if (isDraining()) throw notReady('Shutting down')
    try {
      await app.database.ping()
    } catch {
      throw notReady('The database is unreachable')
    }
    if (app.redis) {
      try {
        await app.redis.client.ping()
      } catch {
        throw notReady('Redis is unreachable')
      }
    }
    return { status: 'ready', database: app.database.kind, redis: app.redis ? 'redis' : 'in-process' }
  })
}
