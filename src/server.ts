import { setTimeout as sleep } from 'node:timers/promises'
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { loadConfig, MAX_TIMER_MS } from './config.js'
import { resolveTrialSecrets } from './trial-secrets.js'

const given = loadConfig()
const { config, generated, file } = await resolveTrialSecrets(given)
const app = await buildApp({ config })

if (generated.adminToken) {
  // printed once, on the terminal only: the log never carries a secret
  process.stderr.write(`\n  tramontane generated an admin token for this trial (stored in ${file}):\n\n` +
    `    ${generated.adminToken}\n\n  Set TRAMONTANE_ADMIN_TOKEN and TRAMONTANE_MASTER_KEYS in production.\n\n`)
}
if (!given.TRAMONTANE_ADMIN_TOKEN || !given.TRAMONTANE_MASTER_KEYS) {
  app.log.warn({ file }, 'using trial secrets from the data folder: fine for trying it out, not for production')
}
if (!config.REDIS_URL) {
  app.log.warn('REDIS_URL is not set: in-process state, run ONE replica only (limits and revocation are not shared)')
}
if (!config.DATABASE_URL) app.log.warn({ dataDir: config.DATA_DIR }, 'DATABASE_URL is not set: embedded PostgreSQL')

// past the grace, the usage records of the calls cut then are written (or left in the spool) within this: the
// database driver's connection timeout (5 s) and a batch insert
const FLUSH_MS = 10_000

// close-with-grace's own deadline is the last resort (exit 1): the shutdown below bounds itself well within it
const delay = Math.min(config.SHUTDOWN_DELAY_MS + config.SHUTDOWN_GRACE_MS + FLUSH_MS, MAX_TIMER_MS)
const logger = { error: (message: unknown) => app.log.error(String(message)) }
closeWithGrace({ delay, logger }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'shutting down after an error')
  else app.log.info({ signal }, 'shutting down: draining in-flight calls')
  // readiness fails first; calls are still served until the load balancer has seen it and stopped routing here. Not
  // after an error: the process is in a state no one should be sent to
  app.drain()
  if (signal) await sleep(config.SHUTDOWN_DELAY_MS)
  await closeWithin(config.SHUTDOWN_GRACE_MS)
})

/**
 * Stops listening and lets the calls in flight finish for `graceMs`, then cuts their connections: each settles as if
 * its client hung up (billed for what was relayed), and close() goes on to write the usage records, which exiting on
 * the timer would have left as their provisional estimates.
 */
async function closeWithin (graceMs: number) {
  const cut = setTimeout(() => {
    app.log.warn({ graceMs }, 'shutdown grace period over: cutting the calls still in flight')
    app.server.closeAllConnections()
  }, graceMs)
  try {
    await app.close()
  } finally {
    clearTimeout(cut)
  }
}

// Node's default accept queue (511) overflows when a burst of clients connects at once (2,000 streams opening in the
// benchmark reset 68 of them): the kernel caps this at net.core.somaxconn (4096 on current Linux)
await app.listen({ port: config.PORT, host: config.HOST, backlog: 4096 })
