import { randomBytes, randomUUID } from 'node:crypto'
import { inspect } from 'node:util'
import t from 'tap'
import { createKeyCipher, KeyCryptoError, type SealedKey } from '../../src/tenancy/key-crypto.js'
import { parseMasterKeys } from '../../src/tenancy/master-keys.js'

const oldEntry = `old:${randomBytes(32).toString('base64')}`
const newEntry = `new:${randomBytes(32).toString('base64')}`
const canary = `canary-${randomBytes(12).toString('hex')}` // a Mistral key no message may ever show

function address () {
  return { workspaceId: randomUUID(), keyId: randomUUID() }
}

t.test('a sealed key opens to the same string', async (t) => {
  const cipher = createKeyCipher(parseMasterKeys(oldEntry))
  const at = address()
  const sealed = cipher.seal({ ...at, plaintext: canary })
  t.equal(sealed.masterKeyId, 'old')
  t.equal(cipher.primaryId, 'old')
  t.equal(sealed.iv.length, 12)
  t.equal(sealed.tag.length, 16)
  t.equal(sealed.wrappedDataKey.length, 12 + 32 + 16)
  t.equal(cipher.open({ ...sealed, ...at }), canary)
  t.equal(cipher.open({ ...sealed, ...at }), canary, 'opens more than once')
  const unicode = 'clé-ü-🔑'
  t.equal(cipher.open({ ...cipher.seal({ ...at, plaintext: unicode }), ...at }), unicode)
})

t.test('the ciphertext hides the key and every seal is fresh', async (t) => {
  const cipher = createKeyCipher(parseMasterKeys(oldEntry))
  const at = address()
  const a = cipher.seal({ ...at, plaintext: canary })
  const b = cipher.seal({ ...at, plaintext: canary })
  for (const field of ['ciphertext', 'iv', 'tag', 'wrappedDataKey'] as const) {
    t.notOk(a[field].includes(Buffer.from(canary)), `${field} does not contain the key`)
    t.notOk(a[field].equals(b[field]), `${field} differs between two seals`)
  }
})

t.test('tampering with any byte of any field fails to open', async (t) => {
  const cipher = createKeyCipher(parseMasterKeys(oldEntry))
  const at = address()
  const sealed = cipher.seal({ ...at, plaintext: canary })
  for (const field of ['ciphertext', 'iv', 'tag', 'wrappedDataKey'] as const) {
    for (let i = 0; i < sealed[field].length; i++) {
      const altered = Buffer.from(sealed[field])
      altered[i] ^= 0x01
      t.equal(failure(() => cipher.open({ ...sealed, ...at, [field]: altered })).code, 'authentication_failed', field)
    }
    const truncated = sealed[field].subarray(0, -1)
    t.equal(failure(() => cipher.open({ ...sealed, ...at, [field]: truncated })).code, 'authentication_failed', field)
  }
})

t.test('a row moved to another workspace or key id does not open', async (t) => {
  const cipher = createKeyCipher(parseMasterKeys(oldEntry))
  const at = address()
  const sealed = cipher.seal({ ...at, plaintext: canary })
  const elsewhere = address()
  const movedWorkspace = { ...sealed, ...at, workspaceId: elsewhere.workspaceId }
  t.equal(failure(() => cipher.open(movedWorkspace)).code, 'authentication_failed', 'other workspace')
  t.equal(failure(() => cipher.open({ ...sealed, ...at, keyId: elsewhere.keyId })).code, 'authentication_failed')
  t.equal(failure(() => cipher.rewrap({ ...sealed, ...at, masterKeyId: 'x' })).code, 'unknown_master_key')
})

t.test('a row claiming another master key of the ring does not open', async (t) => {
  const cipher = createKeyCipher(parseMasterKeys(`${newEntry},${oldEntry}`))
  const at = address()
  const sealed = cipher.seal({ ...at, plaintext: canary })
  t.equal(failure(() => cipher.open({ ...sealed, ...at, masterKeyId: 'old' })).code, 'authentication_failed')
})

t.test('the master key rotates online: add, rewrap, retire', async (t) => {
  const before = createKeyCipher(parseMasterKeys(oldEntry))
  const during = createKeyCipher(parseMasterKeys(`${newEntry},${oldEntry}`))
  const after = createKeyCipher(parseMasterKeys(newEntry))
  const at = address()
  const sealed = before.seal({ ...at, plaintext: canary })
  const untouched = before.seal({ ...at, plaintext: canary })

  t.equal(during.open({ ...sealed, ...at }), canary, 'the new ring still opens old rows')
  const rewrapped = during.rewrap({ ...sealed, ...at })
  if (rewrapped === null) throw new Error('expected a rewrap')
  t.equal(rewrapped.masterKeyId, 'new')
  t.notOk(rewrapped.wrappedDataKey.equals(sealed.wrappedDataKey))
  const moved: SealedKey = { ...sealed, ...rewrapped }
  t.equal(during.rewrap({ ...moved, ...at }), null, 'already under the primary')
  t.equal(after.open({ ...moved, ...at }), canary, 'the old master key can retire')

  const err = failure(() => after.open({ ...untouched, ...at }))
  t.equal(err.code, 'unknown_master_key', 'a row not rewrapped names its missing master key')
  t.match(err.message, /master key "old", which is not in TRAMONTANE_MASTER_KEYS/)
  t.match(err.message, at.keyId)
  t.equal(failure(() => after.rewrap({ ...untouched, ...at })).code, 'unknown_master_key', 'nor rewrap it')
})

t.test('a seal under the primary needs no rewrap', async (t) => {
  const cipher = createKeyCipher(parseMasterKeys(`${newEntry},${oldEntry}`))
  const at = address()
  t.equal(cipher.rewrap({ ...cipher.seal({ ...at, plaintext: canary }), ...at }), null)
})

t.test('ids that could make two addresses ambiguous are refused', async (t) => {
  const cipher = createKeyCipher(parseMasterKeys(oldEntry))
  t.throws(() => cipher.seal({ workspaceId: 'a/b', keyId: 'c', plaintext: canary }), /lack "\/"/)
  t.throws(() => cipher.seal({ workspaceId: 'a', keyId: '', plaintext: canary }), /non-empty/)
})

/** The KeyCryptoError that `fn` throws; anything else, or a message showing secret material, fails the test. */
function failure (fn: () => unknown): KeyCryptoError {
  try {
    fn()
  } catch (err) {
    if (!(err instanceof KeyCryptoError)) throw err
    // canary check: neither the Mistral key nor any master key material, in any rendering of the error
    const shown = inspect(err, { depth: 5 }) + JSON.stringify(err) + String(err)
    for (const secret of [canary, oldEntry.slice(4), newEntry.slice(4), oldEntry.slice(4, 20), newEntry.slice(4, 20)]) {
      if (shown.includes(secret)) throw new Error(`the error shows secret material: ${err.message}`)
    }
    return err
  }
  throw new Error('expected a KeyCryptoError')
}
