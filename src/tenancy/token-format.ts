import { createHash, randomBytes } from 'node:crypto'
import { crc32 } from 'node:zlib'

// The shape of GitHub's tokens: a fixed prefix, base62, a CRC32 checksum, so a secret scanner matches it with few
// false positives and a typo is refused offline
// (https://github.blog/engineering/platform-security/behind-githubs-new-authentication-token-formats/).
const PREFIX = 'tmt_'
const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
const SECRET_BYTES = 32
const BODY_LENGTH = 43 // 62^43 > 2^256: 32 bytes always fit in 43 base62 digits
const CHECKSUM_LENGTH = 6 // 62^6 > 2^32: a CRC32 always fits in 6 base62 digits
const PREFIX_BODY_CHARS = 8
const TOKEN_LENGTH = PREFIX.length + BODY_LENGTH + CHECKSUM_LENGTH
const SHAPE = /^tmt_[0-9A-Za-z]{49}$/

/**
 * What a secret scanner (GitHub push protection custom pattern, gitleaks, trufflehog) should match: `tmt_`, then
 * 43 base62 characters of secret and 6 of CRC32, 53 characters in all. Not global, so it keeps no `lastIndex` state.
 */
export const WORKSPACE_TOKEN_PATTERN = /\btmt_[0-9A-Za-z]{49}\b/

export interface GeneratedToken {
  token: string
  prefix: string
  hash: Buffer
}

export function generateWorkspaceToken (): GeneratedToken {
  const body = toBase62(BigInt('0x' + randomBytes(SECRET_BYTES).toString('hex')), BODY_LENGTH)
  const token = PREFIX + body + checksum(PREFIX + body)
  return { token, prefix: PREFIX + body.slice(0, PREFIX_BODY_CHARS), hash: sha256(token) }
}

/** SHA-256 of the whole token when its shape and checksum hold, else null: a malformed token never reaches a lookup. */
export function hashWorkspaceToken (token: string): Buffer | null {
  // the length first, so a 10 MB Authorization header costs one comparison
  if (token.length !== TOKEN_LENGTH || !SHAPE.test(token)) return null
  const checked = token.slice(0, -CHECKSUM_LENGTH)
  if (checksum(checked) !== token.slice(-CHECKSUM_LENGTH)) return null
  return sha256(token)
}

/** `tmt_` and 8 characters, for humans and logs; null when the string is not shaped like a token, to log nothing. */
export function tokenPrefix (token: string): string | null {
  if (token.length !== TOKEN_LENGTH || !SHAPE.test(token)) return null
  return token.slice(0, PREFIX.length + PREFIX_BODY_CHARS)
}

function checksum (text: string): string {
  return toBase62(BigInt(crc32(text)), CHECKSUM_LENGTH)
}

function toBase62 (value: bigint, width: number): string {
  let digits = ''
  for (let rest = value; rest > 0n; rest /= 62n) digits = ALPHABET[Number(rest % 62n)] + digits
  return digits.padStart(width, ALPHABET[0])
}

function sha256 (token: string): Buffer {
  return createHash('sha256').update(token).digest()
}
