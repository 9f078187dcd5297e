import { cpus, loadavg, totalmem } from 'node:os'
import type { BenchOptions } from './options.js'
import type { Measured, Verdict } from './targets.js'

const value = (v: number | null | undefined) => v === undefined || v === null ? 'n/a' : String(v)
const triple = (...values: Array<number | null>) => values.map(value).join(' / ')

/** The load average says whether something else shared the machine: on 2 cores, anything near 2 or above did. */
export function machineLine (pinning: string, loadAtStart: number[]): string {
  const cpu = cpus()
  const load = (values: number[]) => values.map((v) => v.toFixed(2)).join(' ')
  return `${cpu.length} cores (${cpu[0]?.model.trim() ?? 'unknown CPU'}), ${Math.round(totalmem() / 2 ** 30)} GB, ` +
    `Node ${process.version}, ${process.platform}; load average ${load(loadAtStart)} at the start, ` +
    `${load(loadavg())} at the end. ${pinning}`
}

/** More runnable work than cores before the run began: other work shared the CPUs, and every figure shows it. */
export function busyWarning (loadAtStart: number[]): string | undefined {
  const cores = cpus().length
  if (loadAtStart[0] < cores) return undefined
  return `**The machine was busy**: a 1-minute load average of ${loadAtStart[0].toFixed(1)} on ${cores} cores ` +
    'before the run began. Other processes shared both CPUs (pinning keeps the bench\'s own processes apart, not ' +
    'theirs), so latency, throughput and even CPU per call are worse than on an idle machine.'
}

