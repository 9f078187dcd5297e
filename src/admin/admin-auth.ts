import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { invalidAdminToken } from '../errors.js'

/** The `/admin/v1` guard, added to each admin plugin: only the admin token opens it, a workspace token never does. */
export function requireAdminToken (app: FastifyInstance, adminToken: string) {
  const expected = createHash('sha256').update(adminToken).digest()
  app.addHook('onRequest', async (request) => {
    const header = request.headers.authorization ?? ''
    const given = header.slice(0, 7).toLowerCase() === 'bearer ' ? header.slice(7).trim() : ''
    // compare digests: equal length, constant time, whatever the caller sent
    if (!timingSafeEqual(createHash('sha256').update(given).digest(), expected)) throw invalidAdminToken()
  })
}
