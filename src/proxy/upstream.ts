import { Pool, type Dispatcher } from 'undici'
import type { Config } from '../config.js'

type PoolConfig = Pick<Config, 'MISTRAL_BASE_URL' | 'UPSTREAM_CONNECT_TIMEOUT_MS' | 'UPSTREAM_HEADERS_TIMEOUT_MS' |
'UPSTREAM_IDLE_TIMEOUT_MS' | 'UPSTREAM_CONNECTIONS' | 'UPSTREAM_QUEUE_TIMEOUT_MS'>

/** A call that found every connection to Mistral busy for UPSTREAM_QUEUE_TIMEOUT_MS: it was never sent. */
export class UpstreamQueueTimeoutError extends Error {
  readonly code = 'UPSTREAM_QUEUE_TIMEOUT'

  constructor (readonly waitedMs: number) {
    super(`No connection to Mistral came free within ${waitedMs} ms`)
    this.name = 'UpstreamQueueTimeoutError'
  }
}

/**
 * One keep-alive pool to Mistral, shared by every workspace (the key is per request, not per connection). A call
 * that finds all UPSTREAM_CONNECTIONS busy waits in a queue of the gateway's own, not in undici's, from which no call
 * can be taken out: one that waits past UPSTREAM_QUEUE_TIMEOUT_MS, or whose signal aborts meanwhile, is answered at
 * once with an error and leaves, never sent. A call handed to undici is never cut by that bound.
 */
export class UpstreamPool extends Pool {
  readonly #queueTimeoutMs: number
  /** oldest first; a Set, so that a call giving up leaves from anywhere in it */
  readonly #queue = new Set<WaitingCall>()
  /** undici answered that it has no connection for another call, and has not emitted 'drain' since */
  #busy = false

  constructor (config: PoolConfig) {
    super(new URL(config.MISTRAL_BASE_URL).origin, {
      connections: config.UPSTREAM_CONNECTIONS,
      connect: { timeout: config.UPSTREAM_CONNECT_TIMEOUT_MS },
      headersTimeout: config.UPSTREAM_HEADERS_TIMEOUT_MS,
      // undici's body timeout is the longest silence between two chunks: the idle timeout of a stream
      bodyTimeout: config.UPSTREAM_IDLE_TIMEOUT_MS,
      keepAliveTimeout: 30_000
    })
    this.#queueTimeoutMs = config.UPSTREAM_QUEUE_TIMEOUT_MS
    this.on('drain', () => {
      this.#busy = false
      for (const call of this.#queue) {
        if (this.#busy) return
        this.#queue.delete(call)
        call.leave()
        this.#send(call.options, call.handler)
      }
    })
  }

  /** Calls waiting for a connection now. */
  get waiting (): number {
    return this.#queue.size
  }

  // `request` calls this (the proxy uses nothing else of the pool), with a handler that takes onError
  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    if (!this.#busy) return this.#send(options, handler)
    const { signal } = options as Dispatcher.RequestOptions
    // undici itself would answer a call whose signal has aborted only once a connection is free
    if (signal instanceof AbortSignal && signal.aborted) handler.onError!(signal.reason)
    else this.#queue.add(new WaitingCall(options, handler, this.#queueTimeoutMs, signal, this.#queue))
    return false
  }

  /**
   * undici's `dispatch` answers false once it has no connection left for the next call, then emits 'drain' when it
   * has one again (its Dispatcher contract): the hot path pays one check while a connection is free. A closed or
   * destroyed pool answers false too, having failed the call: no 'drain' follows, and nothing is to wait for one.
   */
  #send (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const free = super.dispatch(options, handler)
    this.#busy = !free && !this.closed && !this.destroyed
    return free
  }
}

/** A call in the gateway's queue, until it is sent or gives up (its bound passed, its signal aborted). */
class WaitingCall {
  readonly #timer: NodeJS.Timeout
  readonly #signal: AbortSignal | undefined

  constructor (readonly options: Dispatcher.DispatchOptions, readonly handler: Dispatcher.DispatchHandler,
    timeoutMs: number, signal: unknown, private readonly queue: Set<WaitingCall>) {
    this.#timer = setTimeout(() => this.#giveUp(new UpstreamQueueTimeoutError(timeoutMs)), timeoutMs).unref()
    this.#signal = signal instanceof AbortSignal ? signal : undefined
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true })
  }

  readonly #onAbort = () => this.#giveUp(this.#signal?.reason)

  /** Stops waiting: the call is being sent, or given up. */
  leave () {
    clearTimeout(this.#timer)
    this.#signal?.removeEventListener('abort', this.#onAbort)
  }

  /** Out of the queue, and `request`'s promise rejects with `reason`, as when undici fails a call before sending it. */
  #giveUp (reason: Error) {
    this.queue.delete(this)
    this.leave()
    this.handler.onError!(reason)
  }
}

/** The pool the proxy sends its calls through. */
export function createUpstreamPool (config: PoolConfig): UpstreamPool {
  return new UpstreamPool(config)
}

/** The path prefix of MISTRAL_BASE_URL (usually empty), for a gateway in front of another proxy. */
export function basePath (baseUrl: string): string {
  return new URL(baseUrl).pathname.replace(/\/+$/, '')
}

/** An id as one segment of a Mistral path: a dot encoded too, so that a hop resolving `..` never asks another route. */
export function pathSegment (id: string): string {
  return encodeURIComponent(id).replace(/\./g, '%2E')
}
