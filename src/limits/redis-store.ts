import type { Cluster, Redis, Result } from 'ioredis'
import { ADMIT_SCRIPT, INSPECT_SCRIPT, RENEW_SCRIPT, SEED_SCRIPT, SETTLE_SCRIPT, SNAPSHOT_SCRIPT } from './scripts.js'
import { decodeAdmit, type AdmissionStore, type Inspection } from './store.js'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    tmtAdmit (prefix: string, input: string): Result<unknown[], Context>
    tmtSeed (prefix: string, input: string): Result<number, Context>
    tmtSnapshot (...args: string[]): Result<string, Context>
    tmtSettle (prefix: string, input: string): Result<unknown[], Context>
    tmtRenew (prefix: string, input: string): Result<number, Context>
    tmtInspect (prefix: string, input: string): Result<string, Context>
  }
}

/**
 * Admission on Redis or Redis Cluster: each call is one EVALSHA (ioredis falls back to EVAL once after a script
 * flush), routed by KEYS[1], the workspace prefix whose hash tag holds every key the script touches.
 */
export function createRedisStore (redis: Redis | Cluster): AdmissionStore {
  redis.defineCommand('tmtAdmit', { numberOfKeys: 1, lua: ADMIT_SCRIPT })
  redis.defineCommand('tmtSeed', { numberOfKeys: 1, lua: SEED_SCRIPT })
  redis.defineCommand('tmtSnapshot', { lua: SNAPSHOT_SCRIPT })
  redis.defineCommand('tmtSettle', { numberOfKeys: 1, lua: SETTLE_SCRIPT })
  redis.defineCommand('tmtRenew', { numberOfKeys: 1, lua: RENEW_SCRIPT })
  redis.defineCommand('tmtInspect', { numberOfKeys: 1, lua: INSPECT_SCRIPT })
  return {
    kind: 'redis',
    async admit (prefix, input) {
      return decodeAdmit(await redis.tmtAdmit(prefix, JSON.stringify(input)))
    },
    async seed (prefix, entries, held) {
      if (entries.length === 0) return true
      return Number(await redis.tmtSeed(prefix, JSON.stringify({ entries, held }))) === 1
    },
    async markNew (prefix) {
      await redis.set(`${prefix}:epoch`, 1)
    },
    async snapshot (prefix, keys) {
      const raw = JSON.parse(await redis.tmtSnapshot(String(keys.length + 1), prefix, ...keys)) as
        { vouched: unknown[] | Record<string, never>, held: string[] | Record<string, never> }
      // cjson writes an empty Lua table as {}
      const vouched = Array.isArray(raw.vouched) ? raw.vouched : []
      return {
        vouched: keys.map((_, i) => Array.isArray(vouched[i]) ? vouched[i] as string[] : []),
        held: Array.isArray(raw.held) ? raw.held : []
      }
    },
    async settle (prefix, input) {
      const reply = await redis.tmtSettle(prefix, JSON.stringify(input))
      if (Number(reply[0]) !== 1) return []
      // cjson encodes an empty Lua table as {}
      const crossed = JSON.parse(String(reply[1])) as Array<[string, number]> | Record<string, never>
      return Array.isArray(crossed) ? crossed : []
    },
    async renew (prefix, calls, lease) {
      if (calls.length > 0) await redis.tmtRenew(prefix, JSON.stringify({ lease, calls }))
    },
    async inspect (prefix, scopes) {
      const raw = JSON.parse(await redis.tmtInspect(prefix, JSON.stringify({ scopes }))) as
        { now: number, scopes: Array<Omit<Inspection['scopes'][number], 'spend'> & { spend: unknown }> }
      // cjson writes an empty Lua table as {}
      return { now: raw.now, scopes: raw.scopes.map((scope) => ({ ...scope, spend: Array.isArray(scope.spend) ? scope.spend : [] })) }
    }
  }
}
