import { randomBytes } from 'node:crypto'
import { request } from 'undici'
import { secrets } from './stack.js'

export interface BenchWorkspace {
  slug: string
  /** the workspace token the load carries */
  token: string
}

/**
 * A workspace set up through the admin API as an operator would: limits and a cap far above anything the run can
 * reach, so that admission and usage recording do all their work without ever refusing a call (issue #7).
 */
export async function setupWorkspace (gatewayUrl: string): Promise<BenchWorkspace> {
  const slug = `bench-${randomBytes(4).toString('hex')}`
  await admin(gatewayUrl, 'POST', '/admin/v1/workspaces', { slug, name: 'tramontane bench' })
  await admin(gatewayUrl, 'PATCH', `/admin/v1/workspaces/${slug}`, {
    limits: { rpm: 10_000_000, tpm: 10_000_000_000, concurrency: 100_000 },
    caps: { monthly: '1000000.00' }
  })
  const key = { name: 'default', key: 'bench-mistral-key' } // the fake takes any
  await admin(gatewayUrl, 'POST', `/admin/v1/workspaces/${slug}/mistral-keys`, key)
  const minted = await admin(gatewayUrl, 'POST', `/admin/v1/workspaces/${slug}/tokens`, { name: 'bench' })
  return { slug, token: (minted as { token: string }).token }
}

/**
 * Its tokens stop working; its ledger stays, as for any deleted workspace, and the gateway takes its state out of Redis
 * with UNLINK (a soak's million settled ids would otherwise expire an hour later as one key, freed on Redis' main thread
 * unless lazyfree-lazy-expire: docs/operations.md#redis).
 */
export async function removeWorkspace (gatewayUrl: string, slug: string) {
  await admin(gatewayUrl, 'DELETE', `/admin/v1/workspaces/${slug}`)
}

async function admin (gatewayUrl: string, method: 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown):
Promise<unknown> {
  const json = body === undefined ? {} : { 'content-type': 'application/json' }
  const res = await request(gatewayUrl + path, {
    method,
    headers: { authorization: `Bearer ${secrets.adminToken}`, ...json },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.body.text()
  if (res.statusCode >= 300) throw new Error(`${method} ${path}: ${res.statusCode} ${text}`)
  return text ? JSON.parse(text) : undefined
}
