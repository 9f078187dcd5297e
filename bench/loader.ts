/**
 * The load generator, a process of its own (pinned beside the fake upstream, away from the gateway). It takes one
 * job at a time from the harness over IPC and answers with figures only, never the raw samples.
 */
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { Client, Pool } from 'undici'
import { countEvents } from './scenarios.js'
import { createSamples, percentiles } from './stats.js'

interface Target {
  url: string
  headers: Record<string, string>
  body: string
}

export type Job =
  | Target & { kind: 'cannon', connections: number, durationS?: number, amount?: number }
  | Target & { kind: 'ttfb', calls: number }
  | Target & { kind: 'hold', streams: number, expectedEvents: number, timeoutMs: number }

export interface JobMessage { id: number, job: Job }
export type JobAnswer = { id: number, ok: true, result: unknown } | { id: number, ok: false, error: string }

/** autocannon for the counts; latencies from its `response` event, in full precision (its histogram keeps whole ms). */
function cannon (job: Extract<Job, { kind: 'cannon' }>) {
  const latencies = createSamples()
  let non2xx = 0
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const instance = autocannon({
      url: job.url,
      method: 'POST',
      headers: job.headers,
      body: job.body,
      connections: job.connections,
      pipelining: 1,
      timeout: 30,
      ...(job.amount ? { amount: job.amount } : { duration: job.durationS })
    }, (err, result) => {
      if (err) return reject(err)
      const elapsedS = (performance.now() - started) / 1000
      const completed = latencies.values().length
      const statusCodes = Object.entries(result.statusCodeStats).map(([code, { count }]) => [code, count])
      resolve({
        completed,
        non2xx,
        errors: result.errors,
        timeouts: result.timeouts,
        statusCodes: Object.fromEntries(statusCodes),
        elapsedS,
        rps: completed / elapsedS,
        latencyMs: percentiles(latencies.values())
      })
    })
    instance.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
      if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime)
      else non2xx++
    })
  })
}

/** One connection, one stream after another: time to the headers and to the first body byte (the first event). */
async function ttfb (job: Extract<Job, { kind: 'ttfb' }>) {
  const url = new URL(job.url)
  const client = new Client(url.origin, { pipelining: 1 })
  const headers = createSamples(job.calls)
  const firstByte = createSamples(job.calls)
  const total = createSamples(job.calls)
  let failed = 0
  try {
    for (let i = 0; i < job.calls; i++) {
      const started = performance.now()
      const res = await client.request({ path: url.pathname, method: 'POST', headers: job.headers, body: job.body })
      const headersAt = performance.now()
      let firstAt = 0
      let text = ''
      for await (const chunk of res.body) {
        firstAt ||= performance.now()
        text += chunk
      }
      if (res.statusCode !== 200 || !text.includes('data: [DONE]')) {
        failed++
        continue
      }
      headers.push(headersAt - started)
      firstByte.push(firstAt - started)
      total.push(performance.now() - started)
    }
  } finally {
    await client.close()
  }
  return {
    failed,
    headersMs: percentiles(headers.values()),
    firstByteMs: percentiles(firstByte.values()),
    totalMs: percentiles(total.values())
  }
}

/** Many slow streams at once, each on its own connection, opened in steps so the listen backlog is not the test. */
async function hold (job: Extract<Job, { kind: 'hold' }>) {
  const url = new URL(job.url)
  const pool = new Pool(url.origin, {
    connections: job.streams, pipelining: 1, headersTimeout: job.timeoutMs, bodyTimeout: job.timeoutMs
  })
  const durations = createSamples(job.streams)
  const errors = new Map<string, number>()
  let complete = 0
  let incomplete = 0
  let open = 0
  let peakOpen = 0
  const count = (what: string) => errors.set(what, (errors.get(what) ?? 0) + 1)
  const one = async (i: number) => {
    await sleep(Math.floor(i / 200) * 100)
    const started = performance.now()
    let opened = false
    try {
      const res = await pool.request({ path: url.pathname, method: 'POST', headers: job.headers, body: job.body })
      opened = true
      peakOpen = Math.max(peakOpen, ++open)
      let text = ''
      for await (const chunk of res.body) text += chunk
      const whole = res.statusCode === 200 && countEvents(text) === job.expectedEvents && text.includes('data: [DONE]')
      if (whole) complete++
      else incomplete++
      if (!whole) count(res.statusCode === 200 ? 'cut short' : `${res.statusCode} ${errorCode(text)}`)
      durations.push((performance.now() - started) / 1000)
    } catch (err) {
      count(`${(err as NodeJS.ErrnoException).code ?? String(err)} ${opened ? 'mid-stream' : 'before the headers'}`)
    } finally {
      if (opened) open--
    }
  }
  try {
    await Promise.all(Array.from({ length: job.streams }, (_, i) => one(i)))
  } finally {
    await pool.destroy()
  }
  return {
    streams: job.streams,
    complete,
    incomplete,
    failed: job.streams - complete - incomplete,
    peakOpen,
    errors: Object.fromEntries(errors),
    durationS: percentiles(durations.values())
  }
}

/** The gateway's error envelope names what refused the call (budget_unavailable, upstream_unavailable, …). */
function errorCode (text: string): string {
  try {
    return String(JSON.parse(text).code ?? '')
  } catch {
    return ''
  }
}

const JOBS = { cannon, ttfb, hold } as const

process.on('message', async ({ id, job }: JobMessage) => {
  let answer: JobAnswer
  try {
    answer = { id, ok: true, result: await JOBS[job.kind](job as never) }
  } catch (err) {
    answer = { id, ok: false, error: String((err as Error).stack ?? err) }
  }
  process.send?.(answer)
})
// the harness is gone (crashed, killed): nothing left to measure for
process.on('disconnect', () => process.exit(0))
process.send?.({ id: 0, ok: true, result: 'ready' })
