import { loadConfig, type Config } from '../config.js'
import { openDatabase } from '../db/client.js'
import { createLocalBus } from '../tenancy/invalidation-bus.js'
import { createKeyCipher } from '../tenancy/key-crypto.js'
import { parseMasterKeys } from '../tenancy/master-keys.js'
import { createMistralKeyStore, unopenedKeys } from '../tenancy/mistral-keys.js'
import { readTrialSecrets, trialSecretsFile } from '../trial-secrets.js'

// `npm run keys:rewrap`: step two of a master key rotation (docs/operations.md). Every data key is re-wrapped
// under the first key of TRAMONTANE_MASTER_KEYS; ciphertexts are untouched and running replicas keep serving,
// since each of them still holds the old master key until the next deploy drops it. Embedded PostgreSQL (no
// DATABASE_URL) takes one process at a time: there it runs while the gateway is stopped, or is refused.
const config = loadConfig()
const masterKeys = await findMasterKeys(config)
if (masterKeys === undefined) {
  process.stderr.write('TRAMONTANE_MASTER_KEYS is not set' + (config.DATABASE_URL === undefined
    ? `, nor is a trial master key in ${trialSecretsFile(config.DATA_DIR)}`
    : '') + ': set it as the replicas have it (new:<b64>,old:<b64>). keys:rewrap generates no master key\n')
  process.exitCode = 1
} else {
  process.exitCode = await rewrapUnder(masterKeys)
}

/**
 * Never generated here, unlike a trial start (src/trial-secrets.ts): a key made up in this shell would be one no
 * replica has, and every stored key re-wrapped under it. A trial's stored one is read on embedded PostgreSQL only,
 * the database of that data folder.
 */
async function findMasterKeys ({ TRAMONTANE_MASTER_KEYS, DATABASE_URL, DATA_DIR }: Config) {
  if (TRAMONTANE_MASTER_KEYS !== undefined || DATABASE_URL !== undefined) return TRAMONTANE_MASTER_KEYS
  return (await readTrialSecrets(DATA_DIR)).masterKeys
}

/** 1 when it left keys it could not open: dropping their master key now would lose them. */
async function rewrapUnder (masterKeys: string): Promise<number> {
  const cipher = createKeyCipher(parseMasterKeys(masterKeys))
  const database = await openDatabase({ url: config.DATABASE_URL, dataDir: config.DATA_DIR, poolSize: 2 })
  try {
    await database.migrate()
    const keys = createMistralKeyStore({ db: database.db, cipher, bus: createLocalBus() })
    const { moved, unknownMasterKeys, mismatchedMasterKeys } = await keys.rewrapAll()
    process.stdout.write(`re-wrapped ${moved} Mistral key(s) under master key '${cipher.primaryId}'\n`)
    // worded as the start-up check words them (checkRingOpensStoredKeys)
    const unopened = unopenedKeys(unknownMasterKeys, mismatchedMasterKeys)
    for (const fact of unopened) process.stderr.write(`left as they were: ${fact}\n`)
    if (unopened.length === 0) return 0
    process.stderr.write('Add the id:<base64> entry that wrapped them to TRAMONTANE_MASTER_KEYS, after the first, as ' +
      'it is set on the replicas that stored them, and run keys:rewrap again\n')
    return 1
  } finally {
    await database.close()
  }
}
