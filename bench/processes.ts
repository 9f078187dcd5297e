import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'

export interface BenchProcess {
  name: string
  pid: number
  child: ChildProcess
  output (): string
  exited: Promise<number | null>
  stop (): Promise<void>
}

interface SpawnOptions {
  cwd: string
  env: Record<string, string>
  /** CPU to pin to with taskset, when pinning is on */
  cpu?: number
  ipc?: boolean
}

const running = new Set<BenchProcess>()
let pinning = false

/** Pins where taskset exists and there are two cores: gateway on CPU 0, everything else on CPU 1. */
export function enablePinning (wanted: boolean): string {
  if (!wanted) return 'no CPU pinning (--no-pin)'
  if (availableParallelism() < 2) return 'no CPU pinning: fewer than two cores'
  if (spawnSync('taskset', ['--version']).status !== 0) return 'no CPU pinning: taskset is not installed'
  pinning = true
  // this process samples /proc and talks to the loader: it belongs with the load, away from the gateway
  spawnSync('taskset', ['-a', '-c', '-p', '1', String(process.pid)], { stdio: 'ignore' })
  return 'pinned with taskset: gateway on CPU 0; fake upstream, load generator and this harness on CPU 1 ' +
    '(PostgreSQL and Redis are system services and were left unpinned)'
}

/**
 * Starts a process in a process group of its own, so that a Ctrl-C on the terminal reaches only the harness,
 * which then stops each child by its PID. taskset execs the command: the PID is the command's own.
 */
export function startProcess (name: string, command: string[], options: SpawnOptions): BenchProcess {
  const argv = pinning && options.cpu !== undefined ? ['taskset', '-c', String(options.cpu), ...command] : command
  const stdio: StdioOptions = ['ignore', 'pipe', 'pipe']
  if (options.ipc) stdio.push('ipc')
  const child = spawn(argv[0], argv.slice(1), { cwd: options.cwd, env: options.env, stdio, detached: true })
  let output = ''
  const keep = (chunk: Buffer) => { output = (output + chunk.toString()).slice(-64 * 1024) }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const proc: BenchProcess = {
    name,
    pid: child.pid as number,
    child,
    output: () => output,
    exited,
    async stop () {
      running.delete(proc)
      await stopPid(child, exited)
    }
  }
  if (child.pid === undefined) throw new Error(`could not start ${name}`)
  running.add(proc)
  return proc
}

/** SIGTERM to the child's group, SIGKILL after 10 s: a gateway drains first and --cpu-prof writes at exit. */
async function stopPid (child: ChildProcess, exited: Promise<number | null>) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const pid = child.pid as number
  try { process.kill(-pid, 'SIGTERM') } catch {}
  const killed = await Promise.race([exited.then(() => false), sleep(10_000).then(() => true)])
  if (killed) {
    try { process.kill(-pid, 'SIGKILL') } catch {}
    await exited
  }
}

/** Stops every child still running, one by one by PID (also on Ctrl-C and on errors). */
export async function stopAll () {
  for (const proc of [...running].reverse()) await proc.stop()
}

/** Runs a command to completion, bounded in time, its output passed to stderr. */
export async function runToEnd (command: string[], cwd: string, timeoutMs: number) {
  const child = spawn(command[0], command.slice(1), { cwd, stdio: ['ignore', process.stderr, process.stderr] })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
  const code = await exited
  clearTimeout(timer)
  if (code !== 0) throw new Error(`${command.join(' ')} exited with ${code}`)
}
