import { createHash, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import type { Job, JobAnswer } from './loader.js'
import { startProcess, type BenchProcess } from './processes.js'

export const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BASE_ENV = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' }
export const GATEWAY_CPU = 0
const LOAD_CPU = 1

/** The gateways' usage spool, this run's own; removed when the run ends (stopAll). */
export const BENCH_SPOOL_DIR = join(tmpdir(), `tramontane-bench-spool-${process.pid}`)

/** The admin token of this run only: the gateway is told it, nothing is written anywhere. */
export const secrets = {
  adminToken: `adm_${randomBytes(24).toString('hex')}`
}

/**
 * The bench database's master key, the same on every run: the Mistral keys of earlier runs' (deleted) workspaces stay
 * in it, and a gateway whose ring cannot open stored keys does not start.
 */
function benchMasterKeys (databaseUrl: string): string {
  return `bench:${createHash('sha256').update(`tramontane bench master key ${databaseUrl}`).digest('base64')}`
}

export interface Upstream {
  proc: BenchProcess
  url: string
}

/** test/helpers/fake-mistral-server.ts in its own process; it prints `{"url":…}` once listening. */
export async function startFake (name: string, knobs: { completionTokens: number, streamDelayMs?: number }):
Promise<Upstream> {
  const proc = startProcess(name, [process.execPath, '--import', 'tsx', 'test/helpers/fake-mistral-server.ts'], {
    cwd: ROOT,
    cpu: LOAD_CPU,
    env: {
      ...BASE_ENV,
      PORT: '0',
      FAKE_MISTRAL_COMPLETION_TOKENS: String(knobs.completionTokens),
      FAKE_MISTRAL_STREAM_DELAY_MS: String(knobs.streamDelayMs ?? 0)
    }
  })
  const url = await until(name, proc, 30_000, async () => /\{"url":"([^"]+)"\}/.exec(proc.output())?.[1])
  return { proc, url }
}

export interface GatewayOptions {
  upstreamUrl: string
  databaseUrl: string
  redisUrl: string
  /** node flags, e.g. --cpu-prof */
  nodeFlags?: string[]
  env?: Record<string, string>
}

/** The built gateway (`node dist/src/server.js`, as production runs it), ready once /readyz says so. */
export async function startGateway (name: string, options: GatewayOptions): Promise<Upstream> {
  const port = await freePort()
  // the V8 flags of `npm start`, the Dockerfile and the systemd unit (docs/operations.md#memory)
  const command = [
    process.execPath, '--heap-growing-percent=50', '--max-semi-space-size=4', ...options.nodeFlags ?? [],
    'dist/src/server.js'
  ]
  const proc = startProcess(name, command, {
    cwd: ROOT,
    cpu: GATEWAY_CPU,
    env: {
      ...BASE_ENV,
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'warn',
      DATABASE_URL: options.databaseUrl,
      REDIS_URL: options.redisUrl,
      MISTRAL_BASE_URL: options.upstreamUrl,
      TRAMONTANE_ADMIN_TOKEN: secrets.adminToken,
      TRAMONTANE_MASTER_KEYS: benchMasterKeys(options.databaseUrl),
      SHUTDOWN_GRACE_MS: '5000',
      // a spool of its own: the default (./data/spool) may hold what a killed test gateway left, which it would replay
      USAGE_SPOOL_DIR: BENCH_SPOOL_DIR,
      ...options.env
    }
  })
  const url = `http://127.0.0.1:${port}`
  await until(name, proc, 60_000, async () => {
    try {
      const res = await request(`${url}/readyz`)
      await res.body.dump()
      return res.statusCode === 200 ? url : undefined
    } catch {
      return undefined
    }
  })
  return { proc, url }
}

/**
 * The gateway's upstream pool size when UPSTREAM_CONNECTIONS is unset, read from src/config.ts so that the floor keeps
 * up with it (256 if the schema cannot be read).
 */
export function defaultUpstreamConnections (): number {
  const config = readFileSync(join(ROOT, 'src', 'config.ts'), 'utf8')
  return Number(/UPSTREAM_CONNECTIONS: Type\.Integer\(\{ default: (\d+)/.exec(config)?.[1] ?? 256)
}

/**
 * bench/floor.ts, the least a Node reverse proxy does, pinned where the gateway is: what any proxy in front of the
 * fake costs on this machine (docs/benchmarks.md). It prints `{"url":…}` once listening.
 */
export async function startFloor (name: string, upstreamUrl: string, connections: number): Promise<Upstream> {
  const proc = startProcess(name, [process.execPath, '--import', 'tsx', 'bench/floor.ts'], {
    cwd: ROOT,
    cpu: GATEWAY_CPU,
    env: {
      ...BASE_ENV,
      PORT: '0',
      FLOOR_UPSTREAM_URL: upstreamUrl,
      FLOOR_UPSTREAM_CONNECTIONS: String(connections)
    }
  })
  const url = await until(name, proc, 30_000, async () => /\{"url":"([^"]+)"\}/.exec(proc.output())?.[1])
  return { proc, url }
}

export interface Loader {
  proc: BenchProcess
  run<T> (job: Job, timeoutMs: number): Promise<T>
}

/** bench/loader.ts in its own process, driven over IPC, one job at a time. */
export async function startLoader (): Promise<Loader> {
  const proc = startProcess('load generator', [process.execPath, '--import', 'tsx', 'bench/loader.ts'], {
    cwd: ROOT, cpu: LOAD_CPU, ipc: true, env: BASE_ENV
  })
  const waiting = new Map<number, (answer: JobAnswer) => void>()
  proc.child.on('message', (answer: JobAnswer) => waiting.get(answer.id)?.(answer))
  let nextId = 1
  const ask = (id: number, job: Job | undefined, timeoutMs: number) => new Promise<JobAnswer>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`load generator: no answer in ${timeoutMs} ms`)), timeoutMs)
    proc.exited.then((code) => reject(new Error(`load generator exited with ${code}:\n${proc.output()}`)))
    waiting.set(id, (answer) => { clearTimeout(timer); waiting.delete(id); resolve(answer) })
    if (job) proc.child.send({ id, job })
  })
  await ask(0, undefined, 30_000)
  return {
    proc,
    async run<T> (job: Job, timeoutMs: number) {
      const answer = await ask(nextId++, job, timeoutMs)
      if (!answer.ok) throw new Error(`load generator: ${answer.error}`)
      return answer.result as T
    }
  }
}

async function until<T> (name: string, proc: BenchProcess, timeoutMs: number, check: () => Promise<T | undefined>):
Promise<T> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (proc.child.exitCode !== null) throw new Error(`${name} exited with ${proc.child.exitCode}:\n${proc.output()}`)
    const value = await check()
    if (value !== undefined) return value
    await sleep(50)
  }
  throw new Error(`${name} not ready in ${timeoutMs} ms:\n${proc.output()}`)
}

function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
    server.once('error', reject)
  })
}

/** A server on loopback is one of this machine's processes, whose CPU /proc shows. */
export function onThisMachine (url: string): boolean {
  const host = new URL(url).hostname
  return host === '127.0.0.1' || host === 'localhost' || host === '[::1]'
}
