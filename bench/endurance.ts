import { request } from 'undici'
import type { Job } from './loader.js'
import { cannonJob, jsonHeaders, onGateway, type Bench, type CannonResult, type Side } from './measure.js'
import { SCENARIOS } from './scenarios.js'
import { median, round, type Percentiles } from './stats.js'

const MB = 1024 * 1024
/** RSS may wobble with the garbage collector; more than this from the early plateau to the end is growth. */
export const SOAK_GROWTH_TOLERANCE_MB = 10
/** calls a second below which the soak overruns its time bound (1,000,000 calls: 2 h 47 min) */
export const SOAK_MIN_RATE = 100

/**
 * `calls` chat calls through the gateway at the throughput level. Memory is compared between the plateau after
 * warm-up (10–20 % of the run) and the last 10 %: a leak grows with calls, a cache or a pool does not.
 */
export async function measureSoak (bench: Bench, calls: number) {
  const { connections } = bench.options
  const job = { ...cannonJob(bench.gateway, 'chat', connections, 0), amount: calls } as Job
  const timeoutMs = 120_000 + (calls / SOAK_MIN_RATE) * 1000
  const run = await onGateway(bench, () => bench.loader.run<CannonResult>(job, timeoutMs))
  const samples = bench.gateway.rss.samples()
  const window = (from: number, to: number) => {
    const start = samples[0].at
    const span = samples[samples.length - 1].at - start
    return median(samples.filter((s) => s.at >= start + from * span && s.at <= start + to * span).map((s) => s.rss))
  }
  const early = window(0.1, 0.2)
  const late = window(0.9, 1)
  const { result } = run
  return {
    scenario: 'soak',
    calls: result.completed,
    failed: result.non2xx + result.errors + result.timeouts,
    connections,
    rps: round(result.rps, 0),
    p50: round(result.latencyMs.p50),
    p99: round(result.latencyMs.p99),
    cpuUsPerCall: round(run.cpuUsPerCall, 0),
    redisUsPerCall: run.redisUsPerCall === undefined ? null : round(run.redisUsPerCall, 0),
    postgresUsPerCall: run.postgresUsPerCall === undefined ? null : round(run.postgresUsPerCall, 0),
    rssEarlyMB: round(early / MB, 1),
    rssLateMB: round(late / MB, 1),
    rssPeakMB: round(run.rssPeak / MB, 1),
    rssEndMB: round(run.rssEnd / MB, 1),
    growthMB: round((late - early) / MB, 1)
  }
}

interface HoldResult {
  streams: number
  complete: number
  incomplete: number
  failed: number
  peakOpen: number
  errors: Record<string, number>
  durationS: Percentiles
}

/**
 * N slow streams at once, each on a connection of its own, whose upstream sends one event a second: first straight
 * to the slow fake (what the streams take without a gateway), then through the gateway.
 */
export async function measureHold (bench: Bench, streams: number, holdSeconds: number, words: number) {
  const { path, body } = SCENARIOS.stream
  const timeoutMs = (holdSeconds * 3 + 120) * 1000
  await warm(bench.direct)
  const job = (url: string, headers: Record<string, string>): Job => ({
    kind: 'hold',
    url: url + path,
    headers,
    body,
    streams,
    expectedEvents: words + 3,
    timeoutMs: (holdSeconds + 60) * 1000
  })
  const direct = await bench.loader.run<HoldResult>(job(bench.direct.url, jsonHeaders(bench.direct)), timeoutMs)
  // just before its run: a token looked up more than TOKEN_CACHE_TTL_MS ago would be looked up by every stream at once
  await warm(bench.gateway)
  const run = await onGateway(bench, async () => {
    const result = await bench.loader.run<HoldResult>(job(bench.gateway.url, jsonHeaders(bench.gateway)), timeoutMs)
    return { ...result, completed: result.complete }
  })
  const { result } = run
  return {
    scenario: 'hold',
    streams,
    holdSeconds,
    direct: {
      complete: direct.complete,
      streamP50S: round(direct.durationS.p50, 2),
      streamMaxS: round(direct.durationS.max, 2)
    },
    complete: result.complete,
    incomplete: result.incomplete,
    failed: result.failed,
    errors: result.errors,
    peakOpen: result.peakOpen,
    streamP50S: round(result.durationS.p50, 2),
    streamMaxS: round(result.durationS.max, 2),
    cpuUsPerStream: round(run.cpuUsPerCall, 0),
    rssPeakMB: round(run.rssPeak / MB, 1),
    rssEndMB: round(run.rssEnd / MB, 1)
  }
}

/** One chat call: a new process compiles on its first call what every later one reuses (seconds, on the fake). */
async function warm (side: Side) {
  const { path, body } = SCENARIOS.chat
  const res = await request(side.url + path, { method: 'POST', headers: jsonHeaders(side), body })
  await res.body.dump()
  if (res.statusCode !== 200) throw new Error(`warm-up: ${side.url} answered ${res.statusCode}`)
}
