import t from 'tap'
import { toCsv } from '../../src/usage/csv.js'

t.test('RFC 4180: header, CRLF, quoting only where needed', async (t) => {
  const csv = toCsv(['a', 'b', 'c'], [
    { a: 'plain', b: 1, c: true },
    { a: 'with, comma', b: 'say "hi"', c: 'two\nlines' },
    { a: null, b: undefined, c: 0 }
  ])
  t.equal(csv, 'a,b,c\r\nplain,1,true\r\n"with, comma","say ""hi""","two\nlines"\r\n,,0\r\n')
  t.equal(toCsv(['a'], []), 'a\r\n', 'no rows: the header alone')
})

t.test('text that a spreadsheet would run as a formula is defused; numbers, negative ones too, are not', async (t) => {
  const csv = toCsv(['v'], ['=1+1', '+cmd', '-2+3', '@SUM(A1)', '\tx', '-0.000083', '-12', '12.5', 'a=b']
    .map((v) => ({ v })))
  t.same(csv.trimEnd().split('\r\n').slice(1), ["'=1+1", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", '-0.000083', '-12',
    '12.5', 'a=b'])
})
