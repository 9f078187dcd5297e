import { createHash } from 'node:crypto'
import t from 'tap'
import {
  generateWorkspaceToken, hashWorkspaceToken, tokenPrefix, WORKSPACE_TOKEN_PATTERN
} from '../../src/tenancy/token-format.js'

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'

t.test('a generated token hashes back to its own hash', async (t) => {
  const { token, prefix, hash } = generateWorkspaceToken()
  t.match(token, /^tmt_[0-9A-Za-z]{49}$/)
  t.same(hashWorkspaceToken(token), hash)
  t.same(hash, createHash('sha256').update(token).digest())
  t.equal(prefix, token.slice(0, 12))
  t.equal(tokenPrefix(token), prefix)
})

t.test('1000 tokens are valid, distinct and of one length', async (t) => {
  const tokens = new Set<string>()
  const hashes = new Set<string>()
  for (let i = 0; i < 1000; i++) {
    const { token, hash } = generateWorkspaceToken()
    if (token.length !== 53 || hashWorkspaceToken(token) === null) t.fail(`invalid token ${token}`)
    tokens.add(token)
    hashes.add(hash.toString('hex'))
  }
  t.equal(tokens.size, 1000)
  t.equal(hashes.size, 1000)
})

t.test('the secret scanner pattern finds a token in text and ignores longer runs', async (t) => {
  const { token } = generateWorkspaceToken()
  t.equal(`export TMT="${token}"`.match(WORKSPACE_TOKEN_PATTERN)?.[0], token)
  t.notOk(WORKSPACE_TOKEN_PATTERN.test(token + 'x'))
  t.notOk(WORKSPACE_TOKEN_PATTERN.test('tmt_' + 'a'.repeat(48)))
})

t.test('any single-character substitution fails the checksum', async (t) => {
  for (let round = 0; round < 20; round++) {
    const { token } = generateWorkspaceToken()
    for (let position = 0; position < token.length; position++) {
      for (const replacement of sampleReplacements(token[position])) {
        const typo = token.slice(0, position) + replacement + token.slice(position + 1)
        if (hashWorkspaceToken(typo) !== null) t.fail(`accepted ${typo} (position ${position})`)
      }
    }
  }
  t.pass('no substitution accepted')
})

t.test('malformed tokens are refused without throwing', async (t) => {
  const { token } = generateWorkspaceToken()
  const cases: Record<string, string> = {
    empty: '',
    'wrong prefix': 'tmx_' + token.slice(4),
    'upper-case prefix': 'TMT_' + token.slice(4),
    'one character short': token.slice(0, -1),
    'one character long': token + '0',
    'non-base62 character': token.slice(0, 20) + '-' + token.slice(21),
    'non-ASCII character': token.slice(0, 20) + 'é' + token.slice(21),
    'surrounding whitespace': ` ${token.slice(1)}`,
    'bearer scheme left in': 'Bearer ' + token,
    '10 kB header': 'tmt_' + 'a'.repeat(10_000)
  }
  for (const [name, value] of Object.entries(cases)) {
    t.equal(hashWorkspaceToken(value), null, name)
    t.equal(tokenPrefix(value), null, name)
  }
})

function sampleReplacements (current: string): string[] {
  const picks = [BASE62[0], BASE62[61], BASE62[Math.floor(Math.random() * 62)], current.toUpperCase(), '_']
  return [...new Set(picks)].filter((c) => c !== current)
}
