import { randomBytes } from 'node:crypto'

const KEY_BYTES = 32 // AES-256
const ID_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/
const SOURCE = 'TRAMONTANE_MASTER_KEYS'

export interface MasterKey {
  readonly id: string
  readonly key: Buffer
}

/** The master keys: `primary` wraps new data keys, every key in `byId` (the primary too) unwraps. */
export interface MasterKeyRing {
  readonly primary: MasterKey
  readonly byId: ReadonlyMap<string, Buffer>
}

/**
 * Parses `id:<base64 of 32 bytes>,id2:<...>`. Rotation is: put a new key first, re-wrap, drop the old one.
 * Error messages name an entry by its position or its id, never by anything after the colon.
 */
export function parseMasterKeys (value: string): MasterKeyRing {
  const keys = value.split(',').map(parseEntry)
  const byId = new Map<string, Buffer>()
  for (const { id, key } of keys) {
    if (byId.has(id)) throw new Error(`${SOURCE}: master key id "${id}" appears more than once`)
    byId.set(id, key)
  }
  return { primary: keys[0], byId }
}

/** A fresh `id:<base64>` entry, as a trial start writes into the data folder. */
export function generateMasterKey (id: string): string {
  if (!ID_PATTERN.test(id)) throw new Error(`master key id must match ${ID_PATTERN}`)
  return `${id}:${randomBytes(KEY_BYTES).toString('base64')}`
}

function parseEntry (entry: string, index: number): MasterKey {
  const position = `${SOURCE}: entry ${index + 1}`
  const colon = entry.indexOf(':')
  if (colon === -1) throw new Error(`${position} is not of the form id:<base64 of ${KEY_BYTES} bytes>`)
  // the id is not echoed until it is known to be an id: a pasted key with no id would land here
  const id = entry.slice(0, colon).trim()
  if (!ID_PATTERN.test(id)) throw new Error(`${position} has an id that does not match ${ID_PATTERN}`)
  const key = decodeKey(entry.slice(colon + 1).trim())
  if (key === null) throw new Error(`${position} (id "${id}") is not base64 of exactly ${KEY_BYTES} bytes`)
  return { id, key }
}

function decodeKey (text: string): Buffer | null {
  const key = Buffer.from(text, 'base64')
  // Buffer.from skips characters outside the alphabet, so only a lossless round trip proves the text was base64
  const canonical = key.toString('base64').replace(/=+$/, '') === text.replace(/=+$/, '')
  return key.length === KEY_BYTES && canonical ? key : null
}
