import { createServer, connect, type Socket } from 'node:net'

export interface TcpProxy {
  port: number
  /** Every connection through the proxy is reset, and new ones are reset at once: the target is unreachable. */
  cut (): void
  restore (): void
  close (): Promise<void>
}

/**
 * A loopback TCP proxy a test can cut, to make a service (PostgreSQL) unreachable for a while. With `delayMs`, every
 * byte is held that long each way: a slow network (a Redis connection whose pub/sub messages arrive late).
 */
export async function startTcpProxy (targetPort: number, targetHost = '127.0.0.1', { delayMs = 0 } = {}):
Promise<TcpProxy> {
  let cut = false
  const open = new Set<Socket>()
  const server = createServer((client) => {
    if (cut) return void client.resetAndDestroy()
    const upstream = connect(targetPort, targetHost)
    for (const socket of [client, upstream]) {
      open.add(socket)
      socket.on('close', () => open.delete(socket))
      socket.on('error', () => { client.destroy(); upstream.destroy() })
    }
    if (delayMs === 0) return void client.pipe(upstream).pipe(client)
    relayLate(client, upstream, delayMs)
    relayLate(upstream, client, delayMs)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as { port: number }).port,
    cut () {
      cut = true
      for (const socket of open) socket.resetAndDestroy()
    },
    restore () { cut = false },
    async close () {
      for (const socket of open) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

/** What `from` reads goes to `to` `delayMs` later, in order: timers of one duration fire in the order they were set. */
function relayLate (from: Socket, to: Socket, delayMs: number) {
  from.on('data', (chunk) => setTimeout(() => { if (!to.destroyed) to.write(chunk) }, delayMs))
  from.on('end', () => setTimeout(() => to.end(), delayMs))
}

interface Tap {
  teardown (fn: () => unknown): void
}

/** A database URL that reaches `databaseUrl` through a proxy the test can cut; the proxy closes in teardown. */
export async function proxiedDatabase (t: Tap, databaseUrl: string): Promise<{ proxy: TcpProxy, url: string }> {
  const url = new URL(databaseUrl)
  const proxy = await startTcpProxy(Number(url.port || 5432), url.hostname)
  t.teardown(() => proxy.close())
  url.hostname = '127.0.0.1'
  url.port = String(proxy.port)
  return { proxy, url: url.toString() }
}
