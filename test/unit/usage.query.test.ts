import t, { type Test } from 'tap'
import { GatewayError } from '../../src/errors.js'
import { parseFormat, parseMonth, parseUsageQuery } from '../../src/usage/usage-query.js'

const NOW = Date.parse('2026-03-31T12:00:00Z')

/** Asserts a 400 that names `param`. */
function refuses (t: Test, fn: () => unknown, param: string, name: string) {
  try {
    fn()
    t.fail(`${name}: accepted`)
  } catch (err) {
    t.match(err, { statusCode: 400, param }, name)
  }
}

t.test('defaults: the 30 days before now, no grouping, JSON, 1000 records', async (t) => {
  t.same(parseUsageQuery({}, undefined, NOW), {
    from: { at: new Date('2026-03-01T12:00:00Z') }, to: { at: new Date(NOW) }, dimensions: [], format: 'json', limit: 1000
  })
  t.same(parseUsageQuery({ to: '2026-02-01' }, undefined, NOW).from, { at: new Date('2026-01-02T00:00:00Z') },
    'from defaults to 30 days before a day given as to')
})

t.test('days and instants with an offset', async (t) => {
  const query = parseUsageQuery({ from: '2026-02-28', to: '2026-03-01T10:00:00.5+02:00' }, undefined, NOW)
  t.same(query.from, { day: '2026-02-28' })
  t.same(query.to, { at: new Date('2026-03-01T08:00:00.500Z') })
  for (const bad of ['2026-02-29', '2026-13-01', '1999-01-01', '2026-03-01T10:00:00', '2026-03-01 10:00:00Z', 'now', '']) {
    refuses(t, () => parseUsageQuery({ from: bad }, undefined, NOW), 'from', bad)
  }
})

t.test('an instant on a day or at a time that does not exist is refused, not rolled forward', async (t) => {
  t.same(parseUsageQuery({ to: '2024-02-29T23:59:59.999+23:59' }, undefined, NOW).to,
    { at: new Date('2024-02-29T00:00:59.999Z') }, 'a leap day, the last second and the widest offset')
  for (const bad of ['2026-02-30T00:00:00Z', '2026-02-29T12:00Z', '2026-04-31T00:00:00Z', '2026-13-01T00:00:00Z',
    '2026-00-10T00:00:00Z', '2026-03-00T00:00:00Z', '1999-12-31T00:00:00Z', '2026-03-01T24:00:00Z',
    '2026-03-01T23:60:00Z', '2026-03-01T23:59:60Z', '2026-03-01T10:00:00+24:00', '2026-03-01T10:00:00+05:60']) {
    refuses(t, () => parseUsageQuery({ from: bad }, undefined, NOW), 'from', bad)
    refuses(t, () => parseUsageQuery({ to: bad }, undefined, NOW), 'to', bad)
  }
})

t.test('groupBy: one or more dimensions, comma-separated, repeats dropped', async (t) => {
  t.same(parseUsageQuery({ groupBy: 'day' }, undefined, NOW).dimensions, ['day'])
  t.same(parseUsageQuery({ groupBy: 'model,day,model' }, undefined, NOW).dimensions, ['model', 'day'])
  const error = t.throws(() => parseUsageQuery({ groupBy: 'day,workspace' }, undefined, NOW)) as unknown as GatewayError
  t.equal(error.param, 'groupBy')
  t.match(error.message, "groupBy must be one or more of day, model, operation, token (comma-separated), not 'workspace'")
})

t.test('format: the parameter wins over Accept', async (t) => {
  t.equal(parseFormat(undefined, undefined), 'json')
  t.equal(parseFormat(undefined, 'text/csv'), 'csv')
  t.equal(parseFormat(undefined, 'text/csv;q=0.9, application/json'), 'csv')
  t.equal(parseFormat(undefined, 'application/json, text/csv'), 'json')
  t.equal(parseFormat('json', 'text/csv'), 'json')
  t.equal(parseFormat('csv', 'application/json'), 'csv')
  refuses(t, () => parseFormat('CSV', undefined), 'format', 'CSV')
})

t.test('months', async (t) => {
  t.same(parseMonth('2026-03'), { id: '2026-03', firstDay: '2026-03-01', nextDay: '2026-04-01' })
  t.same(parseMonth('2026-12'), { id: '2026-12', firstDay: '2026-12-01', nextDay: '2027-01-01' })
  for (const bad of ['2026-00', '2026-13', '2026-3', '26-03', '2026-03-01', 'march', '1999-12']) {
    refuses(t, () => parseMonth(bad), 'month', bad)
  }
  t.match((t.throws(() => parseMonth('x'.repeat(100))) as unknown as Error).message, /^'x{40}…' is not a month/,
    'a long input is clipped in the message')
})