/** The run as Markdown: what was run where, one row per scenario, the long tests, then the targets. */
export function markdown ({ rows, soak, hold, idle }: Measured, verdicts: Verdict[], options: BenchOptions,
  machine: string, warning?: string): string {
  const hasFloor = rows.some((r) => r.floor)
  const lines = [
    `## Results: ${new Date().toISOString()} (${options.mode})`,
    '',
    `Machine: ${machine}`,
    '',
    ...warning ? [warning, ''] : [],
    `Every scenario first ran ${options.jitWarmupS} s per side at ${options.connections} connections (JIT warm-up); then ` +
      `${options.reps} repetitions of ${options.durationS} s per side (after ${options.warmupS} s of warm-up, ` +
      `${Math.max(options.warmupS, options.jitWarmupS)} s at 1 connection), ` +
      `direct${hasFloor ? ', through the floor' : ''} and through the gateway interleaved; medians. Latencies in ms; ` +
      '"added" is gateway minus direct, per repetition.',
    '',
    '| scenario | conns | direct req/s | gateway req/s | direct p50 / p90 / p99 | gateway p50 / p90 / p99 | ' +
      'added p50 / p90 / p99 | TTFB added p50 / p99 | CPU µs/call | Redis / PostgreSQL CPU µs/call | ' +
      'RSS peak / end MB | failed calls |',
    '|---|---:|---:|---:|---|---|---|---|---:|---|---|---:|'
  ]
  for (const r of rows) {
    const ttfb = r.ttfb ? `${value(r.ttfb.addedP50)} / ${value(r.ttfb.addedP99)}` : ''
    lines.push(`| ${r.scenario} | ${r.connections} | ${value(r.direct.rps)} | ${value(r.gateway.rps)} | ` +
      `${triple(r.direct.p50, r.direct.p90, r.direct.p99)} | ` +
      `${triple(r.gateway.p50, r.gateway.p90, r.gateway.p99)} | ` +
      `${triple(r.addedMs.p50, r.addedMs.p90, r.addedMs.p99)} | ${ttfb} | ${value(r.cpuUsPerCall)} | ` +
      `${triple(r.redisUsPerCall, r.postgresUsPerCall)} | ` +
      `${value(r.rssPeakMB)} / ${value(r.rssEndMB)} | ${r.direct.failed + r.gateway.failed} |`)
  }
  lines.push('', '"CPU µs/call" is the gateway\'s process. "Redis / PostgreSQL" is what the same runs cost this ' +
    'machine\'s Redis (the admission scripts) and PostgreSQL (the ledger inserts), per call: not in the gateway\'s ' +
    'figure nor in the targets, but CPU a deployment must have (n/a: the server is not on this machine).')
  if (hasFloor) {
    lines.push('', 'The floor: a bare Node proxy (`bench/floor.ts`: node:http, an undici keep-alive pool, nothing ' +
      'else) on the gateway\'s CPU, in front of the same fake, measured in the same repetitions. What it adds is ' +
      'what any Node proxy pays on this machine; "over floor" is gateway minus floor, per repetition: the ' +
      'gateway\'s own share.',
    '',
    '| scenario | conns | direct req/s | floor req/s | gateway req/s | floor p50 / p90 / p99 | ' +
      'floor added p50 / p90 / p99 | TTFB floor added p50 / p99 | floor CPU µs/call | gateway CPU µs/call | ' +
      'over floor: p50 ms / CPU µs/call | floor RSS peak MB | floor failed calls |',
    '|---|---:|---:|---:|---:|---|---|---|---:|---:|---|---:|---:|')
    for (const r of rows) {
      const f = r.floor
      if (!f) continue
      const ttfb = r.ttfb?.floorAddedP50 === undefined
        ? ''
        : `${value(r.ttfb.floorAddedP50)} / ${value(r.ttfb.floorAddedP99)}`
      lines.push(`| ${r.scenario} | ${r.connections} | ${value(r.direct.rps)} | ${value(f.rps)} | ` +
        `${value(r.gateway.rps)} | ${triple(f.p50, f.p90, f.p99)} | ` +
        `${triple(f.addedMs.p50, f.addedMs.p90, f.addedMs.p99)} | ${ttfb} | ${value(f.cpuUsPerCall)} | ` +
        `${value(r.cpuUsPerCall)} | ${triple(r.overFloor?.p50Ms ?? null, r.overFloor?.cpuUsPerCall ?? null)} | ` +
        `${value(f.rssPeakMB)} | ${f.failed} |`)
    }
  }
  if (idle) {
    lines.push('', `Idle gateway: ${idle.cpuPercent} % of a core over ${idle.seconds} s, ${idle.rssMB} MB resident.`)
  }
  if (soak) {
    lines.push('', `Soak: ${soak.calls} chat calls through the gateway at ${soak.connections} connections: ` +
      `${soak.rps} calls/s, p50 ${soak.p50} ms, p99 ${soak.p99} ms, ${soak.cpuUsPerCall} µs CPU per call ` +
      `(Redis ${value(soak.redisUsPerCall)}, PostgreSQL ${value(soak.postgresUsPerCall)}), RSS ` +
      `${soak.rssEarlyMB} MB early → ${soak.rssLateMB} MB late (growth ${soak.growthMB} MB), ` +
      `peak ${soak.rssPeakMB} MB, ` +
      `${soak.failed} failed.`)
  }
  if (hold) {
    lines.push('', `Hold: ${hold.streams} concurrent streams of one event a second for ${hold.holdSeconds} s: ` +
      `${hold.complete} complete (direct to the fake: ${hold.direct.complete}, p50 ${hold.direct.streamP50S} s), ` +
      `${hold.incomplete} incomplete, ${hold.failed} failed` +
      `${Object.keys(hold.errors).length ? ` (${JSON.stringify(hold.errors)})` : ''}, ` +
      `at most ${hold.peakOpen} open at once; ` +
      `stream p50 ${hold.streamP50S} s, longest ${hold.streamMaxS} s; ${hold.cpuUsPerStream} µs CPU per stream; ` +
      `RSS peak ${hold.rssPeakMB} MB, end ${hold.rssEndMB} MB.`)
  }
  const verdict = (met: boolean | undefined) => met === undefined ? 'not measured' : met ? 'yes' : '**no**'
  if (hasFloor) {
    lines.push('', '| target (issue #7) | wanted | measured | met | the floor (a bare Node proxy) | met by the floor |',
      '|---|---|---|---|---|---|')
  } else {
    lines.push('', '| target (issue #7) | wanted | measured | met |', '|---|---|---|---|')
  }
  for (const v of verdicts) {
    const floor = !hasFloor ? '' : v.floor ? ` ${v.floor.measured} | ${verdict(v.floor.met)} |` : '  |  |'
    lines.push(`| ${v.figure} | ${v.target} | ${v.measured} | ${verdict(v.met)} |${floor}`)
  }
  return lines.join('\n') + '\n'
}
