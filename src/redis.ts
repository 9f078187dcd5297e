import { Cluster, Redis, type ClusterNode, type RedisOptions } from 'ioredis'

/** A single Redis or a Redis Cluster: every command the gateway sends works on both (one hash slot per workspace). */
export type RedisClient = Redis | Cluster

export interface RedisHandle {
  /** Commands: never queues while disconnected, so no request waits on a dead Redis. */
  client: RedisClient
  /** Pub/sub needs its own connection; it re-subscribes by itself after a reconnect. */
  subscriber: RedisClient
  close (): Promise<void>
}

const CLUSTER_SCHEME = /^(rediss?)-cluster:\/\/(?:([^@/]*)@)?([^/?#]+)\/?$/

/**
 * `redis://…` or `rediss://…` (ioredis' URL form) for one Redis;
 * `redis-cluster://[[user]:password@]host:port,host:port` (or `rediss-cluster://` for TLS) for a Redis Cluster: any
 * of its masters, the client discovers the rest.
 */
export function openRedis (url: string, commandTimeoutMs: number): RedisHandle {
  // no auto-pipelining on one Redis: the pipeline object it builds for each batch cost a one-connection call 0.19 ms
  // and more CPU than its one write saved (docs/benchmarks.md); the admission store batches its own writes, with
  // nothing built per batch (turnWriter below)
  const commands: RedisOptions = { enableOfflineQueue: false, commandTimeout: commandTimeoutMs, maxRetriesPerRequest: 1 }
  const cluster = parseClusterUrl(url)
  let client: RedisClient
  let subscriber: RedisClient
  if (cluster) {
    const { nodes, redisOptions } = cluster
    // the cluster's own queue is off (a command fails at once while no node answers); its nodes keep theirs, which
    // it needs to ask them for the slot map while they connect. Auto-pipelining stays: it batches per node, which
    // turnWriter cannot
    client = new Cluster(nodes, {
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      redisOptions: { ...redisOptions, commandTimeout: commandTimeoutMs, maxRetriesPerRequest: 1 }
    })
    subscriber = new Cluster(nodes, { redisOptions: { ...redisOptions, maxRetriesPerRequest: null } })
  } else {
    client = new Redis(url, { ...commands, lazyConnect: false })
    subscriber = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: null })
  }
  // ioredis reports connection errors as events; without listeners they would be unhandled
  client.on('error', () => {})
  subscriber.on('error', () => {})
  return {
    client,
    subscriber,
    async close () {
      client.disconnect()
      subscriber.disconnect()
    }
  }
}

/**
 * Commands sent during one turn of the event loop leave in one socket write: the first corks the connection, which is
 * uncorked once the turn's I/O callbacks have run (`setImmediate`). At 32 connections that turn holds the admissions
 * and settlements of several calls, and on loopback the write is most of what a command costs the gateway. Call it
 * before each command. A Cluster batches by auto-pipelining instead.
 */
export function turnWriter (client: RedisClient): () => void {
  if (client instanceof Cluster) return () => {}
  let corked: Redis['stream'] | undefined
  const uncork = () => {
    corked?.uncork()
    corked = undefined
  }
  return () => {
    if (corked !== undefined || client.stream === undefined) return
    corked = client.stream
    corked.cork()
    setImmediate(uncork)
  }
}

/** The nodes and connection options of a `redis-cluster://` URL, or undefined for any other URL. */
export function parseClusterUrl (url: string): { nodes: ClusterNode[], redisOptions: RedisOptions } | undefined {
  const match = CLUSTER_SCHEME.exec(url)
  if (!match) return undefined
  const [, scheme, auth, hosts] = match
  const nodes = hosts.split(',').map((entry) => {
    const at = entry.lastIndexOf(':')
    const host = at > 0 ? entry.slice(0, at).replace(/^\[(.*)\]$/, '$1') : entry
    const port = at > 0 ? Number(entry.slice(at + 1)) : 6379
    if (!host || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw new Error(`REDIS_URL: '${entry}' is not host:port`)
    }
    return { host, port }
  })
  const redisOptions: RedisOptions = {}
  if (auth !== undefined) {
    const colon = auth.indexOf(':')
    const username = decodeURIComponent(colon === -1 ? '' : auth.slice(0, colon))
    const password = decodeURIComponent(colon === -1 ? auth : auth.slice(colon + 1))
    if (username) redisOptions.username = username
    if (password) redisOptions.password = password
  }
  if (scheme === 'rediss') redisOptions.tls = {}
  return { nodes, redisOptions }
}

/** Resolves once the command connection is usable, or rejects after the timeout. */
export function redisReady (client: RedisClient, timeoutMs: number): Promise<void> {
  if (client.status === 'ready') return Promise.resolve()
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error('Redis did not become ready in time')) }, timeoutMs)
    const onReady = () => { cleanup(); resolve() }
    const cleanup = () => { clearTimeout(timer); client.off('ready', onReady) }
    client.on('ready', onReady)
  })
}

/** The nodes that hold the data: the one Redis, or every master of a Cluster (none known: an error, not nothing). */
export function dataNodes (client: RedisClient): Redis[] {
  if (!(client instanceof Cluster)) return [client]
  const masters = client.nodes('master')
  if (masters.length === 0) throw new Error('no master of the Redis Cluster is connected')
  return masters
}

/** The keys of one node that match `pattern`, a SCAN batch at a time (KEYS would hold Redis for its whole keyspace). */
export async function * scanKeys (node: Redis, pattern: string): AsyncGenerator<string[]> {
  let cursor = '0'
  do {
    const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    if (keys.length > 0) yield keys
    cursor = next
  } while (cursor !== '0')
}
