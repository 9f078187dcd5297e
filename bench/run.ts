/**
 * `npm run bench`: what the gateway adds to every call (issue #7). Starts the fake Mistral, the floor (a bare Node
 * proxy, bench/floor.ts), the built gateway (real PostgreSQL and Redis) and a load generator, each a process of its
 * own, measures direct, through the floor and through the gateway interleaved, and prints one JSON line per scenario
 * and a Markdown table (also in bench/results/latest.md).
 * docs/benchmarks.md says what each figure means and how it is measured.
 */
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { SOAK_MIN_RATE, measureHold, measureSoak } from './endurance.js'
import { measureIdle, measureScenario, measureTtfb, smokeCheck, warmUp, type Bench } from './measure.js'
import { ensureDatabase } from './database.js'
import { parseOptions, type BenchOptions } from './options.js'
import { sampleRss } from './proc-stats.js'
import { enablePinning, runToEnd, stopAll } from './processes.js'
import { profileRun } from './profile-run.js'
import { busyWarning, machineLine, markdown } from './report.js'
import { COMPLETION_TOKENS, SCENARIOS } from './scenarios.js'
import {
  BENCH_SPOOL_DIR, ROOT, defaultUpstreamConnections, onThisMachine, startFake, startFloor, startGateway, startLoader, type Upstream
} from './stack.js'
import { judge, type HoldRow, type ScenarioRow } from './targets.js'
import { removeWorkspace, setupWorkspace, type BenchWorkspace } from './workspace.js'

const RESULTS = join(ROOT, 'bench', 'results')
const log = (message: string) => process.stderr.write(`[bench] ${message}\n`)
const emit = (row: unknown) => process.stdout.write(JSON.stringify(row) + '\n')

/** Generous: twice what the run should take. Past it every process is stopped and the run fails. */
function budgetMs (o: BenchOptions): number {
  const sides = o.floor ? 3 : 2
  const perLevel = sides * (Math.max(o.warmupS, o.jitWarmupS) + 5) + o.reps * sides * (o.durationS + 5)
  const hold = o.holdStreams ? o.holdSeconds * 6 + 180 : 0
  const warmUp = o.scenarios.length * sides * (o.jitWarmupS + 5)
  return 2 * (300 + warmUp + o.scenarios.length * 2 * perLevel + 120 + o.soakCalls / SOAK_MIN_RATE + hold) * 1000
}

let aborting = false

async function abort (reason: string, code: number) {
  if (aborting) return
  aborting = true
  log(`${reason}: stopping every process`)
  await stopAll()
  process.exit(code)
}

async function main (options: BenchOptions): Promise<number> {
  const loadAtStart = loadavg()
  const pinning = enablePinning(options.pin)
  log(pinning)
  const warning = busyWarning(loadAtStart)
  if (warning) log(warning.replaceAll('**', ''))
  if (options.build) {
    log('npm run build')
    await runToEnd(['npm', 'run', 'build', '--silent'], ROOT, 300_000)
  }
  if (!existsSync(join(ROOT, 'dist', 'src', 'server.js'))) throw new Error('no dist/src/server.js: drop --no-build')
  mkdirSync(RESULTS, { recursive: true })
  await ensureDatabase(options.databaseUrl)
  if (options.profile) return profileRun(options, RESULTS, log)

  const { databaseUrl, redisUrl } = options
  const fake = await startFake('fake upstream', { completionTokens: COMPLETION_TOKENS })
  // as many upstream connections as the gateway has by default: neither waits for a connection the other has
  const floorConnections = defaultUpstreamConnections()
  const floor = options.floor ? await startFloor('floor', fake.url, floorConnections) : undefined
  const gateway = await startGateway('gateway', { upstreamUrl: fake.url, databaseUrl, redisUrl })
  const workspace = await setupWorkspace(gateway.url)
  const loader = await startLoader()
  log(`fake upstream pid ${fake.proc.pid}, ` +
    (floor ? `floor pid ${floor.proc.pid} (${floorConnections} upstream connections), ` : 'no floor (--no-floor), ') +
    `gateway pid ${gateway.proc.pid}, load generator pid ${loader.proc.pid}; workspace ${workspace.slug}`)
  // the fake wants a Mistral key, any will do; the floor passes it on as it is
  const mistralKey = { authorization: 'Bearer bench-mistral-key' }
  const bench: Bench = {
    options,
    loader,
    direct: { url: fake.url, headers: mistralKey },
    floor: floor && { url: floor.url, headers: mistralKey, pid: floor.proc.pid, rss: sampleRss(floor.proc.pid) },
    gateway: {
      url: gateway.url,
      headers: { authorization: `Bearer ${workspace.token}` },
      pid: gateway.proc.pid,
      rss: sampleRss(gateway.proc.pid)
    },
    localServices: { redis: onThisMachine(redisUrl), postgres: onThisMachine(databaseUrl) }
  }

  const idle = await measureIdle(bench, Math.max(2, options.durationS))
  emit(idle)
  const rows: ScenarioRow[] = []
  const broken: string[] = []
  const healthy: string[] = []
  for (const scenario of options.scenarios) {
    const problem = await smokeCheck(bench, scenario)
    if (!problem) {
      healthy.push(scenario)
      continue
    }
    broken.push(`${scenario}: ${problem}`)
    log(`${scenario} does not answer correctly, not measured: ${problem}`)
  }
  if (options.jitWarmupS > 0) {
    log(`warm-up: ${healthy.join(', ')} at ${options.connections} connections, ${options.jitWarmupS} s per side each`)
    await warmUp(bench, healthy)
  }
  for (const scenario of healthy) {
    for (const connections of [1, options.connections]) {
      log(`${scenario} at ${connections} connection(s): ${options.reps} × ${options.durationS} s per side`)
      const row: ScenarioRow = await measureScenario(bench, scenario, connections)
      if (SCENARIOS[scenario].streamed && connections === 1 && options.ttfbCalls > 0) {
        log(`${scenario}: time to first byte, ${options.ttfbCalls} streams per side`)
        row.ttfb = await measureTtfb(bench, scenario)
      }
      rows.push(row)
      emit(row)
    }
  }

  // the soak and the hold are the gateway's alone: the floor leaves CPU 0 to it
  bench.floor?.rss.stop()
  await floor?.proc.stop()
  let soak
  if (options.soakCalls > 0) {
    log(`soak: ${options.soakCalls} chat calls at ${options.connections} connections`)
    soak = await measureSoak(bench, options.soakCalls)
    emit(soak)
  }
  bench.gateway.rss.stop()
  if (options.holdStreams === 0) await finish(gateway, workspace)
  await gateway.proc.stop()
  await fake.proc.stop()
  const hold = options.holdStreams > 0 ? await holdPhase(bench, workspace) : undefined
  await stopAll()

  const measured = { rows, soak, hold, idle, connections: options.connections }
  const verdicts = judge(measured)
  const table = markdown(measured, verdicts, options, machineLine(pinning, loadAtStart), warning)
  process.stdout.write('\n' + table)
  writeFileSync(join(RESULTS, 'latest.md'), table)
  const lines = [idle, ...rows, soak, hold].filter(Boolean).map((row) => JSON.stringify(row))
  writeFileSync(join(RESULTS, 'latest.jsonl'), lines.join('\n') + '\n')
  const met = verdicts.filter((v) => v.met === true).length
  const missed = verdicts.some((v) => v.met === false) ? ' (a missed target is a finding, not a failure)' : ''
  log(`targets met: ${met} of ${verdicts.length}${missed}`)
  for (const problem of broken) log(`not measured: ${problem}`)
  return broken.length > 0 ? 1 : 0
}

