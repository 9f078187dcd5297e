import { mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { cannonJob, smokeCheck, type Bench, type CannonResult } from './measure.js'
import type { BenchOptions } from './options.js'
import { sampleRss } from './proc-stats.js'
import { profileMarkdown, summarizeProfile } from './profile-summary.js'
import { COMPLETION_TOKENS, SCENARIOS } from './scenarios.js'
import { onThisMachine, startFake, startGateway, startLoader } from './stack.js'
import { removeWorkspace, setupWorkspace } from './workspace.js'

const MIN_PROFILE_S = 15

/**
 * `--profile[=scenario:connections]`: the gateway under `node --cpu-prof`, one scenario through it, then the
 * profile summarised (bench/results/profile.md; the .cpuprofile opens in Chrome DevTools or speedscope).
 */
export async function profileRun (options: BenchOptions, results: string, log: (message: string) => void):
Promise<number> {
  const [scenario, level] = (options.profile as string).split(':')
  if (!(scenario in SCENARIOS)) throw new Error(`--profile: unknown scenario ${scenario}`)
  const connections = Number(level)
  const dir = join(results, 'profile')
  mkdirSync(dir, { recursive: true })
  const startedAt = Date.now()

  const fake = await startFake('fake upstream', { completionTokens: COMPLETION_TOKENS })
  const gateway = await startGateway('gateway (profiled)', {
    upstreamUrl: fake.url,
    databaseUrl: options.databaseUrl,
    redisUrl: options.redisUrl,
    nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${dir}`]
  })
  const workspace = await setupWorkspace(gateway.url)
  const loader = await startLoader()
  const bench: Bench = {
    options,
    loader,
    direct: { url: fake.url, headers: { authorization: 'Bearer bench-mistral-key' } },
    gateway: {
      url: gateway.url,
      headers: { authorization: `Bearer ${workspace.token}` },
      pid: gateway.proc.pid,
      rss: sampleRss(gateway.proc.pid)
    },
    localServices: { redis: onThisMachine(options.redisUrl), postgres: onThisMachine(options.databaseUrl) }
  }
  const problem = await smokeCheck(bench, scenario)
  if (problem) throw new Error(`${scenario} does not answer correctly: ${problem}`)
  const seconds = Math.max(MIN_PROFILE_S, options.durationS * options.reps)
  log(`profiling ${scenario} at ${connections} connection(s) for ${seconds} s (gateway pid ${gateway.proc.pid})`)
  const job = cannonJob(bench.gateway, scenario, connections, seconds)
  const loadStartedAt = Date.now()
  const run = await loader.run<CannonResult>(job, (seconds + 60) * 1000)
  const loadEndedAt = Date.now()
  bench.gateway.rss.stop()
  await removeWorkspace(gateway.url, workspace.slug).catch((err) => log(`could not delete ${workspace.slug}: ${err}`))
  // the profile is written when the process exits (SIGTERM: it drains and exits 0)
  await gateway.proc.stop()
  // --cpu-prof covers the whole process: only the samples of the load are summarised, located back from the exit
  // (the profile ends a little before it, while it is written: the first half second of load is left out too)
  const exitedAt = Date.now()
  const window = { fromEndUs: (exitedAt - loadStartedAt - 500) * 1000, toEndUs: (exitedAt - loadEndedAt) * 1000 }
  await loader.proc.stop()
  await fake.proc.stop()

  const file = readdirSync(dir)
    .filter((name) => name.endsWith('.cpuprofile'))
    .map((name) => join(dir, name))
    .filter((path) => statSync(path).mtimeMs >= startedAt)
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0]
  if (!file) throw new Error(`the gateway wrote no profile in ${dir}`)
  const title = `${scenario} at ${connections} connection(s), ${seconds} s, ${run.completed} calls ` +
    `(${Math.round(run.rps)} calls/s under the profiler), ${new Date().toISOString()}`
  const table = profileMarkdown(summarizeProfile(file, window), title) + `\nProfile: ${file}\n`
  process.stdout.write(table)
  writeFileSync(join(results, 'profile.md'), table)
  return 0
}
