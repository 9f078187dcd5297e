import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { loadConfig } from '../../src/config.js'
import { generateMasterKey, parseMasterKeys } from '../../src/tenancy/master-keys.js'
import { resolveTrialSecrets } from '../../src/trial-secrets.js'

async function freshDataDir (t: Test): Promise<string> {
  const dataDir = await mkdtemp(join(tmpdir(), 'tramontane-trial-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  return dataDir
}

const masterKeyId = (masterKeys: string | undefined) => parseMasterKeys(masterKeys ?? '').primary.id

t.test('a generated master key has an id of its own, kept by the next start', async (t) => {
  const dataDir = await freshDataDir(t)
  const first = await resolveTrialSecrets(loadConfig({ DATA_DIR: dataDir }))
  t.equal(first.generated.masterKeys, true)
  t.match(masterKeyId(first.config.TRAMONTANE_MASTER_KEYS), /^trial-[0-9a-f]{8}$/)

  const again = await resolveTrialSecrets(loadConfig({ DATA_DIR: dataDir }))
  t.equal(again.generated.masterKeys, false)
  t.equal(again.config.TRAMONTANE_MASTER_KEYS, first.config.TRAMONTANE_MASTER_KEYS)

  // another machine's trial (a second replica) must never pass for this one's
  const elsewhere = await resolveTrialSecrets(loadConfig({ DATA_DIR: await freshDataDir(t) }))
  t.not(masterKeyId(elsewhere.config.TRAMONTANE_MASTER_KEYS), masterKeyId(first.config.TRAMONTANE_MASTER_KEYS))
})

t.test('an install whose stored master key is named plain `trial` keeps it', async (t) => {
  const dataDir = await freshDataDir(t)
  const stored = { adminToken: `tmtadm_${'a'.repeat(43)}`, masterKeys: generateMasterKey('trial') }
  await writeFile(join(dataDir, 'secrets.json'), JSON.stringify(stored))
  const { config, generated } = await resolveTrialSecrets(loadConfig({ DATA_DIR: dataDir }))
  t.same(generated, { masterKeys: false })
  t.equal(config.TRAMONTANE_MASTER_KEYS, stored.masterKeys)
})

t.test('a master key given in the environment is used as it is', async (t) => {
  const masterKeys = generateMasterKey('prod')
  const { config, generated } = await resolveTrialSecrets(
    loadConfig({ DATA_DIR: await freshDataDir(t), TRAMONTANE_MASTER_KEYS: masterKeys }))
  t.equal(generated.masterKeys, false)
  t.equal(config.TRAMONTANE_MASTER_KEYS, masterKeys)
})
