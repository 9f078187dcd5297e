import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'

// /proc/<pid>/stat counts CPU time in clock ticks (proc(5)); 100 a second nearly everywhere
const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100

/** utime + stime of the process, all its threads, in microseconds. */
export function cpuMicros (pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // the command name sits in parentheses and may hold spaces: count fields after its closing one
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12]) // fields 14 and 15 of proc(5)
  return (ticks / TICKS_PER_SECOND) * 1e6
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
