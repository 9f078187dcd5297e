import { setTimeout as sleep } from 'node:timers/promises'
import { eq } from 'drizzle-orm'
import { watchedJobs } from '../../src/db/schema.js'
import type { TestApp } from './app.js'

/** The watch of a batch job, as the gateway's database holds it (undefined: not watched). */
export async function watchOf (s: TestApp, jobId: string) {
  const [row] = await s.app.database.db.select().from(watchedJobs).where(eq(watchedJobs.jobId, jobId))
  return row
}

/** Reads until `done` says so; past the timeout, fails with what was read last. */
export async function until<T> (what: string, read: () => Promise<T>, done: (value: T) => boolean,
  timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await read()
    if (done(value)) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(value)}`)
    await sleep(25)
  }
}
