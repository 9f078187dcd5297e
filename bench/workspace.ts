import { randomBytes } from 'node:crypto'
import { Cluster } from 'ioredis'
import { request } from 'undici'
import { openRedis, redisReady } from '../src/redis.js'
import { secrets } from './stack.js'

export interface BenchWorkspace {
  id: string
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
  const created = await admin(gatewayUrl, 'POST', '/admin/v1/workspaces', { slug, name: 'tramontane bench' })
  const { id } = created as { id: string }
  await admin(gatewayUrl, 'PATCH', `/admin/v1/workspaces/${slug}`, {
    limits: { rpm: 10_000_000, tpm: 10_000_000_000, concurrency: 100_000 },
    caps: { monthly: '1000000.00' }
  })
  const key = { name: 'default', key: 'bench-mistral-key' } // the fake takes any
  await admin(gatewayUrl, 'POST', `/admin/v1/workspaces/${slug}/mistral-keys`, key)
  const minted = await admin(gatewayUrl, 'POST', `/admin/v1/workspaces/${slug}/tokens`, { name: 'bench' })
  return { id, slug, token: (minted as { token: string }).token }
}

/** Its tokens stop working; its ledger stays, as for any deleted workspace. */
export async function removeWorkspace (gatewayUrl: string, workspace: BenchWorkspace) {
  await admin(gatewayUrl, 'DELETE', `/admin/v1/workspaces/${workspace.slug}`)
}

/**
 * The workspace's admission state leaves Redis at once, freed off Redis' main thread (UNLINK). Left alone, a soak's set
 * of a million settled request ids would expire an hour later as one key, which Redis frees on its main thread (unless
 * lazyfree-lazy-expire): about 0.2 s during which every command on the machine's Redis waits, whatever runs then
 * (docs/operations.md#redis).
 */
export async function forgetAdmissionState (redisUrl: string, workspace: BenchWorkspace) {
  const redis = openRedis(redisUrl, 5_000)
  try {
    await redisReady(redis.client, 5_000)
    // every key of a workspace shares its hash slot: on a Cluster they are all on one master, found by scanning each
    const nodes = redis.client instanceof Cluster ? redis.client.nodes('master') : [redis.client]
    for (const node of nodes) {
      let cursor = '0'
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', `tmt:{ws:${workspace.id}}:*`, 'COUNT', 1000)
        if (keys.length > 0) await node.unlink(...keys)
        cursor = next
      } while (cursor !== '0')
    }
  } finally {
    await redis.close()
  }
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
