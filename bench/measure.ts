import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import type { Job } from './loader.js'
import type { BenchOptions } from './options.js'
import { cpuMicros, rssBytes, type RssSampler } from './proc-stats.js'
import { SCENARIOS } from './scenarios.js'
import type { Loader } from './stack.js'
import { median, round, type Percentiles } from './stats.js'

/** Where a call goes: the fake itself, or the gateway in front of it. */
export interface Side {
  url: string
  headers: Record<string, string>
}

export interface Bench {
  options: BenchOptions
  loader: Loader
  direct: Side
  gateway: Side & { pid: number, rss: RssSampler }
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

/** A gateway run's own cost: CPU time over the run (and its ledger flush), RSS peak and at the end. */
export async function onGateway<T extends { completed: number }> (bench: Bench, run: () => Promise<T>) {
  const { pid, rss } = bench.gateway
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

/** One call on each side, read whole and checked, before anything is timed. */
export async function smokeCheck (bench: Bench, scenario: string): Promise<string | undefined> {
  const { path, body, check } = SCENARIOS[scenario]
  for (const [name, side] of [['direct', bench.direct], ['gateway', bench.gateway]] as const) {
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
  for (const side of [bench.direct, bench.gateway]) {
    await bench.loader.run(cannonJob(side, scenario, connections, seconds), (seconds + 60) * 1000)
  }
}

/**
 * Direct and through the gateway, alternating which goes first, `reps` times each after a warm-up of both;
 * medians of the per-run figures. Added latency is the median of each pair's difference.
 */
export async function measureScenario (bench: Bench, scenario: string, connections: number) {
  const { loader, options } = bench
  const timeoutMs = (options.durationS + 60) * 1000
  await warmBoth(bench, scenario, connections, options.warmupS)
  const direct: CannonResult[] = []
  const gateway: Array<Awaited<ReturnType<typeof onGateway<CannonResult>>>> = []
  for (let rep = 0; rep < options.reps; rep++) {
    const job = (side: Side) =>
      loader.run<CannonResult>(cannonJob(side, scenario, connections, options.durationS), timeoutMs)
    const runDirect = async () => { direct.push(await job(bench.direct)) }
    const runGateway = async () => { gateway.push(await onGateway(bench, () => job(bench.gateway))) }
    if (rep % 2 === 0) { await runDirect(); await runGateway() } else { await runGateway(); await runDirect() }
  }
  const gw = gateway.map((run) => run.result)
  const pick = (runs: CannonResult[], p: 'p50' | 'p90' | 'p99') => median(runs.map((run) => run.latencyMs[p]))
  const added = (p: 'p50' | 'p90' | 'p99') => median(gw.map((run, i) => run.latencyMs[p] - direct[i].latencyMs[p]))
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
    cpuUsPerCall: round(median(gateway.map((run) => run.cpuUsPerCall)), 0),
    rssPeakMB: round(Math.max(...gateway.map((run) => run.rssPeak)) / MB, 1),
    rssEndMB: round(gateway[gateway.length - 1].rssEnd / MB, 1)
  }
}

/** Streams one after another on one connection, measured with undici: time to the first event, added. */
export async function measureTtfb (bench: Bench, scenario: string) {
  const { loader, options } = bench
  const { path, body } = SCENARIOS[scenario]
  const calls = Math.max(1, Math.ceil(options.ttfbCalls / options.reps))
  const job = (side: Side): Job => ({ kind: 'ttfb', url: side.url + path, headers: jsonHeaders(side), body, calls })
  const direct: TtfbResult[] = []
  const gateway: TtfbResult[] = []
  for (let rep = 0; rep < options.reps; rep++) {
    const sides = rep % 2 === 0 ? [bench.direct, bench.gateway] : [bench.gateway, bench.direct]
    for (const side of sides) {
      const runs = side === bench.direct ? direct : gateway
      runs.push(await loader.run<TtfbResult>(job(side), 120_000 + calls * 1000))
    }
  }
  const added = (p: 'p50' | 'p99') => median(gateway.map((run, i) => run.firstByteMs[p] - direct[i].firstByteMs[p]))
  return {
    calls: calls * options.reps,
    failed: [...direct, ...gateway].reduce((sum, run) => sum + run.failed, 0),
    directP50: round(median(direct.map((run) => run.firstByteMs.p50))),
    gatewayP50: round(median(gateway.map((run) => run.firstByteMs.p50))),
    addedP50: round(added('p50')),
    addedP99: round(added('p99'))
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
