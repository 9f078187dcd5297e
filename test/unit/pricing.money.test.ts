import t from 'tap'
import { formatMoney, parseMoney } from '../../src/pricing/money.js'

t.test('parseMoney: decimal strings to integer micro-units, exactly', async (t) => {
  t.equal(parseMoney('25.00'), 25_000_000)
  t.equal(parseMoney('25'), 25_000_000)
  t.equal(parseMoney('0.15'), 150_000)
  t.equal(parseMoney('0.1'), 100_000, 'no binary float on the way: 0.1 is exactly 100000')
  t.equal(parseMoney('0.000001'), 1)
  t.equal(parseMoney('0.00088'), 880)
  t.equal(parseMoney('0'), 0)
  t.equal(parseMoney('007.5'), 7_500_000)
  t.equal(parseMoney('9007199254.740991'), Number.MAX_SAFE_INTEGER)
})

t.test('parseMoney: refuses what is not a plain non-negative decimal of at most 6 decimals', async (t) => {
  const bad = ['', ' ', '-1', '-0.5', '+1', '1e3', '0x10', '.5', '5.', '1,5', '1.2.3', ' 1', '1 ', 'NaN',
    'Infinity', '0.0000001', '1.1234567', '٣', '9007199254.740992', '99999999999999999999']
  for (const text of bad) t.throws(() => parseMoney(text), RangeError, JSON.stringify(text))
  t.throws(() => parseMoney(1 as unknown as string), RangeError, 'a JSON number is not accepted')
  t.match((() => { try { parseMoney('1.1234567') } catch (err) { return (err as Error).message } })(), /6 decimals/)
  // the message quotes at most 40 characters of the input
  const long = '9'.repeat(1000)
  t.throws(() => parseMoney(`${long}x`), { message: /^'9{40}…'/ })
})

t.test('formatMoney: always six decimals, and it reads back to the same micro-units', async (t) => {
  t.equal(formatMoney(25_000_000), '25.000000')
  t.equal(formatMoney(150_000), '0.150000')
  t.equal(formatMoney(1), '0.000001')
  t.equal(formatMoney(0), '0.000000')
  t.equal(formatMoney(-500_000), '-0.500000')
  t.equal(formatMoney(123_456_789n), '123.456789')
  t.equal(formatMoney(Number.MAX_SAFE_INTEGER), '9007199254.740991')
  t.throws(() => formatMoney(1.5), RangeError)
  for (const micros of [0, 1, 999_999, 1_000_000, 1_000_001, 16_000_000, 2_630_000, 987_654_321]) {
    t.equal(parseMoney(formatMoney(micros)), micros)
  }
})
