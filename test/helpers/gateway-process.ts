import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { killChildrenAtExit } from './child-guard.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

export interface GatewayProcess {
  url: string
  pid: number
  /** stdout and stderr so far */
  output (): string
  /** resident set size in bytes, from /proc */
  rss (): number
  /** SIGTERM to its process group, then SIGKILL after the timeout; resolves with the exit code once none is left */
  stop (timeoutMs?: number): Promise<number | null>
}

interface Tap {
  teardown (fn: () => unknown): void
}

/**
 * Starts the gateway as its own process (`node --import tsx src/server.ts`, or any command) and waits until
 * `/readyz` answers 200. Always stopped in teardown.
 */
export async function startGatewayProcess (t: Tap, env: Record<string, string>,
  options: { command?: string[], readyTimeoutMs?: number } = {}): Promise<GatewayProcess> {
  killChildrenAtExit()
  const port = env.PORT ?? String(await freePort())
  const [command, ...args] = options.command ?? [process.execPath, '--import', 'tsx', 'src/server.ts']
  const child: ChildProcess = spawn(command, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env, PORT: port },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true
  })
  let output = ''
  child.stdout?.on('data', (chunk) => { output += chunk })
  child.stderr?.on('data', (chunk) => { output += chunk })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  let stopping: Promise<number | null> | undefined
  const url = `http://127.0.0.1:${port}`
  const gateway: GatewayProcess = {
    url,
    pid: child.pid as number,
    output: () => output,
    rss: () => {
      const status = readFileSync(`/proc/${child.pid}/status`, 'utf8')
      return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024
    },
    stop (timeoutMs = 10_000) {
      // once: the test's own stop and its teardown's must not signal a group id the system may have reused since
      stopping ??= stopGroup(child, exited, timeoutMs)
      return stopping
    }
  }
  t.teardown(() => gateway.stop())
  const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000)
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}:\n${output}`)
    try {
      const res = await fetch(`${url}/readyz`)
      if (res.status === 200) return gateway
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`gateway not ready in time:\n${output}`)
}

/**
 * SIGTERM to the child's process group, SIGKILL to what is left of it after the timeout; resolves once none of it
 * runs. `npm start` forwards nothing when killed itself, and exits before the gateway it started has drained: a test
 * that removed its data folder then met files still being written.
 */
async function stopGroup (child: ChildProcess, exited: Promise<number | null>, timeoutMs: number) {
  if (child.pid === undefined) return null
  const group = child.pid
  // found once: no process joins the group once it is told to stop, and a pid is polled on its own after that
  const members = groupMembers(group)
  const running = () => members.filter((pid) => inGroup(pid, group))
  const gone = async (ms: number) => {
    for (const deadline = Date.now() + ms; running().length > 0 && Date.now() < deadline;) await sleep(20)
    return running().length === 0
  }
  if (running().length === 0) return await exited
  try { process.kill(-group, 'SIGTERM') } catch {}
  if (!await gone(timeoutMs)) {
    try { process.kill(-group, 'SIGKILL') } catch {}
    if (!await gone(5_000)) throw new Error(`processes ${running().join(', ')} of the gateway outlived SIGKILL`)
  }
  return await exited
}

/** The processes of a group, from /proc. */
function groupMembers (group: number): number[] {
  return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).map(Number).filter((pid) => inGroup(pid, group))
}

/**
 * Whether a process still runs in the group. A zombie does not: the gateway `npm start` started outlives npm, and
 * whoever inherits it may never reap it.
 */
function inGroup (pid: number, group: number): boolean {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return false // it has ended
  }
  // after the command's name, in parentheses: state, parent, process group
  const [state, , processGroup] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(processGroup) === group && state !== 'Z'
}

export function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
    server.once('error', reject)
  })
}
