import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import type { Job } from './loader.js'
import type { BenchOptions } from './options.js'
import { cpuMicros, rssBytes, serviceCpuMicros, type RssSampler, type ServiceCpu } from './proc-stats.js'
import { SCENARIOS } from './scenarios.js'
import type { Loader } from './stack.js'
import { median, round, type Percentiles } from './stats.js'

/** Where a call goes: the fake itself, or the gateway in front of it. */
export interface Side {
  url: string
  headers: Record<string, string>
}

/** A side in a process of the harness's own, whose CPU and memory are read from /proc. */
export type Watched = Side & { pid: number, rss: RssSampler }

export interface Bench {
  options: BenchOptions
  loader: Loader
  direct: Side
  /** the least a Node proxy does (bench/floor.ts), in front of the same fake; absent with --no-floor */
  floor?: Watched
  gateway: Watched
  /** which of Redis and PostgreSQL run on this machine, where their processes' CPU can be read */
  localServices: Record<keyof ServiceCpu, boolean>
}

export interface CannonResult {
  completed: number
  non2xx: number
  errors: number
  timeouts: number
  statusCodes: Record<string, number>
  elapsedS: number
  rps: number
  latencyMs: Percentiles
}

interface TtfbResult {
  failed: number
  headersMs: Percentiles
  firstByteMs: Percentiles
  totalMs: Percentiles
}

/** The gateway's usage recorder flushes every 200 ms: its CPU for a run's calls is counted once it has. */
const SETTLE_MS = 400
const MB = 1024 * 1024

/**
 * A gateway run's own cost: CPU time over the run (and its ledger flush), RSS peak and at the end; and what its calls
 * cost the local Redis and PostgreSQL, per call (undefined for a server elsewhere). Nothing else is meant to use them
 * meanwhile: the direct and floor runs do not.
 */
export async function onGateway<T extends { completed: number }> (bench: Bench, run: () => Promise<T>) {
  const before = serviceCpuMicros()
  const measured = await onProcess(bench.gateway, run)
  const after = serviceCpuMicros()
  const perCall = (service: keyof ServiceCpu) => {
    const [from, to] = [before[service], after[service]]
    if (!bench.localServices[service] || from === undefined || to === undefined) return undefined
    return (to - from) / Math.max(1, measured.result.completed)
  }
  return { ...measured, redisUsPerCall: perCall('redis'), postgresUsPerCall: perCall('postgres') }
}

/** The same for any side in a process of its own (the floor gets the same 400 ms, so both are read alike). */
async function onProcess<T extends { completed: number }> (side: Watched, run: () => Promise<T>) {
  const { pid, rss } = side
  const cpuBefore = cpuMicros(pid)
  rss.reset()
  const result = await run()
  await sleep(SETTLE_MS)
  const cpuUs = cpuMicros(pid) - cpuBefore
  const cpuUsPerCall = cpuUs / Math.max(1, result.completed)
  return { result, cpuUs, cpuUsPerCall, rssPeak: rss.peak(), rssEnd: rssBytes(pid) }
}

export function cannonJob (side: Side, scenario: string, connections: number, durationS: number): Job {
  const { path, body } = SCENARIOS[scenario]
  return { kind: 'cannon', url: side.url + path, headers: jsonHeaders(side), body, connections, durationS }
}

/** direct, floor (when there is one), gateway: the order of the first repetition. */
function sides (bench: Bench): Array<[string, Side]> {
  return [['direct', bench.direct], ...bench.floor ? [['floor', bench.floor] as [string, Side]] : [],
    ['gateway', bench.gateway]]
}

/** One call on each side, read whole and checked, before anything is timed. */
export async function smokeCheck (bench: Bench, scenario: string): Promise<string | undefined> {
  const { path, body, check } = SCENARIOS[scenario]
  for (const [name, side] of sides(bench)) {
    const res = await request(side.url + path, { method: 'POST', headers: jsonHeaders(side), body })
    const text = await res.body.text()
    let ok = false
    try { ok = res.statusCode === 200 && check(text) } catch {}
    if (!ok) return `${name}: status ${res.statusCode}, ${text.slice(0, 300)}`
  }
}