/** A fake that sends one event a second and a gateway in front of it, for the slow streams only. */
async function holdPhase (bench: Bench, workspace: BenchWorkspace): Promise<HoldRow> {
  const { options } = bench
  // the fake sends its role chunk at once, then one event a second: words + 2 seconds in all
  const words = Math.max(1, options.holdSeconds - 2)
  const slow = await startFake('slow fake upstream', { completionTokens: words, streamDelayMs: 1000 })
  // sized for the load, as an operator would: with the default 256 upstream connections the rest would queue
  const upstreamConnections = String(Math.max(256, options.holdStreams))
  const gateway = await startGateway('hold gateway', {
    upstreamUrl: slow.url,
    databaseUrl: options.databaseUrl,
    redisUrl: options.redisUrl,
    env: { UPSTREAM_CONNECTIONS: upstreamConnections }
  })
  log(`hold: ${options.holdStreams} streams for ${options.holdSeconds} s, direct then through the gateway ` +
    `(pid ${gateway.proc.pid}, UPSTREAM_CONNECTIONS=${upstreamConnections})`)
  const rss = sampleRss(gateway.proc.pid)
  const hold = await measureHold({
    ...bench,
    direct: { ...bench.direct, url: slow.url },
    gateway: { ...bench.gateway, url: gateway.url, pid: gateway.proc.pid, rss }
  }, options.holdStreams, options.holdSeconds, words)
  rss.stop()
  emit(hold)
  await finish(gateway, workspace)
  await gateway.proc.stop()
  await slow.proc.stop()
  return hold
}

/**
 * The workspace is deleted through the last gateway up (its ledger stays; its state leaves Redis); what that gateway
 * logged is shown.
 */
async function finish (gateway: Upstream, workspace: BenchWorkspace) {
  await removeWorkspace(gateway.url, workspace.slug).catch((err) => log(`could not delete ${workspace.slug}: ${err}`))
  const said = gateway.proc.output().trim()
  if (said) log(`${gateway.proc.name} logged (warn and above):\n${said.slice(-2000)}`)
}

let options: BenchOptions
try {
  options = parseOptions(process.argv.slice(2), process.env)
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`)
  process.exit(2)
}
// whatever the run's gateways left in their spool is the bench's own ledger: not kept
process.once('exit', () => rmSync(BENCH_SPOOL_DIR, { recursive: true, force: true }))
process.once('SIGINT', () => { void abort('interrupted', 130) })
process.once('SIGTERM', () => { void abort('terminated', 143) })
setTimeout(() => { void abort(`still running after ${budgetMs(options) / 1000} s`, 1) }, budgetMs(options)).unref()
try {
  process.exitCode = await main(options)
} catch (err) {
  // an interrupted run fails its pending steps: abort() is stopping everything and exits with its own status
  if (aborting) await new Promise(() => {})
  log(`the harness broke: ${(err as Error).stack ?? err}`)
  await stopAll()
  process.exitCode = 1
}
process.exit()
