import { randomBytes } from 'node:crypto'
import { TEST_ADMIN_TOKEN, gatewayEnv } from './app.js'
import { startGatewayProcess, type GatewayProcess } from './gateway-process.js'

// Several gateway processes (replicas) sharing one Redis and one PostgreSQL, in front of one fake Mistral:
// what every claim about limits and caps is tested with (DESIGN.md "Scale").

interface Tap {
  teardown (fn: () => unknown): void
}

export interface Reply {
  status: number
  headers: Headers
  /** the body as text (a whole SSE stream for a streamed call) */
  text: string
  json: any
  /** when the test sent it and when the last byte came back (ms, Date.now) */
  sentAt: number
  doneAt: number
}

export interface ReplicaWorkspace {
  id: string
  slug: string
  mistralKey: string
  token: string
  tokenId: string
}

export interface Replicas {
  gateways: GatewayProcess[]
  urls: string[]
  /** the admin API of the first replica */
  admin (method: string, path: string, body?: unknown): Promise<{ status: number, json: any }>
  /** a workspace with a `default` Mistral key and one token; limits and caps set before the token is first used */
  createWorkspace (settings?: { limits?: unknown, caps?: unknown, timezone?: string }): Promise<ReplicaWorkspace>
  /** the workspace's settled usage once every admitted call is in the ledger (waits up to `timeoutMs`) */
  settledUsage (ws: ReplicaWorkspace, records: number, timeoutMs?: number): Promise<{ totals: any, records: any[] }>
}

export async function startReplicas (t: Tap, mistralUrl: string, env: Record<string, string> = {},
  { count = 2, freshDatabase = false }: { count?: number, freshDatabase?: boolean } = {}): Promise<Replicas> {
  const base = {
    ...gatewayEnv(mistralUrl),
    LOG_LEVEL: 'warn',
    ...env
  }
  // on a fresh database the first one migrates it alone; the others start together
  const first = freshDatabase ? [await startGatewayProcess(t, base)] : []
  const rest = await Promise.all(Array.from({ length: count - first.length }, () => startGatewayProcess(t, base)))
  const gateways = [...first, ...rest]
  const urls = gateways.map((gateway) => gateway.url)

  const admin = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(urls[0] + path, {
      method,
      headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, ...jsonType(body !== undefined) },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const text = await res.text()
    return { status: res.status, json: text.length > 0 ? JSON.parse(text) : undefined }
  }

  return {
    gateways,
    urls,
    admin,
    async createWorkspace (settings = {}) {
      const slug = `lim-${randomBytes(6).toString('hex')}`
      const created = await admin('POST', '/admin/v1/workspaces',
        { slug, name: `Limits ${slug}`, timezone: settings.timezone })
      if (created.status !== 201) throw new Error(`workspace: ${JSON.stringify(created.json)}`)
      const { limits, caps } = settings
      if (limits !== undefined || caps !== undefined) {
        const patched = await admin('PATCH', `/admin/v1/workspaces/${slug}`, { limits, caps })
        if (patched.status !== 200) throw new Error(`limits: ${JSON.stringify(patched.json)}`)
      }
      const mistralKey = `mk-${slug}`
      const key = await admin('POST', `/admin/v1/workspaces/${slug}/mistral-keys`, { name: 'default', key: mistralKey })
      if (key.status !== 201) throw new Error(`key: ${JSON.stringify(key.json)}`)
      const minted = await admin('POST', `/admin/v1/workspaces/${slug}/tokens`, { name: 'app' })
      if (minted.status !== 201) throw new Error(`token: ${JSON.stringify(minted.json)}`)
      return { id: created.json.id, slug, mistralKey, token: minted.json.token, tokenId: minted.json.id }
    },
    async settledUsage (ws, records, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const usage = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage?limit=10000`)).json
        // the totals are read before the records: a record landing in between is in the list but not the sums
        if (usage.totals.calls >= records && usage.records.length >= records) return usage
        if (Date.now() > deadline) {
          const logs = gateways.map((gateway) => gateway.output().slice(-1500)).join('\n---\n')
          throw new Error(`${ws.slug}: ${usage.records.length} of ${records} usage records after ${timeoutMs} ms\n` +
            logs)
        }
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
  }
}

/** One call through a gateway, read to its end. */
export async function call (url: string, token: string, path: string, body?: unknown,
  init: { method?: string, rawBody?: string } = {}): Promise<Reply> {
  const sentAt = Date.now()
  const hasBody = body !== undefined || init.rawBody !== undefined
  const res = await fetch(url + path, {
    method: init.method ?? (hasBody ? 'POST' : 'GET'),
    headers: { authorization: `Bearer ${token}`, ...jsonType(hasBody) },
    body: init.rawBody ?? (body === undefined ? undefined : JSON.stringify(body))
  })
  const text = await res.text()
  let json: any
  try { json = JSON.parse(text) } catch {}
  return { status: res.status, headers: res.headers, text, json, sentAt, doneAt: Date.now() }
}

const jsonType = (hasBody: boolean): Record<string, string> => hasBody ? { 'content-type': 'application/json' } : {}

/** Counts replies by status, for messages. */
export function statusCounts (replies: Reply[]): Record<number, number> {
  const counts: Record<number, number> = {}
  for (const reply of replies) counts[reply.status] = (counts[reply.status] ?? 0) + 1
  return counts
}
