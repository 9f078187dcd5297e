import { EventEmitter } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import type { ThresholdCrossing } from './limits/admission.js'

// What happened that an operator may want to hear about (issue 3's thresholds, issue 4's invalid keys). Each event
// is emitted once, by the replica that recorded it: a threshold is recorded once per period across replicas (Redis
// HSETNX), a key is marked invalid once (a conditional UPDATE). The webhooks issue subscribes here to deliver them.

/** A spend cap crossed one of its thresholds (50/80/100 % by default) in a period. */
export interface SpendThresholdEvent extends ThresholdCrossing {
  type: 'spend.threshold'
  /** null when the workspace was deleted meanwhile */
  workspaceSlug: string | null
  /** ISO 8601, when this replica saw it */
  at: string
}

/** Mistral answered 401 for a workspace's key: it is marked invalid and no call uses it until it is replaced. */
export interface MistralKeyInvalidEvent {
  type: 'mistral_key.invalid'
  workspaceId: string
  workspaceSlug: string
  keyId: string
  keyName: string
  at: string
}

export interface GatewayEventMap {
  'spend.threshold': SpendThresholdEvent
  'mistral_key.invalid': MistralKeyInvalidEvent
}

export type GatewayEventName = keyof GatewayEventMap

export interface GatewayEvents {
  on<K extends GatewayEventName> (name: K, listener: (event: GatewayEventMap[K]) => void | Promise<void>): void
  off<K extends GatewayEventName> (name: K, listener: (event: GatewayEventMap[K]) => void | Promise<void>): void
  emit<K extends GatewayEventName> (name: K, event: GatewayEventMap[K]): void
}

/** A typed emitter whose listeners cannot break the call that emitted: a throw or a rejection is logged, no more. */
export function createGatewayEvents (log: FastifyBaseLogger): GatewayEvents {
  const emitter = new EventEmitter()
  // one wrapper per listener, so that off() finds what on() added
  const wrapped = new Map<unknown, (event: unknown) => void>()
  return {
    on (name, listener) {
      const safe = (event: unknown) => {
        try {
          const pending = listener(event as never)
          if (pending) pending.catch((err: unknown) => log.error({ err, event: name }, 'event listener failed'))
        } catch (err) {
          log.error({ err, event: name }, 'event listener failed')
        }
      }
      wrapped.set(listener, safe)
      emitter.on(name, safe)
    },
    off (name, listener) {
      const safe = wrapped.get(listener)
      if (safe) emitter.off(name, safe)
      wrapped.delete(listener)
    },
    emit (name, event) {
      emitter.emit(name, event)
    }
  }
}
