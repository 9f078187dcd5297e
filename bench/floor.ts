/**
 * The floor: the least a Node reverse proxy does, in a process of its own, pinned where the gateway is. A node:http
 * server that forwards method, path, headers and body to FLOOR_UPSTREAM_URL over an undici keep-alive Pool
 * (FLOOR_UPSTREAM_CONNECTIONS connections, the gateway's UPSTREAM_CONNECTIONS default) and writes the response back
 * as it comes (a stream's events one by one). No authentication, no Redis, no database, no metering, no logging.
 *
 * What it costs against the fake alone is what any Node proxy on this machine pays (two more loopback sockets a call,
 * HTTP parsing and writing on both of them); the gateway's own share is the gateway's figures minus the floor's.
 * It prints `{"url":…}` once listening, as the fake does.
 */
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { Pool } from 'undici'

const upstream = process.env.FLOOR_UPSTREAM_URL
if (!upstream) throw new Error('FLOOR_UPSTREAM_URL is required')
const connections = Number(process.env.FLOOR_UPSTREAM_CONNECTIONS ?? 256)

// as src/proxy/upstream.ts: keep-alive, one request at a time on each connection
const pool = new Pool(new URL(upstream).origin, { connections, keepAliveTimeout: 30_000 })

// RFC 9110 §7.6.1: connection-specific fields never cross a proxy (host is undici's to set)
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization',
  'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host'])

function forwardable (from: IncomingHttpHeaders | Record<string, string | string[] | undefined>) {
  const headers: Record<string, string | string[]> = {}
  for (const name in from) {
    const value = from[name]
    if (value !== undefined && !HOP_BY_HOP.has(name)) headers[name] = value
  }
  return headers
}

const server = createServer({ keepAliveTimeout: 72_000, noDelay: true }, (req, res) => {
  // the body is read whole before it is forwarded, as the gateway does (an API call's body is small and JSON)
  const chunks: Buffer[] = []
  req.on('data', (chunk: Buffer) => chunks.push(chunk))
  req.on('end', () => {
    const body = chunks.length === 0 ? null : chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)
    pool.stream({
      path: req.url ?? '/',
      method: req.method as 'POST',
      headers: forwardable(req.headers),
      body,
      opaque: res
    }, ({ statusCode, headers, opaque }) => {
      const out = opaque as typeof res
      out.writeHead(statusCode, forwardable(headers))
      return out
    }, (err) => {
      if (!err) return
      if (res.headersSent) res.destroy(err)
      else res.writeHead(502, { 'content-type': 'application/json' }).end('{"error":"floor: upstream failed"}')
    })
  })
})

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const { port } = server.address() as { port: number }
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${port}` }) + '\n')
})

const stop = () => {
  server.close()
  server.closeAllConnections()
  void pool.close().finally(() => process.exit(0))
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
