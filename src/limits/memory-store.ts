import { counterTtl } from './counter-expiry.js'
import { DEFAULT_THRESHOLDS } from './policy.js'
import type { AdmissionStore, AdmitInput, AdmitResult, DenyReason, RateInfo, ScopeInput, SettleInput } from './store.js'

const MINUTE = 60_000
const CAP_KINDS = ['d', 'm', 'l'] as const
const HOUR = 3_600_000

interface Held {
  cost: number
  spend: string[]
  conc: string[]
  tpm: string[]
  second: number
  /** when it was admitted (absent for a call put back after a loss) */
  at?: number
}

interface Spend {
  settled?: number
  reserved: number
  crossed: Set<number>
  /** request id → cost of a call that settled while the counter was missing */
  vouched: Map<string, number>
}

/**
 * Counters created with one TTL, oldest first: so also in expiry order, the expired ones at the head (after the clock
 * steps back, one may go late by the step, never early).
 */
interface ExpiryQueue {
  items: Array<{ expiry: number, key: string }>
  head: number
}

/**
 * Admission times, oldest first from `head`. A busy workspace's minute is hundreds of thousands of calls: an array
 * that long lives outside V8's young heap, where a shift copies the whole of it, so the times that leave the minute
 * are skipped over and dropped in one copy once they are half the array.
 */
interface Admissions {
  at: number[]
  head: number
}

const newAdmissions = (): Admissions => ({ at: [], head: 0 })

/**
 * The same decisions as the Redis scripts (src/limits/scripts.ts), in process memory: for a single replica with no
 * REDIS_URL, and as the fallback rate limiter when Redis is unreachable. JavaScript runs one call at a time, so each
 * method is as atomic as a script.
 */
