import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

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
  const url = `http://127.0.0.1:${port}`
  const gateway: GatewayProcess = {
    url,
    pid: child.pid as number,
    output: () => output,
    rss: () => {
      const status = readFileSync(`/proc/${child.pid}/status`, 'utf8')
      return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024
    },
    async stop (timeoutMs = 10_000) {
      const group = child.pid as number
      if (!groupRunning(group)) return await exited
      // the whole process group: `npm start` forwards nothing when killed itself, and exits before the gateway it
      // started has drained (a test removing its data folder then meets files still being written)
      try { process.kill(-group, 'SIGTERM') } catch {}
      for (const deadline = Date.now() + timeoutMs; groupRunning(group) && Date.now() < deadline;) await sleep(20)
      try { process.kill(-group, 'SIGKILL') } catch {}
      for (const deadline = Date.now() + 5_000; groupRunning(group) && Date.now() < deadline;) await sleep(20)
      return await exited
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
 * Whether a process of the group still runs. A zombie does not: the gateway `npm start` started outlives npm, and
 * whoever inherits it may never reap it.
 */
function groupRunning (group: number): boolean {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
    } catch {
      continue // it ended while the folder was read
    }
    // after the command's name, in parentheses: state, parent, process group
    const [state, , processGroup] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (Number(processGroup) === group && state !== 'Z') return true
  }
  return false
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