/**
 * Every scenario at the throughput level on each side, before anything is measured: V8 optimises a function only
 * after many calls, and a gateway measured just after its start runs much of its hot path as baseline code (the CPU a
 * call at one connection fell threefold over the first 40 s of a run; docs/benchmarks.md).
 */
export async function warmUp (bench: Bench, scenarios: string[]) {
  for (const scenario of scenarios) await warmBoth(bench, scenario, bench.options.connections, bench.options.jitWarmupS)
}

/** A discarded run on each side. */
async function warmBoth (bench: Bench, scenario: string, connections: number, seconds: number) {
  for (const [, side] of sides(bench)) {
    await bench.loader.run(cannonJob(side, scenario, connections, seconds), (seconds + 60) * 1000)
  }
}

type WatchedRun = Awaited<ReturnType<typeof onProcess<CannonResult>>>
type GatewayRun = Awaited<ReturnType<typeof onGateway<CannonResult>>>

/**
 * Direct, through the floor (unless --no-floor) and through the gateway, `reps` times each after a warm-up of each,
 * every other repetition in the reverse order (direct, floor, gateway; gateway, floor, direct); medians of the
 * per-run figures. Added latency is the median of each repetition's difference.
 */
export async function measureScenario (bench: Bench, scenario: string, connections: number) {
  const { loader, options } = bench
  const timeoutMs = (options.durationS + 60) * 1000
  // one connection after the throughput level runs on code V8 has dropped for it: its first several thousand calls
  // cost twice the CPU of the later ones (docs/benchmarks.md, "one connection at rest")
  const warmS = connections === 1 ? Math.max(options.warmupS, options.jitWarmupS) : options.warmupS
  await warmBoth(bench, scenario, connections, warmS)
  const direct: CannonResult[] = []
  const floor: WatchedRun[] = []
  const gateway: GatewayRun[] = []
  for (let rep = 0; rep < options.reps; rep++) {
    const job = (side: Side) =>
      loader.run<CannonResult>(cannonJob(side, scenario, connections, options.durationS), timeoutMs)
    const onFloor = bench.floor
    const steps = [
      async () => { direct.push(await job(bench.direct)) },
      ...onFloor ? [async () => { floor.push(await onProcess(onFloor, () => job(onFloor))) }] : [],
      async () => { gateway.push(await onGateway(bench, () => job(bench.gateway))) }
    ]
    if (rep % 2 === 1) steps.reverse()
    for (const step of steps) await step()
  }
  const gw = gateway.map((run) => run.result)
  const fl = floor.map((run) => run.result)
  const pick = (runs: CannonResult[], p: 'p50' | 'p90' | 'p99') => median(runs.map((run) => run.latencyMs[p]))
  const minus = (runs: CannonResult[], base: CannonResult[], p: 'p50' | 'p90' | 'p99') =>
    median(runs.map((run, i) => run.latencyMs[p] - base[i].latencyMs[p]))
  const added = (p: 'p50' | 'p90' | 'p99') => minus(gw, direct, p)
  const cpu = (runs: WatchedRun[]) => round(median(runs.map((run) => run.cpuUsPerCall)), 0)
  const side = (runs: CannonResult[]) => ({
    rps: round(median(runs.map((run) => run.rps)), 0),
    p50: round(pick(runs, 'p50')),
    p90: round(pick(runs, 'p90')),
    p99: round(pick(runs, 'p99')),
    calls: runs.reduce((sum, run) => sum + run.completed, 0),
    failed: runs.reduce((sum, run) => sum + run.non2xx + run.errors + run.timeouts, 0)
  })
  return {
    scenario,
    connections,
    reps: options.reps,
    durationS: options.durationS,
    direct: side(direct),
    gateway: side(gw),
    addedMs: { p50: round(added('p50')), p90: round(added('p90')), p99: round(added('p99')) },
    cpuUsPerCall: cpu(gateway),
    // what the gateway's calls cost the local Redis (admission scripts) and PostgreSQL (ledger inserts); null: elsewhere
    redisUsPerCall: serviceCpu(gateway.map((run) => run.redisUsPerCall)),
    postgresUsPerCall: serviceCpu(gateway.map((run) => run.postgresUsPerCall)),
    rssPeakMB: round(Math.max(...gateway.map((run) => run.rssPeak)) / MB, 1),
    rssEndMB: round(gateway[gateway.length - 1].rssEnd / MB, 1),
    // what any Node proxy pays here, and what is left for the gateway's own work (gateway minus floor, per repetition)
    ...floor.length > 0
      ? {
          floor: {
            ...side(fl),
            addedMs: {
              p50: round(minus(fl, direct, 'p50')),
              p90: round(minus(fl, direct, 'p90')),
              p99: round(minus(fl, direct, 'p99'))
            },
            cpuUsPerCall: cpu(floor),
            rssPeakMB: round(Math.max(...floor.map((run) => run.rssPeak)) / MB, 1)
          },
          overFloor: {
            p50Ms: round(minus(gw, fl, 'p50')),
            cpuUsPerCall: round(median(gateway.map((run, i) => run.cpuUsPerCall - floor[i].cpuUsPerCall)), 0)
          }
        }
      : {}
  }
}

