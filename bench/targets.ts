import type { measureHold, measureSoak } from './endurance.js'
import type { measureIdle, measureScenario, measureTtfb } from './measure.js'
import { SOAK_GROWTH_TOLERANCE_MB } from './endurance.js'

export type ScenarioRow = Awaited<ReturnType<typeof measureScenario>> & {
  ttfb?: Awaited<ReturnType<typeof measureTtfb>>
}
export type SoakRow = Awaited<ReturnType<typeof measureSoak>>
export type HoldRow = Awaited<ReturnType<typeof measureHold>>

export interface Verdict {
  figure: string
  target: string
  measured: string
  /** undefined: not measured in this run */
  met: boolean | undefined
  /** the floor's figure for the same target (a bare Node proxy), when the run measured it and the target applies */
  floor?: { measured: string, met: boolean | undefined }
}

export interface Measured {
  rows: ScenarioRow[]
  soak?: SoakRow
  hold?: HoldRow
  idle?: Awaited<ReturnType<typeof measureIdle>>
  connections: number
}

/** Issue #7's targets against this run's figures. A missed target is a finding: it never fails the run. */
export function judge ({ rows, soak, hold, connections }: Measured): Verdict[] {
  const row = (scenario: string, conns: number) => rows.find((r) => r.scenario === scenario && r.connections === conns)
  const chat1 = row('chat', 1)
  const chatN = row('chat', connections)
  const streamN = row('stream', connections)
  const stream1 = row('stream', 1)
  const loaded = rows.filter((r) => r.connections === connections)
  const peak = loaded.length ? Math.max(...loaded.map((r) => r.rssPeakMB ?? 0)) : undefined
  const floorLoaded = loaded.filter((r) => r.floor)
  const floorPeak = floorLoaded.length ? Math.max(...floorLoaded.map((r) => r.floor?.rssPeakMB ?? 0)) : undefined
  const check = (value: number | null | undefined, limit: number, above = false) =>
    value === undefined || value === null ? undefined : above ? value >= limit : value <= limit
  const both = (a: boolean | undefined, b: boolean | undefined) =>
    a === undefined || b === undefined ? undefined : a && b
  const ms = (value: number | null | undefined) => value === undefined || value === null ? 'n/a' : `${value} ms`

  return [
    {
      figure: 'added latency, chat, 1 connection',
      target: 'p50 ≤ 0.3 ms, p99 ≤ 1.5 ms',
      measured: `p50 ${ms(chat1?.addedMs.p50)}, p99 ${ms(chat1?.addedMs.p99)}`,
      met: both(check(chat1?.addedMs.p50, 0.3), check(chat1?.addedMs.p99, 1.5)),
      floor: chat1?.floor && {
        measured: `p50 ${ms(chat1.floor.addedMs.p50)}, p99 ${ms(chat1.floor.addedMs.p99)}`,
        met: both(check(chat1.floor.addedMs.p50, 0.3), check(chat1.floor.addedMs.p99, 1.5))
      }
    },
    {
      figure: 'added time to first byte, stream, 1 connection',
      target: 'p50 ≤ 0.5 ms',
      measured: `p50 ${ms(stream1?.ttfb?.addedP50)}`,
      met: check(stream1?.ttfb?.addedP50, 0.5),
      floor: stream1?.ttfb?.floorAddedP50 === undefined
        ? undefined
        : { measured: `p50 ${ms(stream1.ttfb.floorAddedP50)}`, met: check(stream1.ttfb.floorAddedP50, 0.5) }
    },
    {
      figure: `gateway CPU per call (${connections} connections)`,
      target: 'chat ≤ 150 µs, 20-chunk stream ≤ 250 µs',
      measured: `chat ${chatN?.cpuUsPerCall ?? 'n/a'} µs, stream ${streamN?.cpuUsPerCall ?? 'n/a'} µs`,
      met: both(check(chatN?.cpuUsPerCall, 150), check(streamN?.cpuUsPerCall, 250)),
      floor: chatN?.floor || streamN?.floor
        ? {
            measured: `chat ${chatN?.floor?.cpuUsPerCall ?? 'n/a'} µs, ` +
              `stream ${streamN?.floor?.cpuUsPerCall ?? 'n/a'} µs`,
            met: both(check(chatN?.floor?.cpuUsPerCall, 150), check(streamN?.floor?.cpuUsPerCall, 250))
          }
        : undefined
    },
    {
      figure: `throughput, chat, ${connections} connections, gateway on one core`,
      target: '≥ 6,000 calls/s',
      measured: `${chatN?.gateway.rps ?? 'n/a'} calls/s`,
      met: check(chatN?.gateway.rps, 6000, true),
      floor: chatN?.floor && {
        measured: `${chatN.floor.rps ?? 'n/a'} calls/s`,
        met: check(chatN.floor.rps, 6000, true)
      }
    },
    {
      figure: `memory under the throughput load (peak of the ${connections}-connection runs)`,
      target: '≤ 150 MB resident',
      measured: peak === undefined ? 'n/a' : `${peak} MB`,
      met: check(peak, 150),
      floor: floorPeak === undefined ? undefined : { measured: `${floorPeak} MB`, met: check(floorPeak, 150) }
    },
    {
      figure: `memory over the soak (${soak?.calls ?? 0} calls; the target is over 1,000,000)`,
      target: `no growth (≤ ${SOAK_GROWTH_TOLERANCE_MB} MB from the early plateau to the end)`,
      measured: soak ? `${soak.rssEarlyMB} → ${soak.rssLateMB} MB (${soak.growthMB} MB)` : 'not run',
      met: check(soak?.growthMB, SOAK_GROWTH_TOLERANCE_MB)
    },
    {
      figure: `${hold?.streams ?? 0} concurrent slow streams (the target is 2,000)`,
      target: 'all delivered complete, ≤ 300 MB resident',
      measured: hold ? `${hold.complete}/${hold.streams} complete, peak ${hold.rssPeakMB} MB` : 'not run',
      met: hold ? hold.complete === hold.streams && (hold.rssPeakMB ?? Infinity) <= 300 : undefined
    }
  ]
}
