import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import type { MasterKey, MasterKeyRing } from './master-keys.js'

// Envelope encryption: each Mistral key has its own data key, and only the small data key is wrapped by a master key,
// so rotating the master key re-wraps 60 bytes per row and never touches the ciphertext
// (https://cloud.google.com/kms/docs/envelope-encryption). Every key here encrypts once or a few times, far below
// the 2^32 messages NIST SP 800-38D §8.3 allows per key with random 96-bit IVs.
const ALGORITHM = 'aes-256-gcm'
const KEY_BYTES = 32
const IV_BYTES = 12
const TAG_BYTES = 16
const WRAPPED_BYTES = IV_BYTES + KEY_BYTES + TAG_BYTES

export interface KeyAddress {
  workspaceId: string
  keyId: string
}

/** The columns of a `mistral_keys` row that hold the secret. */
export interface SealedKey {
  ciphertext: Buffer
  iv: Buffer
  tag: Buffer
  wrappedDataKey: Buffer
  masterKeyId: string
}

export interface KeyCipher {
  /** The id of the master key that seals and rewraps: rows under any other id are due for a rewrap. */
  readonly primaryId: string
  /** Whether a master key id is in the ring, i.e. whether rows under it can be opened. */
  knows (masterKeyId: string): boolean
  /** Encrypts a Mistral key under a fresh data key wrapped by the primary master key. */
  seal (input: KeyAddress & { plaintext: string }): SealedKey
  /** Decrypts a row; throws KeyCryptoError if its master key is not in the ring or anything fails to authenticate. */
  open (sealed: SealedKey & KeyAddress): string
  /** Re-wraps the data key under the primary master key; null when it already is. The ciphertext stays as is. */
  rewrap (sealed: SealedKey & KeyAddress): Pick<SealedKey, 'wrappedDataKey' | 'masterKeyId'> | null
}

/** Raised instead of Node's crypto errors so that no message can carry more than ids. */
export class KeyCryptoError extends Error {
  readonly code: 'unknown_master_key' | 'authentication_failed'

  constructor (code: KeyCryptoError['code'], message: string) {
    super(message)
    this.name = 'KeyCryptoError'
    this.code = code
  }
}

export function createKeyCipher (ring: MasterKeyRing): KeyCipher {
  return { primaryId: ring.primary.id, knows: (masterKeyId) => ring.byId.has(masterKeyId), seal, open, rewrap }

  function seal (input: KeyAddress & { plaintext: string }): SealedKey {
    const dataKey = randomBytes(KEY_BYTES)
    const secret = Buffer.from(input.plaintext, 'utf8')
    try {
      const iv = randomBytes(IV_BYTES)
      const { ciphertext, tag } = encrypt(dataKey, iv, secret, keyAad(input))
      return { ciphertext, iv, tag, wrappedDataKey: wrap(ring.primary, dataKey, input), masterKeyId: ring.primary.id }
    } finally {
      dataKey.fill(0)
      secret.fill(0)
    }
  }

  function open (sealed: SealedKey & KeyAddress): string {
    const dataKey = unwrap(sealed)
    try {
      if (sealed.iv.length !== IV_BYTES || sealed.tag.length !== TAG_BYTES) throw authenticationFailed(sealed)
      const secret = decrypt(dataKey, sealed.iv, sealed.ciphertext, sealed.tag, keyAad(sealed))
      if (secret === null) throw authenticationFailed(sealed)
      const plaintext = secret.toString('utf8')
      secret.fill(0)
      return plaintext
    } finally {
      dataKey.fill(0)
    }
  }

  function rewrap (sealed: SealedKey & KeyAddress): Pick<SealedKey, 'wrappedDataKey' | 'masterKeyId'> | null {
    if (sealed.masterKeyId === ring.primary.id) return null
    const dataKey = unwrap(sealed)
    try {
      return { wrappedDataKey: wrap(ring.primary, dataKey, sealed), masterKeyId: ring.primary.id }
    } finally {
      dataKey.fill(0)
    }
  }

  function unwrap (sealed: SealedKey & KeyAddress): Buffer {
    const masterKey = ring.byId.get(sealed.masterKeyId)
    if (masterKey === undefined) {
      throw new KeyCryptoError('unknown_master_key', `Mistral key ${sealed.keyId} of workspace ${sealed.workspaceId} ` +
        `is wrapped by master key "${sealed.masterKeyId}", which is not in TRAMONTANE_MASTER_KEYS`)
    }
    const wrapped = sealed.wrappedDataKey
    if (wrapped.length !== WRAPPED_BYTES) throw authenticationFailed(sealed)
    const dataKey = decrypt(masterKey, wrapped.subarray(0, IV_BYTES), wrapped.subarray(IV_BYTES, -TAG_BYTES),
      wrapped.subarray(-TAG_BYTES), wrapAad(sealed.masterKeyId, sealed))
    if (dataKey === null) throw authenticationFailed(sealed)
    return dataKey
  }
}

function wrap (masterKey: MasterKey, dataKey: Buffer, address: KeyAddress): Buffer {
  const iv = randomBytes(IV_BYTES)
  const { ciphertext, tag } = encrypt(masterKey.key, iv, dataKey, wrapAad(masterKey.id, address))
  return Buffer.concat([iv, ciphertext, tag])
}

function encrypt (key: Buffer, iv: Buffer, plaintext: Buffer, aad: Buffer) {
  const cipher = createCipheriv(ALGORITHM, key, iv, { authTagLength: TAG_BYTES }).setAAD(aad)
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()])
  return { ciphertext, tag: cipher.getAuthTag() }
}

/** null when authentication fails: Node's own error would say nothing more, and callers name the row instead. */
function decrypt (key: Buffer, iv: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer): Buffer | null {
  const decipher = createDecipheriv(ALGORITHM, key, iv, { authTagLength: TAG_BYTES }).setAAD(aad).setAuthTag(tag)
  const plaintext = decipher.update(ciphertext)
  try {
    return Buffer.concat([plaintext, decipher.final()])
  } catch {
    return null
  } finally {
    plaintext.fill(0)
  }
}

// Additional data binds a ciphertext to its row: copied to another workspace or key id, it no longer opens.
// Ids are checked for '/' so that two different addresses can never produce the same string.
function keyAad (address: KeyAddress): Buffer {
  return Buffer.from(['tramontane/mistral-key/v1', ...checkedIds(address)].join('/'))
}

function wrapAad (masterKeyId: string, address: KeyAddress): Buffer {
  return Buffer.from(['tramontane/data-key/v1', masterKeyId, ...checkedIds(address)].join('/'))
}

function checkedIds ({ workspaceId, keyId }: KeyAddress): string[] {
  if (!validId(workspaceId) || !validId(keyId)) throw new Error('workspace and key ids must be non-empty and lack "/"')
  return [workspaceId, keyId]
}

function validId (id: string): boolean {
  return id.length > 0 && !id.includes('/')
}

function authenticationFailed ({ workspaceId, keyId, masterKeyId }: SealedKey & KeyAddress): KeyCryptoError {
  return new KeyCryptoError('authentication_failed', `Mistral key ${keyId} of workspace ${workspaceId} ` +
    `failed authentication under master key "${masterKeyId}": the row was altered or moved`)
}