function serviceCpu (perRun: Array<number | undefined>): number | null {
  return perRun[0] === undefined ? null : round(median(perRun as number[]), 0)
}

/** Streams one after another on one connection, measured with undici: time to the first event, added. */
export async function measureTtfb (bench: Bench, scenario: string) {
  const { loader, options } = bench
  const { path, body } = SCENARIOS[scenario]
  const calls = Math.max(1, Math.ceil(options.ttfbCalls / options.reps))
  const job = (side: Side): Job => ({ kind: 'ttfb', url: side.url + path, headers: jsonHeaders(side), body, calls })
  const runs = new Map<string, TtfbResult[]>(sides(bench).map(([name]) => [name, []]))
  for (let rep = 0; rep < options.reps; rep++) {
    const order = rep % 2 === 0 ? sides(bench) : sides(bench).reverse()
    for (const [name, side] of order) {
      runs.get(name)?.push(await loader.run<TtfbResult>(job(side), 120_000 + calls * 1000))
    }
  }
  const direct = runs.get('direct') as TtfbResult[]
  const gateway = runs.get('gateway') as TtfbResult[]
  const floor = runs.get('floor') ?? []
  const minus = (these: TtfbResult[], base: TtfbResult[], p: 'p50' | 'p99') =>
    round(median(these.map((run, i) => run.firstByteMs[p] - base[i].firstByteMs[p])))
  return {
    calls: calls * options.reps,
    failed: [...runs.values()].flat().reduce((sum, run) => sum + run.failed, 0),
    directP50: round(median(direct.map((run) => run.firstByteMs.p50))),
    gatewayP50: round(median(gateway.map((run) => run.firstByteMs.p50))),
    addedP50: minus(gateway, direct, 'p50'),
    addedP99: minus(gateway, direct, 'p99'),
    ...floor.length > 0
      ? {
          floorP50: round(median(floor.map((run) => run.firstByteMs.p50))),
          floorAddedP50: minus(floor, direct, 'p50'),
          floorAddedP99: minus(floor, direct, 'p99')
        }
      : {}
  }
}

/** What the gateway burns doing nothing (timers, lease renewals, pools): the floor under CPU per call at low rates. */
export async function measureIdle (bench: Bench, seconds: number) {
  const { pid, rss } = bench.gateway
  const before = cpuMicros(pid)
  await sleep(seconds * 1000)
  const cpuPercent = round(((cpuMicros(pid) - before) / (seconds * 1e6)) * 100, 2)
  return { scenario: 'idle', seconds, cpuPercent, rssMB: round(rss.peak() / MB, 1) }
}

export function jsonHeaders (side: Side): Record<string, string> {
  return { ...side.headers, 'content-type': 'application/json' }
}
