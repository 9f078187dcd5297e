import type { IncomingMessage, ServerResponse } from 'node:http'
import type { ReceivedRequest } from './recorder.js'
import type { StreamFault } from './sse.js'

/**
 * Answers one request instead of the default route. The body has already been read (see `received`); raw
 * Node objects, so a script can do anything a real upstream might: stall, half-answer, destroy the socket.
 */
export type ScriptedHandler = (req: IncomingMessage, res: ServerResponse, received: ReceivedRequest) => unknown

/** Which request a script waits for: a pathname prefix, optionally a method. None: the very next request. */
export type RequestFilter = string | { path?: string, method?: string }

export interface StreamGate {
  release (): void
}

interface Script {
  filter: RequestFilter | undefined
  handler?: ScriptedHandler
  delayMs?: number
}

export interface Scripts {
  push (script: Script): void
  take (method: string, pathname: string): Script | undefined
  pushFault (fault: StreamFault & { path?: string }): void
  takeFault (pathname: string): StreamFault | undefined
  hold (): StreamGate
  /** the held gate's promise, while one is held */
  gate (): Promise<void> | undefined
  reset (): void
}

/** One-shot scripts, consumed in order by the first request each one matches. */
export function createScripts (): Scripts {
  let queue: Script[] = []
  let faults: Array<StreamFault & { path?: string }> = []
  let held: { promise: Promise<void>, release: () => void } | undefined

  function takeFirst<T> (list: T[], matches: (item: T) => boolean): T | undefined {
    const index = list.findIndex(matches)
    return index === -1 ? undefined : list.splice(index, 1)[0]
  }

  return {
    push: (script) => { queue.push(script) },
    take: (method, pathname) => takeFirst(queue, (script) => matches(script.filter, method, pathname)),
    pushFault: (fault) => { faults.push(fault) },
    takeFault: (pathname) => takeFirst(faults, (fault) => pathname.startsWith(fault.path ?? '')),
    hold () {
      held?.release()
      let release = () => {}
      const promise = new Promise<void>((resolve) => { release = resolve })
      const gate = {
        promise,
        release () {
          release()
          if (held === gate) held = undefined
        }
      }
      held = gate
      return { release: gate.release }
    },
    gate: () => held?.promise,
    reset () {
      queue = []
      faults = []
      held?.release()
    }
  }
}

function matches (filter: RequestFilter | undefined, method: string, pathname: string): boolean {
  if (filter === undefined) return true
  if (typeof filter === 'string') return pathname.startsWith(filter)
  return (filter.method === undefined || filter.method.toUpperCase() === method) &&
    pathname.startsWith(filter.path ?? '')
}
