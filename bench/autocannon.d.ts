// autocannon ships no types; this is the part of its programmatic API the loader uses (autocannon README)
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events'

  interface Options {
    url: string
    method?: string
    headers?: Record<string, string>
    body?: string
    connections?: number
    pipelining?: number
    duration?: number
    amount?: number
    timeout?: number
  }

  interface Result {
    errors: number
    timeouts: number
    non2xx: number
    '2xx': number
    duration: number
    statusCodeStats: Record<string, { count: number }>
  }

  interface Instance extends EventEmitter {
    stop (): void
  }

  function autocannon (options: Options, done: (err: Error | null, result: Result) => void): Instance
  export default autocannon
}
