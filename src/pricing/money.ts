// Money is integer micro-units (1/1,000,000) of a currency everywhere: in storage, in Redis, in sums. Decimal strings
// exist only at the API edge, so that "0.1" is never a binary float on its way to a ledger (DESIGN.md: price book).

export const MICROS_PER_UNIT = 1_000_000

const DECIMAL = /^(\d+)(?:\.(\d+))?$/

/**
 * `"25.00"` → `25000000`. Accepts plain non-negative decimals with at most 6 decimals; rejects signs, exponents,
 * spaces, `.5` and `5.`, and amounts past `Number.MAX_SAFE_INTEGER` micro-units (about 9 billion units).
 * Throws a RangeError whose message says what is wrong (callers turn it into their 400).
 */
export function parseMoney (text: string): number {
  if (typeof text !== 'string') throw new RangeError('must be a decimal string such as "0.15"')
  const match = DECIMAL.exec(text)
  if (!match) throw new RangeError(`'${clip(text)}' is not a non-negative decimal such as "0.15"`)
  const [, whole, fraction = ''] = match
  if (fraction.length > 6) throw new RangeError(`'${clip(text)}' has more than 6 decimals (micro-units)`)
  // digit strings to BigInt: exact at any length, then one range check
  const micros = BigInt(whole) * BigInt(MICROS_PER_UNIT) + BigInt(fraction.padEnd(6, '0'))
  if (micros > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`'${clip(text)}' is too large`)
  return Number(micros)
}

/** `25000000` → `"25.000000"`: always six decimals, so that a string read back parses to the same micro-units. */
export function formatMoney (micros: number | bigint): string {
  if (typeof micros === 'number' && !Number.isSafeInteger(micros)) {
    throw new RangeError(`${micros} is not a whole number of micro-units`)
  }
  const value = BigInt(micros)
  const sign = value < 0n ? '-' : ''
  const abs = value < 0n ? -value : value
  const unit = BigInt(MICROS_PER_UNIT)
  return `${sign}${abs / unit}.${(abs % unit).toString().padStart(6, '0')}`
}

// an error message must not echo an arbitrarily long input
const clip = (text: string) => text.length > 40 ? `${text.slice(0, 40)}…` : text
