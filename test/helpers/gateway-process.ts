import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

export interface GatewayProcess {
  url: string
  pid: number
  /** stdout and stderr so far */
  output (): string
  /** resident set size in bytes, from /proc */
  rss (): number
  /** SIGTERM, then SIGKILL after the timeout; resolves with the exit code */
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
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode
      // the whole process group: `npm start` forwards nothing when killed itself
      try { process.kill(-(child.pid as number), 'SIGTERM') } catch {}
      const timer = setTimeout(() => { try { process.kill(-(child.pid as number), 'SIGKILL') } catch {} }, timeoutMs)
      const code = await exited
      clearTimeout(timer)
      return code
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
