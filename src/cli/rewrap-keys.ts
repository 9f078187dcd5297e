import { loadConfig } from '../config.js'
import { openDatabase } from '../db/client.js'
import { createLocalBus } from '../tenancy/invalidation-bus.js'
import { createKeyCipher } from '../tenancy/key-crypto.js'
import { parseMasterKeys } from '../tenancy/master-keys.js'
import { createMistralKeyStore } from '../tenancy/mistral-keys.js'
import { resolveTrialSecrets } from '../trial-secrets.js'

// `npm run keys:rewrap`: step two of a master key rotation (docs/operations.md). Every data key is re-wrapped
// under the first key of TRAMONTANE_MASTER_KEYS; ciphertexts are untouched and running replicas keep serving,
// since each of them still holds the old master key until the next deploy drops it. Embedded PostgreSQL (no
// DATABASE_URL) takes one process at a time: there it runs while the gateway is stopped, or is refused.
const { config } = await resolveTrialSecrets(loadConfig())
const cipher = createKeyCipher(parseMasterKeys(config.TRAMONTANE_MASTER_KEYS ?? ''))
const database = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, poolSize: 2 })
try {
  await database.migrate()
  const keys = createMistralKeyStore({ db: database.db, cipher, bus: createLocalBus() })
  const { moved, unknownMasterKeys } = await keys.rewrapAll()
  process.stdout.write(`re-wrapped ${moved} Mistral key(s) under master key '${cipher.primaryId}'\n`)
  const missing = Object.entries(unknownMasterKeys)
  if (missing.length > 0) {
    // these rows cannot be opened by this ring: dropping their master key now would lose them
    process.stderr.write(`left as they were, master key not in TRAMONTANE_MASTER_KEYS: ${
      missing.map(([id, count]) => `${count} under '${id}'`).join(', ')}\n`)
    process.exitCode = 1
  }
} finally {
  await database.close()
}
