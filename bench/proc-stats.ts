import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'

// /proc/<pid>/stat counts CPU time in clock ticks (proc(5)); 100 a second nearly everywhere
const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100

/** utime + stime of the process, all its threads, in microseconds. */
export function cpuMicros (pid: number): number {
  return statCpuMicros(readFileSync(`/proc/${pid}/stat`, 'utf8'))
}

function statCpuMicros (stat: string, withChildren = false): number {
  // the command name sits in parentheses and may hold spaces: count fields after its closing one
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields 14 and 15 of proc(5); 16 and 17 what its children that ended and were waited for used
  let ticks = Number(fields[11]) + Number(fields[12])
  if (withChildren) ticks += Number(fields[13]) + Number(fields[14])
  return (ticks / TICKS_PER_SECOND) * 1e6
}

export interface ServiceCpu {
  redis: number
  postgres: number
}

/**
 * The CPU of this machine's Redis and PostgreSQL servers, in microseconds: every process named `redis-server` or
 * `postgres` (the postmaster, its backends and its background workers), with what their ended children used (a
 * backend or an autovacuum worker that exits during a run is the postmaster's child: its CPU moves there, and is not
 * lost). What the gateway's calls cost them is not in the gateway's own figure: an admission's Lua script runs in
 * Redis, a ledger insert in a backend. A server with no such process here is absent (another host, a container).
 */
export function serviceCpuMicros (): Partial<ServiceCpu> {
  const total: Partial<ServiceCpu> = {}
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
    } catch {
      continue // ended meanwhile
    }
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
    const service = name === 'redis-server' ? 'redis' : name === 'postgres' ? 'postgres' : undefined
    if (service) total[service] = (total[service] ?? 0) + statCpuMicros(stat, true)
  }
  return total
}

export function rssBytes (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024
}

export interface RssSampler {
  /** Starts a new window; peak() is the highest sample since. */
  reset (): void
  peak (): number
  /** every sample since reset, for growth over a soak */
  samples (): Array<{ at: number, rss: number }>
  stop (): void
}

/** Samples VmRSS every `intervalMs` (the peak of a short burst can fall between two samples). */
export function sampleRss (pid: number, intervalMs = 100): RssSampler {
  let peak = 0
  let samples: Array<{ at: number, rss: number }> = []
  const take = () => {
    try {
      const rss = rssBytes(pid)
      peak = Math.max(peak, rss)
      samples.push({ at: Date.now(), rss })
    } catch {} // the process is gone: the run reports it
  }
  const timer = setInterval(take, intervalMs)
  return {
    reset () { peak = 0; samples = []; take() },
    peak () { take(); return peak },
    samples: () => samples,
    stop () { clearInterval(timer) }
  }
}
