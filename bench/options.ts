import { SCENARIOS } from './scenarios.js'

export interface BenchOptions {
  mode: 'quick' | 'full'
  /** `scenario:connections` to run once under `--cpu-prof` instead of measuring, e.g. `chat:32` */
  profile: string | undefined
  build: boolean
  pin: boolean
  /** measure a bare Node proxy (bench/floor.ts) beside direct and the gateway */
  floor: boolean
  scenarios: string[]
  /** the throughput level; latency is always measured at one connection */
  connections: number
  durationS: number
  /** before anything is measured: each scenario at `connections`, per side, so that V8 has optimised the hot path */
  jitWarmupS: number
  /** before each measured level: a short run at that level */
  warmupS: number
  reps: number
  ttfbCalls: number
  holdStreams: number
  holdSeconds: number
  soakCalls: number
  databaseUrl: string
  redisUrl: string
}

// quick keeps a whole run under about three minutes; full is issue #7's sizes
const MODES = {
  quick: {
    durationS: 2, jitWarmupS: 10, warmupS: 1, reps: 3, ttfbCalls: 200, holdStreams: 300, holdSeconds: 10, soakCalls: 10_000
  },
  full: {
    durationS: 10, jitWarmupS: 30, warmupS: 3, reps: 5, ttfbCalls: 2_000, holdStreams: 2_000, holdSeconds: 30,
    soakCalls: 1_000_000
  }
}

const USAGE = `npm run bench -- [--quick | --full] [--profile[=chat:32]] [--no-build] [--no-pin] [--no-floor]
  [--scenarios=chat,stream,embeddings] [--connections=32] [--duration=S] [--jit-warmup=S] [--warmup=S] [--reps=N]
  [--ttfb-calls=N] [--hold-streams=N] [--hold-seconds=S] [--soak-calls=N]   (0 skips the hold test or the soak)
Each number can also come from the environment: BENCH_DURATION_S, BENCH_JIT_WARMUP_S, BENCH_WARMUP_S, BENCH_REPS, BENCH_TTFB_CALLS,
BENCH_HOLD_STREAMS, BENCH_HOLD_SECONDS, BENCH_SOAK_CALLS, BENCH_CONNECTIONS; flags win.
Databases: BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/tramontane_bench, created if missing), BENCH_REDIS_URL (redis://127.0.0.1:6379).`

/** Flags, then environment, then the mode's defaults. Throws on anything it does not know. */
export function parseOptions (argv: string[], env: NodeJS.ProcessEnv): BenchOptions {
  const flags = new Map<string, string>()
  for (const arg of argv) {
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(arg)
    if (!match) throw new Error(`unknown argument ${arg}\n${USAGE}`)
    flags.set(match[1], match[2] ?? '')
  }
  const known = ['quick', 'full', 'profile', 'no-build', 'no-pin', 'no-floor', 'scenarios', 'connections', 'duration', 'jit-warmup', 'warmup',
    'reps', 'ttfb-calls', 'hold-streams', 'hold-seconds', 'soak-calls', 'help']
  for (const name of flags.keys()) if (!known.includes(name)) throw new Error(`unknown flag --${name}\n${USAGE}`)
  if (flags.has('help')) throw new Error(USAGE)

  const mode = flags.has('full') ? 'full' : 'quick'
  const defaults = MODES[mode]
  const number = (flag: string, variable: string, fallback: number) => {
    const raw = flags.get(flag) ?? env[variable]
    if (raw === undefined || raw === '') return fallback
    const value = Number(raw)
    if (!Number.isFinite(value) || value < 0) throw new Error(`--${flag} (${variable}): a number ≥ 0, not ${raw}`)
    return value
  }
  const scenarios = (flags.get('scenarios') || Object.keys(SCENARIOS).join(',')).split(',')
  for (const name of scenarios) if (!(name in SCENARIOS)) throw new Error(`unknown scenario ${name}\n${USAGE}`)
  const profile = flags.has('profile') ? flags.get('profile') || 'chat:32' : undefined
  if (profile !== undefined && !/^[a-z]+:\d+$/.test(profile)) throw new Error(`--profile=scenario:conns\n${USAGE}`)

  return {
    mode,
    profile,
    build: !flags.has('no-build'),
    pin: !flags.has('no-pin'),
    floor: !flags.has('no-floor'),
    scenarios,
    connections: number('connections', 'BENCH_CONNECTIONS', 32),
    durationS: number('duration', 'BENCH_DURATION_S', defaults.durationS),
    jitWarmupS: number('jit-warmup', 'BENCH_JIT_WARMUP_S', defaults.jitWarmupS),
    warmupS: number('warmup', 'BENCH_WARMUP_S', defaults.warmupS),
    reps: Math.max(1, number('reps', 'BENCH_REPS', defaults.reps)),
    ttfbCalls: number('ttfb-calls', 'BENCH_TTFB_CALLS', defaults.ttfbCalls),
    holdStreams: number('hold-streams', 'BENCH_HOLD_STREAMS', defaults.holdStreams),
    holdSeconds: Math.max(2, number('hold-seconds', 'BENCH_HOLD_SECONDS', defaults.holdSeconds)),
    soakCalls: number('soak-calls', 'BENCH_SOAK_CALLS', defaults.soakCalls),
    databaseUrl: env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/tramontane_bench',
    redisUrl: env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
  }
}
