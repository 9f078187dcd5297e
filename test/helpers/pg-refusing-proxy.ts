import { createServer, connect, type Socket } from 'node:net'

export interface RefusingPgProxy {
  port: number
  close (): Promise<void>
}

export interface Refusal {
  /** a simple query whose text holds this is answered by the proxy, never reaching PostgreSQL */
  marker: string
  severity: 'ERROR' | 'FATAL'
  code: string
  /** how long after its answer the proxy closes that connection: the close reaching the driver late */
  closeAfterMs: number
}

/**
 * A loopback proxy to PostgreSQL that refuses a query as a pooler giving up on a connection does (PgBouncer's
 * query_wait_timeout: ERROR 08P01, then the connection closed): an ErrorResponse, no ReadyForQuery, then the close.
 * Only simple queries are read (the extended protocol's Parse is passed on): drizzle sends a query without values so.
 */
export async function startRefusingPgProxy (targetPort: number, targetHost: string, refusal: Refusal):
Promise<RefusingPgProxy> {
  const open = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(targetPort, targetHost)
    for (const socket of [client, upstream]) {
      open.add(socket)
      socket.on('close', () => { open.delete(socket); client.destroy(); upstream.destroy() })
      socket.on('error', () => {})
    }
    upstream.pipe(client)
    relayUntilRefused(client, upstream, refusal)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as { port: number }).port,
    async close () {
      for (const socket of open) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

const QUERY = 0x51 // 'Q'

/** Passes the driver's messages on, one whole message at a time, until one is to be refused. */
function relayUntilRefused (client: Socket, upstream: Socket, refusal: Refusal) {
  let pending = Buffer.alloc(0)
  // the startup message alone has no type byte before its length
  let startup = true
  client.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk])
    for (;;) {
      const lengthAt = startup ? 0 : 1
      if (pending.length < lengthAt + 4) return
      const end = lengthAt + pending.readInt32BE(lengthAt)
      if (pending.length < end) return
      const message = pending.subarray(0, end)
      pending = pending.subarray(end)
      const refused = !startup && message[0] === QUERY && message.includes(refusal.marker)
      startup = false
      if (!refused) {
        upstream.write(message)
        continue
      }
      client.removeAllListeners('data')
      client.write(errorResponse(refusal))
      setTimeout(() => client.destroy(), refusal.closeAfterMs).unref()
      return
    }
  })
}

function errorResponse ({ severity, code }: Refusal): Buffer {
  const fields = [`S${severity}`, `V${severity}`, `C${code}`, 'Mrefused by the test\'s proxy']
  const body = Buffer.from(fields.map((field) => `${field}\0`).join('') + '\0')
  const header = Buffer.alloc(5)
  header.write('E')
  header.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([header, body])
}
