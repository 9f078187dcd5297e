import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { Config } from './config.js'
import { generateMasterKey } from './tenancy/master-keys.js'

/** What a trial start stored in DATA_DIR/secrets.json. */
export interface TrialSecrets {
  adminToken?: string
  masterKeys?: string
}

export interface ResolvedSecrets {
  config: Config
  /** Which secrets this start generated (and the admin token, to print once). */
  generated: { adminToken?: string, masterKeys: boolean }
  file: string
}

/**
 * A first start without TRAMONTANE_ADMIN_TOKEN or TRAMONTANE_MASTER_KEYS generates what is missing into the data
 * folder (mode 0600) so that trying the gateway takes one command. Production sets both in the environment.
 */
export async function resolveTrialSecrets (config: Config): Promise<ResolvedSecrets> {
  const file = trialSecretsFile(config.DATA_DIR)
  if (config.TRAMONTANE_ADMIN_TOKEN && config.TRAMONTANE_MASTER_KEYS) {
    return { config, generated: { masterKeys: false }, file }
  }
  const stored = await readTrialSecrets(config.DATA_DIR)
  const generated: ResolvedSecrets['generated'] = { masterKeys: false }
  if (!config.TRAMONTANE_ADMIN_TOKEN && !stored.adminToken) {
    stored.adminToken = `tmtadm_${randomBytes(32).toString('base64url')}`
    generated.adminToken = stored.adminToken
  }
  if (!config.TRAMONTANE_MASTER_KEYS && !stored.masterKeys) {
    // an id of its own: keys wrapped by another start's trial key (another replica's, or this one's before its data
    // folder was lost) are then named as such instead of failing authentication under a key of the same name.
    // Installs from before keep the plain `trial` they stored
    stored.masterKeys = generateMasterKey(`trial-${randomBytes(4).toString('hex')}`)
    generated.masterKeys = true
  }
  if (generated.adminToken || generated.masterKeys) {
    await mkdir(resolve(config.DATA_DIR), { recursive: true })
    await writeFile(file, JSON.stringify(stored, null, 2) + '\n', { mode: 0o600 })
  }
  return {
    config: Object.freeze({
      ...config,
      TRAMONTANE_ADMIN_TOKEN: config.TRAMONTANE_ADMIN_TOKEN ?? stored.adminToken,
      TRAMONTANE_MASTER_KEYS: config.TRAMONTANE_MASTER_KEYS ?? stored.masterKeys
    }),
    generated,
    file
  }
}

/** What a trial start stored, or nothing: reads only, for the CLIs, which never generate a secret. */
export async function readTrialSecrets (dataDir: string): Promise<TrialSecrets> {
  const file = trialSecretsFile(dataDir)
  try {
    return JSON.parse(await readFile(file, 'utf8')) as TrialSecrets
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {}
    throw new Error(`cannot read ${file}`)
  }
}

export function trialSecretsFile (dataDir: string): string {
  return join(resolve(dataDir), 'secrets.json')
}
