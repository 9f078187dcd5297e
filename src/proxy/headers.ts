import type { IncomingHttpHeaders } from 'node:http'
import type { SecurityScheme } from './operations.js'

// RFC 9110 §7.6.1: connection-specific fields never cross a proxy
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection',
  'te', 'trailer', 'transfer-encoding', 'upgrade']

const NEVER_UPSTREAM = new Set([
  ...HOP_BY_HOP,
  'host',
  'authorization', // the client's workspace token: the Mistral key replaces it
  'x-api-key',
  'cookie', // Mistral's SDK sends one, possibly empty; nothing of the client's session goes to Mistral
  'expect',
  // whoever the client says it is, Mistral sees only the gateway
  'forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port', 'x-real-ip', 'via',
  'x-request-id',
  // uncompressed replies let the usage tap read them; the client link can still compress
  'accept-encoding',
  'openai-organization', 'openai-project'
])

const NEVER_UPSTREAM_PREFIXES = ['x-tramontane-', 'x-stainless-', 'proxy-']

const NEVER_DOWNSTREAM = new Set([...HOP_BY_HOP, 'set-cookie', 'x-request-id'])

/**
 * Headers for the upstream call: the client's, less credentials, hop-by-hop and forwarding headers,
 * plus the workspace's Mistral key where the route's security scheme reads it. `keepLength` is false when the body
 * was re-serialised.
 */
export function upstreamHeaders (client: IncomingHttpHeaders, mistralKey: string, keepLength: boolean,
  security: SecurityScheme = 'ApiKey') {
  const headers: Record<string, string | string[]> = {}
  const nominated = connectionOptions(client.connection)
  for (const name in client) {
    const value = client[name]
    if (value === undefined || NEVER_UPSTREAM.has(name) || nominated?.has(name)) continue
    if (!keepLength && name === 'content-length') continue
    if (name.charCodeAt(0) === 120 /* x */ || name.charCodeAt(0) === 112 /* p */) {
      if (NEVER_UPSTREAM_PREFIXES.some((prefix) => name.startsWith(prefix))) continue
    }
    headers[name] = value
  }
  // /v1/users/me* (DashboardUserContextAuth) read the key from x-api-key, every other route from a bearer
  if (security === 'DashboardUserContextAuth') headers['x-api-key'] = mistralKey
  else headers.authorization = `Bearer ${mistralKey}`
  return headers
}

/** Mistral's response headers as the client gets them: its own request id wins over Mistral's correlation id. */
export function downstreamHeaders (upstream: Record<string, string | string[] | undefined>) {
  const headers: Record<string, string | string[]> = {}
  const nominated = connectionOptions(upstream.connection)
  for (const name in upstream) {
    const value = upstream[name]
    if (value === undefined || NEVER_DOWNSTREAM.has(name) || nominated?.has(name)) continue
    headers[name] = value
  }
  return headers
}

/** RFC 9110 §7.6.1: a field named in Connection is hop-by-hop too. Usually absent or `keep-alive`: no set then. */
function connectionOptions (value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined
  const list = Array.isArray(value) ? value.join(',') : value
  if (!list.includes(',') && HOP_BY_HOP.includes(list.trim().toLowerCase())) return undefined
  return new Set(list.split(',').map((option) => option.trim().toLowerCase()).filter(Boolean))
}
