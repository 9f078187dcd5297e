import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { loadConfig } from './config.js'
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

closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS, logger: { error: (message: unknown) => app.log.error(String(message)) } }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'shutting down after an error')
  else app.log.info({ signal }, 'shutting down: draining in-flight calls')
  // readiness fails first so the load balancer stops routing here, then in-flight streams finish
  app.drain()
  await app.close()
})

// Node's default accept queue (511) overflows when a burst of clients connects at once (2,000 streams opening in the
// benchmark reset 68 of them): the kernel caps this at net.core.somaxconn (4096 on current Linux)
await app.listen({ port: config.PORT, host: config.HOST, backlog: 4096 })