export function createMemoryStore (clock: () => number = Date.now): AdmissionStore {
  const requests = new Map<string, Admissions>() // P:rpm
  const buckets = new Map<string, Map<number, number>>() // P:rpd, P:tpm
  const leases = new Map<string, Map<string, number>>() // P:conc → id → expiry
  const spends = new Map<string, Spend>()
  const expiring = new Map<number, ExpiryQueue>() // TTL → the counters created with it
  const reservations = new Map<string, Map<string, { expiry: number, held: Held }>>() // per workspace prefix
  const done = new Map<string, Map<string, number>>()
  const usualMs = new Map<string, number>() // P:conc → moving average of how long a call holds its slot
  // workspace prefix (its reservations) or P:conc → no expiry in that map is earlier. A busy store holds thousands of
  // calls in flight: their maps are read whole only once something in them may have expired, not on every admission
  const earliest = new Map<string, number>()

  const bucketsOf = (key: string) => mapOf(buckets, key)

  /** a spend counter; a day's or a month's expires as its Redis key would, counted from its first write */
  function spendOf (key: string, now: number): Spend {
    let spend = spends.get(key)
    if (spend === undefined) {
      spend = { reserved: 0, crossed: new Set(), vouched: new Map() }
      spends.set(key, spend)
      const ttl = counterTtl(key)
      if (ttl !== undefined) mapOf(expiring, ttl, newExpiryQueue).items.push({ expiry: now + ttl, key })
    }
    return spend
  }

  /** drops the counters of past days and months, reading only those (a seed does it: a new period's counter) */
  function dropExpiredCounters (now: number) {
    for (const queue of expiring.values()) {
      while (queue.head < queue.items.length && queue.items[queue.head].expiry <= now) {
        spends.delete(queue.items[queue.head++].key)
      }
      if (queue.head > queue.items.length / 2) {
        queue.items = queue.items.slice(queue.head)
        queue.head = 0
      }
    }
  }
  const leasesOf = (key: string) => mapOf(leases, key)

  /** an expiry set in the map under `key`: its sweep must not wait past it */
  function expiresAt (key: string, expiry: number) {
    if (expiry < (earliest.get(key) ?? Infinity)) earliest.set(key, expiry)
  }

  function setLease (key: string, id: string, expiry: number) {
    leasesOf(key).set(id, expiry)
    expiresAt(key, expiry)
  }

  /** drops (`drop`) what expired by `now` in the map under `key`, reading the map only when something may have */
  function sweep<V> (key: string, map: Map<string, V>, now: number, expiryOf: (value: V) => number,
    drop: (id: string) => void) {
    if (now < (earliest.get(key) ?? Infinity)) return
    let next = Infinity
    for (const [id, value] of map) {
      const expiry = expiryOf(value)
      if (expiry <= now) drop(id)
      else next = Math.min(next, expiry)
    }
    earliest.set(key, next)
  }

  function release (prefix: string, id: string): Held | undefined {
    const entry = mapOf(reservations, prefix).get(id)
    mapOf(reservations, prefix).delete(id)
    if (!entry) return undefined
    for (const key of entry.held.spend) {
      const spend = spends.get(key)
      if (spend) spend.reserved -= entry.held.cost
    }
    for (const key of entry.held.conc) leasesOf(key).delete(id)
    return entry.held
  }

  function sumWindow (key: string, last: number, span: number, width: number, limit: number, need: number, now: number) {
    const values: number[] = []
    for (let b = last - span; b <= last; b++) values.push(bucketsOf(key).get(b) ?? 0)
    const total = values.reduce((sum, value) => sum + value, 0)
    let retryAt = now
    if (total + need > limit) {
      let freed = 0
      for (let i = 0; i < values.length; i++) {
        freed += values[i]
        retryAt = (last + i + 1) * width
        if (total - freed + need <= limit) break
      }
    }
    return { total, retryAt }
  }

  function prune (key: string, oldest: number) {
    const map = bucketsOf(key)
    if (map.size <= 130) return
    for (const bucket of map.keys()) if (bucket < oldest) map.delete(bucket)
  }

  return {
    kind: 'memory',
    async admit (prefix, a: AdmitInput): Promise<AdmitResult> {
      const now = clock()
      if (now < a.day.s || now >= a.day.e || now < a.month.s || now >= a.month.e) return { kind: 'period', now }
      sweep(prefix, mapOf(reservations, prefix), now, (entry) => entry.expiry, (id) => release(prefix, id))

      const spendKey = (scope: ScopeInput, kind: string) =>
        kind === 'd' ? `${scope.p}:spend:d:${a.day.id}` : kind === 'm' ? `${scope.p}:spend:m:${a.month.id}` : `${scope.p}:spend:l`
      const missing: Array<{ scope: number, kind: 'd' | 'm' | 'l', key: string }> = []
      a.scopes.forEach((scope, i) => {
        for (const kind of Object.keys(scope.caps ?? {}) as Array<'d' | 'm' | 'l'>) {
          if (spends.get(spendKey(scope, kind))?.settled === undefined) missing.push({ scope: i, kind, key: spendKey(scope, kind) })
        }
      })
      if (missing.length > 0) return { kind: 'seed', missing }

      const deny = (reason: DenyReason, scope: number, retryAt: number | null): AdmitResult =>
        ({ kind: 'denied', reason, scope, retryAfterMs: retryAt === null ? null : Math.max(0, retryAt - now), now })
      const second = Math.floor(now / 1000)
      const hour = Math.floor(now / HOUR)
      let { maxTokens, cost } = a
      let tokens = a.promptTokens + maxTokens * a.n

      let room: number | undefined
      let settledRoom: number | undefined
      const caps: Array<{ scope: number, kind: 'd' | 'm' | 'l', key: string, cap: number, settled: number,
        left: number }> = []
      a.scopes.forEach((scope, i) => {
        // in the order d, m, l, as the Redis script reads them: a refusal's crossings come in one order in both
        for (const kind of CAP_KINDS) {
          const cap = scope.caps?.[kind]
          if (cap === undefined) continue
          const key = spendKey(scope, kind)
          const spend = spends.get(key) as Spend
          const settled = spend.settled ?? 0
          const unsettled = cap - settled
          const left = unsettled - spend.reserved
          caps.push({ scope: i, kind, key, cap, settled, left })
          if (room === undefined || left < room) room = left
          if (settledRoom === undefined || unsettled < settledRoom) settledRoom = unsettled
        }
      })
      if (room !== undefined && cost > room) {
        let affordable = 0
        if (a.clamp && a.outputPerMillion > 0 && a.promptCost < room) {
          affordable = Math.min(maxTokens, Math.floor((room - a.promptCost) * 1_000_000 / a.outputPerMillion))
        }
        if (affordable < 1) {
          // of the caps the call does not fit under even clamped to one token, the one whose period ends last (a
          // lifetime's never): the call cannot succeed before then. On a tie the longer period, then the first scope,
          // as the Redis script does
          const least = a.clamp && a.outputPerMillion > 0
            ? Math.min(cost, a.promptCost + Math.ceil(a.outputPerMillion / 1_000_000))
            : cost
          const reset = { d: a.day.e, m: a.month.e, l: Infinity }
          const rank = { d: 1, m: 2, l: 3 }
          let binding: (typeof caps)[number] | undefined
          for (const c of caps) {
            if (c.left >= least) continue
            if (binding === undefined || reset[c.kind] > reset[binding.kind] ||
              (reset[c.kind] === reset[binding.kind] && rank[c.kind] > rank[binding.kind])) binding = c
          }
          const { scope, kind } = binding as (typeof caps)[number]
          const need = a.clamp ? a.promptCost + Math.ceil(a.outputPerMillion / 1_000_000) : cost
          const busy = (settledRoom as number) > (room as number) && (settledRoom as number) >= need
          const denied = { ...deny(`cap_${kind}`, scope, kind === 'l' ? null : reset[kind]), busy } as
            Extract<AdmitResult, { kind: 'denied' }>
          if (busy) return denied
          // of every cap of the call, each threshold its settled spend is at or past and not recorded in the period, as
          // the Redis script says
          for (const c of caps) {
            const recorded = (spends.get(c.key) as Spend).crossed
            for (const pct of a.scopes[c.scope].th ?? DEFAULT_THRESHOLDS) {
              if (c.settled * 100 < c.cap * pct || recorded.has(pct)) continue
              recorded.add(pct)
              denied.crossed ??= []
              denied.crossed.push([c.key, pct])
            }
          }
          return denied
        }
        maxTokens = affordable
        cost = a.promptCost + Math.ceil(affordable * a.outputPerMillion / 1_000_000)
        tokens = a.promptTokens + maxTokens * a.n
      }

      let rpm: RateInfo | undefined
      let tpm: RateInfo | undefined
      for (const [i, scope] of a.scopes.entries()) {
        if (scope.rpm) {
          const { at, head } = expire(mapOf(requests, `${scope.p}:rpm`, newAdmissions), now - MINUTE)
          const count = at.length - head
          if (count >= scope.rpm) return deny('rpm', i, at[at.length - scope.rpm] + MINUTE + 1)
          if (rpm === undefined || scope.rpm - count - 1 < rpm[1]) {
            rpm = [scope.rpm, scope.rpm - count - 1, count > 0 ? at[head] + MINUTE - now : MINUTE]
          }
        }
        if (scope.rpd) {
          const { total, retryAt } = sumWindow(`${scope.p}:rpd`, hour, 24, HOUR, scope.rpd, 1, now)
          if (total + 1 > scope.rpd) return deny('rpd', i, retryAt)
        }
        if (scope.tpm) {
          if (tokens > scope.tpm) return deny('tpm_too_large', i, null)
          const { total, retryAt } = sumWindow(`${scope.p}:tpm`, second, 60, 1000, scope.tpm, tokens, now)
          if (total + tokens > scope.tpm) return deny('tpm', i, retryAt)
          if (tpm === undefined || scope.tpm - total - tokens < tpm[1]) tpm = [scope.tpm, scope.tpm - total - tokens, MINUTE]
        }
        if (scope.conc) {
          const held = leasesOf(`${scope.p}:conc`)
          sweep(`${scope.p}:conc`, held, now, (expiry) => expiry, (id) => held.delete(id))
          if (held.size >= scope.conc) {
            const usual = usualMs.get(`${scope.p}:conc`) ?? 1000
            return deny('concurrency', i, now + Math.max(50, Math.min(60_000, Math.floor(usual / scope.conc))))
          }
        }
      }

      const held: Held = { cost, spend: [], conc: [], tpm: [], second, at: now }
      for (const scope of a.scopes) {
        if (scope.rpm) mapOf(requests, `${scope.p}:rpm`, newAdmissions).at.push(now)
        if (scope.rpd) {
          const map = bucketsOf(`${scope.p}:rpd`)
          map.set(hour, (map.get(hour) ?? 0) + 1)
          prune(`${scope.p}:rpd`, hour - 24)
        }
        if (scope.tpm) {
          const map = bucketsOf(`${scope.p}:tpm`)
          map.set(second, (map.get(second) ?? 0) + tokens)
          prune(`${scope.p}:tpm`, second - 60)
          held.tpm.push(`${scope.p}:tpm`)
        }
        if (scope.conc) {
          setLease(`${scope.p}:conc`, a.id, now + a.lease)
          held.conc.push(`${scope.p}:conc`)
        }
        for (const kind of Object.keys(scope.caps ?? {})) {
          const key = spendKey(scope, kind);
          (spends.get(key) as Spend).reserved += cost
          held.spend.push(key)
        }
      }
      mapOf(reservations, prefix).set(a.id, { expiry: now + a.lease, held })
      expiresAt(prefix, now + a.lease)
      return { kind: 'admitted', now, maxTokens, cost, tokens, budgetLeft: room === undefined ? null : room - cost, rpm, tpm }
    },

    async seed (_prefix, entries, held) {
      const now = clock()
      dropExpiredCounters(now)
      const plan: Array<[Spend, number]> = []
      for (const [key, ledger, recorded, asked] of entries) {
        const spend = spendOf(key, now)
        if (spend.settled !== undefined) continue
        let total = ledger
        for (const [id, cost] of spend.vouched) {
          if (recorded.includes(id)) continue
          if (!asked.includes(id) && !held.includes(id)) return false
          total += cost
        }
        plan.push([spend, total])
      }
      for (const [spend, total] of plan) {
        spend.vouched.clear()
        spend.settled = total
      }
      return true
    },

    // one process loses its state only with its calls in flight: it never waits for replicas
    async markNew () {},

    async snapshot (prefix, keys) {
      return {
        vouched: keys.map((key) => [...(spends.get(key)?.vouched.keys() ?? [])]),
        held: [...mapOf(reservations, prefix).keys()]
      }
    },

    async settle (prefix, s: SettleInput) {
      const now = clock()
      const finished = mapOf(done, prefix)
      if (finished.has(s.id)) return []
      finished.set(s.id, now)
      // a map iterates in insertion order, which is settlement order: the hour's expired ids are the first ones, and
      // the sweep stops at the first one kept instead of reading the hour's thousands of ids on every settlement (after
      // the clock steps back, an id may stay a little past its hour: a duplicate is ignored a little longer)
      for (const [id, at] of finished) {
        if (at > now - HOUR) break
        finished.delete(id)
      }
      const held = release(prefix, s.id)
      for (const key of held?.tpm ?? []) {
        const map = bucketsOf(key)
        map.set(held!.second, (map.get(held!.second) ?? 0) + s.tokens - s.reservedTokens)
      }
      if (held?.at !== undefined) {
        for (const key of held.conc) {
          const usual = usualMs.get(key) ?? now - held.at
          usualMs.set(key, Math.floor(usual * 0.8 + (now - held.at) * 0.2))
        }
      }
      const crossed: Array<[string, number]> = []
      for (const [key, cap, thresholds = s.thresholds] of s.spend) {
        const spend = spendOf(key, now)
        if (spend.settled === undefined) {
          spend.vouched.set(s.id, s.cost)
          continue
        }
        spend.settled += s.cost
        for (const pct of thresholds) {
          if (spend.settled * 100 >= cap * pct && !spend.crossed.has(pct)) {
            spend.crossed.add(pct)
            crossed.push([key, pct])
          }
        }
      }
      return crossed
    },

    // every command takes effect as it is called: nothing waits
    async flush () {},
    async inspect (_prefix, scopes) {
      const now = clock()
      const sum = (key: string, last: number, span: number) => {
        let total = 0
        for (let b = last - span; b <= last; b++) total += bucketsOf(key).get(b) ?? 0
        return total
      }
      return {
        now,
        scopes: scopes.map(({ p, spend }) => {
          const log = requests.get(`${p}:rpm`)
          const times = (log?.at.slice(log.head) ?? []).filter((at) => at > now - MINUTE)
          return {
            rpm: times.length,
            rpmReset: times.length > 0 ? times[0] + MINUTE - now : 0,
            rpd: sum(`${p}:rpd`, Math.floor(now / HOUR), 24),
            tpm: sum(`${p}:tpm`, Math.floor(now / 1000), 60),
            conc: [...leasesOf(`${p}:conc`).values()].filter((expiry) => expiry > now).length,
            spend: spend.map((key) => [key, spends.get(key)?.settled ?? -1, spends.get(key)?.reserved ?? 0] as [string, number, number])
          }
        })
      }
    },

    async forget (prefix) {
      const own = (key: string) => key === prefix || key.startsWith(`${prefix}:`)
      for (const map of [requests, buckets, leases, spends, reservations, done, usualMs, earliest] as Array<Map<string, unknown>>) {
        for (const key of map.keys()) if (own(key)) map.delete(key)
      }
      for (const queue of expiring.values()) {
        queue.items = queue.items.slice(queue.head).filter((item) => !own(item.key))
        queue.head = 0
      }
    },

    async renew (prefix, calls, lease) {
      const now = clock()
      for (const call of calls) {
        const entry = mapOf(reservations, prefix).get(call.id)
        if (entry) {
          entry.expiry = now + lease
          expiresAt(prefix, entry.expiry)
          for (const key of entry.held.conc) if (leasesOf(key).has(call.id)) setLease(key, call.id, now + lease)
          continue
        }
        if (mapOf(done, prefix).has(call.id)) continue
        // expired while its replica stalled, still in flight: put it back (as the Redis script does after a loss)
        for (const key of call.spend) spendOf(key, now).reserved += call.cost
        for (const key of call.conc) setLease(key, call.id, now + lease)
        const held: Held = { cost: call.cost, spend: call.spend, conc: call.conc, tpm: [], second: 0 }
        mapOf(reservations, prefix).set(call.id, { expiry: now + lease, held })
        expiresAt(prefix, now + lease)
      }
    }
  }
}

/** Drops the admission times at or before `oldest`; returns the log. */
function expire (log: Admissions, oldest: number): Admissions {
  while (log.head < log.at.length && log.at[log.head] <= oldest) log.head++
  if (log.head > log.at.length / 2) {
    log.at = log.at.slice(log.head)
    log.head = 0
  }
  return log
}

const newExpiryQueue = (): ExpiryQueue => ({ items: [], head: 0 })

function mapOf<K, V> (maps: Map<K, V>, key: K, create: () => V = () => new Map() as V): V {
  let value = maps.get(key)
  if (value === undefined) {
    value = create()
    maps.set(key, value)
  }
  return value
}
