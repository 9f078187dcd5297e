import { loadConfig } from '../config.js'
import { openDatabase } from '../db/client.js'

// `npm run db:migrate`: apply pending migrations without starting the gateway (deploy pipelines)
const config = loadConfig()
const database = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, poolSize: 1 })
try {
  await database.migrate()
  process.stdout.write(`migrations applied (${database.kind})\n`)
} finally {
  await database.close()
}
