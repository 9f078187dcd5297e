import { spawn, type ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { killChildrenAtExit } from './child-guard.js'
import { freePort } from './gateway-process.js'

/** A redis-server of our own, on a loopback port, with no persistence: a restart loses everything. */
export async function ownRedis (t: { teardown (fn: () => unknown): void }, port?: number) {
  port ??= await freePort()
  let child: ChildProcess | undefined
  const start = async () => {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']
    killChildrenAtExit()
    child = spawn('redis-server', args, { stdio: 'ignore' })
    const probe = new Redis(port, '127.0.0.1',
      { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    probe.on('error', () => {})
    for (const deadline = Date.now() + 5_000; Date.now() < deadline; await sleep(50)) {
      try {
        await probe.connect()
        if (await probe.ping() === 'PONG') break
      } catch {}
    }
    probe.disconnect()
  }
  const stop = async (signal: NodeJS.Signals = 'SIGKILL') => {
    const running = child
    if (!running || running.exitCode !== null || running.signalCode !== null) return
    const exited = new Promise((resolve) => running.once('exit', resolve))
    running.kill(signal)
    await exited
  }
  await start()
  t.teardown(() => stop())
  return {
    url: `redis://127.0.0.1:${port}`,
    start,
    stop,
    /** SIGSTOP / SIGCONT: the connection stays open and nothing answers */
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT')
  }
}
