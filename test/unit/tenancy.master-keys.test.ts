import { randomBytes } from 'node:crypto'
import { inspect } from 'node:util'
import t from 'tap'
import { generateMasterKey, parseMasterKeys } from '../../src/tenancy/master-keys.js'

const keyA = randomBytes(32).toString('base64')
const keyB = randomBytes(32).toString('base64')

t.test('the first key is primary and every key unwraps', async (t) => {
  const ring = parseMasterKeys(`2025-06:${keyA},2024_old.v1:${keyB}`)
  t.equal(ring.primary.id, '2025-06')
  t.same(ring.primary.key, Buffer.from(keyA, 'base64'))
  t.same([...ring.byId.keys()], ['2025-06', '2024_old.v1'])
  t.same(ring.byId.get('2024_old.v1'), Buffer.from(keyB, 'base64'))
})

t.test('whitespace around entries and unpadded base64 are accepted', async (t) => {
  const ring = parseMasterKeys(` a : ${keyA.replace(/=$/, '')} ,\n b:${keyB}\n`)
  t.same([...ring.byId.keys()], ['a', 'b'])
  t.same(ring.primary.key, Buffer.from(keyA, 'base64'))
})

t.test('generateMasterKey makes an entry that parses', async (t) => {
  const entry = generateMasterKey('trial')
  const ring = parseMasterKeys(entry)
  t.equal(ring.primary.id, 'trial')
  t.equal(ring.primary.key.length, 32)
  t.not(generateMasterKey('trial'), entry)
  t.throws(() => generateMasterKey('no spaces'), /must match/)
  t.throws(() => generateMasterKey(''), /must match/)
  t.throws(() => generateMasterKey('x'.repeat(65)), /must match/)
})

t.test('bad values fail with a message that names the entry, never the key', async (t) => {
  const short = randomBytes(31).toString('base64')
  const long = randomBytes(33).toString('base64')
  const cases: Array<[string, string, RegExp]> = [
    ['empty value', '', /entry 1 is not of the form/],
    ['key without id', keyA, /entry 1 is not of the form/],
    ['empty id', `:${keyA}`, /entry 1 has an id/],
    ['id with a space', `my key:${keyA}`, /entry 1 has an id/],
    ['id too long', `${'x'.repeat(65)}:${keyA}`, /entry 1 has an id/],
    ['31 bytes', `a:${keyB},b:${short}`, /entry 2 \(id "b"\) is not base64 of exactly 32 bytes/],
    ['33 bytes', `a:${long}`, /entry 1 \(id "a"\) is not base64/],
    ['not base64', `a:${keyA.slice(0, 20)}!${keyA.slice(21)}`, /entry 1 \(id "a"\) is not base64/],
    ['base64url', `a:${Buffer.alloc(32, 0xfb).toString('base64url')}`, /entry 1 \(id "a"\) is not base64/],
    ['empty key', 'a:', /entry 1 \(id "a"\) is not base64/],
    ['trailing comma', `a:${keyA},`, /entry 2 is not of the form/],
    ['duplicate id', `a:${keyA},a:${keyB}`, /master key id "a" appears more than once/],
    ['a second colon', `a:b:${keyA}`, /entry 1 \(id "a"\) is not base64/]
  ]
  for (const [name, value, message] of cases) {
    const err = catchError(() => parseMasterKeys(value))
    t.match(err.message, message, name)
    t.match(err.message, /^TRAMONTANE_MASTER_KEYS: /, name)
    const shown = inspect(err) + JSON.stringify(err)
    const secrets = [keyA, keyB, short, long, keyA.slice(0, 16), keyB.slice(0, 16)]
    t.notOk(secrets.some((secret) => shown.includes(secret)), `${name}: no key material`)
  }
})

function catchError (fn: () => unknown): Error {
  try {
    fn()
  } catch (err) {
    return err as Error
  }
  throw new Error('expected a throw')
}
