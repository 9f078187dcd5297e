import type { Cluster, Redis, Result } from 'ioredis'
import { dataNodes, scanKeys, turnWriter } from '../redis.js'
import { ADMIT_SCRIPT, INSPECT_SCRIPT, RENEW_SCRIPT, SEED_SCRIPT, SETTLE_SCRIPT, SNAPSHOT_SCRIPT } from './scripts.js'
import { decodeAdmit, type AdmissionStore, type Inspection, type SettleInput } from './store.js'

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
 * How long a settlement may wait for the next command to leave with it. No call waits on its own settlement (its
 * answer has gone), and on loopback the socket write is most of what a command costs the gateway: at one connection,
 * a call's settlement and the next call's admission share a write (issue #7, docs/benchmarks.md).
 */
const SETTLE_DELAY_MS = 2

/**
 * Admission on Redis or Redis Cluster: each call is one EVALSHA (ioredis falls back to EVAL once after a script
 * flush), routed by KEYS[1], the workspace prefix whose hash tag holds every key the script touches.
 *
 * Settlements wait up to SETTLE_DELAY_MS and go out just before the next command of any kind, in the order they were
 * asked for: a command never overtakes a settlement asked for before it, except just after Redis lost its scripts
 * (a flush, a failover), when ioredis sends a script whole again after what followed it. Commands issued in one turn
 * of the event loop leave in one write (`turnWriter`, src/redis.ts). A settlement that frees a concurrency slot does
 * not wait: the client has its answer, and its next call may reach another replica at once.
 */
export function createRedisStore (redis: Redis | Cluster): AdmissionStore {
  const waiting: Array<() => void> = []
  // the settlements not yet answered, for flush()
  const unanswered = new Set<Promise<unknown[]>>()
  let timer: NodeJS.Timeout | undefined
  const batchWrites = turnWriter(redis)
  /** Before every command, and when held settlements may wait no longer: those first, all in the turn's write. */
  function beforeCommand () {
    batchWrites()
    if (waiting.length === 0) return
    clearTimeout(timer)
    timer = undefined
    for (const send of waiting.splice(0)) send()
  }
  /** Queues a settlement behind those held back; it waits for the next command unless it frees a slot. */
  function queueSettlement (prefix: string, input: SettleInput, freesSlot: boolean): Promise<unknown[]> {
    const json = JSON.stringify(input)
    const settled = new Promise<unknown[]>((resolve, reject) => {
      // sent synchronously, so that it leaves in the same write as the command that sends it
      waiting.push(() => {
        try {
          redis.tmtSettle(prefix, json).then(resolve, reject)
        } catch (err) {
          reject(err)
        }
      })
    })
    // a slot is not held back: the client has its answer, and its next call may reach another replica at once
    if (freesSlot) beforeCommand()
    else timer ??= setTimeout(beforeCommand, SETTLE_DELAY_MS)
    unanswered.add(settled)
    const forget = () => { unanswered.delete(settled) }
    settled.then(forget, forget)
    return settled
  }

  redis.defineCommand('tmtAdmit', { numberOfKeys: 1, lua: ADMIT_SCRIPT })
  redis.defineCommand('tmtSeed', { numberOfKeys: 1, lua: SEED_SCRIPT })
  redis.defineCommand('tmtSnapshot', { lua: SNAPSHOT_SCRIPT })
  redis.defineCommand('tmtSettle', { numberOfKeys: 1, lua: SETTLE_SCRIPT })
  redis.defineCommand('tmtRenew', { numberOfKeys: 1, lua: RENEW_SCRIPT })
  redis.defineCommand('tmtInspect', { numberOfKeys: 1, lua: INSPECT_SCRIPT })
  return {
    kind: 'redis',
    async admit (prefix, input) {
      beforeCommand()
      return decodeAdmit(await redis.tmtAdmit(prefix, JSON.stringify(input)))
    },
    async seed (prefix, entries, held) {
      beforeCommand()
      if (entries.length === 0) return true
      return Number(await redis.tmtSeed(prefix, JSON.stringify({ entries, held }))) === 1
    },
    async markNew (prefix) {
      beforeCommand()
      await redis.set(`${prefix}:epoch`, 1)
    },
    async snapshot (prefix, keys) {
      beforeCommand()
      const raw = JSON.parse(await redis.tmtSnapshot(String(keys.length + 1), prefix, ...keys)) as
        { vouched: unknown[] | Record<string, never>, held: string[] | Record<string, never> }
      // cjson writes an empty Lua table as {}
      const vouched = Array.isArray(raw.vouched) ? raw.vouched : []
      return {
        vouched: keys.map((_, i) => Array.isArray(vouched[i]) ? vouched[i] as string[] : []),
        held: Array.isArray(raw.held) ? raw.held : []
      }
    },
    async settle (prefix, input, freesSlot = false) {
      const reply = await queueSettlement(prefix, input, freesSlot)
      if (Number(reply[0]) !== 1) return []
      // cjson encodes an empty Lua table as {}
      const crossed = JSON.parse(String(reply[1])) as Array<[string, number]> | Record<string, never>
      return Array.isArray(crossed) ? crossed : []
    },
    async renew (prefix, calls, lease) {
      beforeCommand()
      if (calls.length > 0) await redis.tmtRenew(prefix, JSON.stringify({ lease, calls }))
    },
    async flush () {
      beforeCommand()
      await Promise.allSettled(unanswered)
    },
    async inspect (prefix, scopes) {
      beforeCommand()
      const raw = JSON.parse(await redis.tmtInspect(prefix, JSON.stringify({ scopes }))) as
        { now: number, scopes: Array<Omit<Inspection['scopes'][number], 'spend'> & { spend: unknown }> }
      // cjson writes an empty Lua table as {}
      return { now: raw.now, scopes: raw.scopes.map((scope) => ({ ...scope, spend: Array.isArray(scope.spend) ? scope.spend : [] })) }
    },
    async forget (prefix) {
      // the settlements held back, answered first: one of this workspace's would otherwise write its keys back after
      // the scan (a Cluster sends them on the next tick, a scan of its node goes at once)
      beforeCommand()
      await Promise.allSettled(unanswered)
      // every key of a workspace shares its hash slot: on a Cluster they are all on one master, found by scanning each.
      // UNLINK frees them off Redis' main thread (a busy workspace's hour of settled ids is a large set)
      for (const node of dataNodes(redis)) {
        for await (const keys of scanKeys(node, `${prefix}:*`)) await node.unlink(...keys)
      }
    }
  }
}
