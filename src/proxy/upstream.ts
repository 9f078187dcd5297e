import { Pool } from 'undici'
import type { Config } from '../config.js'

export type UpstreamPool = Pool

/** One keep-alive pool to Mistral, shared by every workspace (the key is per request, not per connection). */
export function createUpstreamPool (config: Pick<Config, 'MISTRAL_BASE_URL' | 'UPSTREAM_CONNECT_TIMEOUT_MS' |
'UPSTREAM_HEADERS_TIMEOUT_MS' | 'UPSTREAM_IDLE_TIMEOUT_MS' | 'UPSTREAM_CONNECTIONS'>): UpstreamPool {
  return new Pool(new URL(config.MISTRAL_BASE_URL).origin, {
    connections: config.UPSTREAM_CONNECTIONS,
    connect: { timeout: config.UPSTREAM_CONNECT_TIMEOUT_MS },
    headersTimeout: config.UPSTREAM_HEADERS_TIMEOUT_MS,
    // undici's body timeout is the longest silence between two chunks: the idle timeout of a stream
    bodyTimeout: config.UPSTREAM_IDLE_TIMEOUT_MS,
    keepAliveTimeout: 30_000
  })
}

/** The path prefix of MISTRAL_BASE_URL (usually empty), for a gateway in front of another proxy. */
export function basePath (baseUrl: string): string {
  return new URL(baseUrl).pathname.replace(/\/+$/, '')
}
