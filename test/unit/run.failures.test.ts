// test/run/failures.ts: what `npm test` prints last after a failed run, from the TAP tap 21 writes for a file.
import t from 'tap'
import { failuresOf } from '../run/failures.js'

// tap 21's TAP for a file of three subtests: a planned one whose first assertion fails, a nested failure, and one that
// passes; between the first two, a line the test printed, indented by 2 (no test point, no subtest)
const TAP = `TAP version 14
# Subtest: planned
    1..2
    not ok 1 - first fails
      ---
      compare: ===
      at:
        fileName: test/unit/zz-a.test.ts
        lineNumber: 4
        columnNumber: 5
        typeName: Test
      diff: |
        --- expected
        +++ actual
        @@ -1,1 +1,1 @@
        -2
        +1
      ...
    
    ok 2 - second passes
not ok 1 - planned # time=19.606ms
  ---
  at:
    fileName: test/unit/zz-a.test.ts
    lineNumber: 2
    columnNumber: 3
    isToplevel: true
  ...

  an odd line
# Subtest: outer
    # Subtest: inner
        ok 1 - fine
        not ok 2 - inner fails
          ---
          at:
            fileName: test/unit/zz-a.test.ts
            lineNumber: 11
            columnNumber: 7
            typeName: Test
          ...
        
        1..2
    not ok 1 - inner # time=5.087ms
      ---
      at:
        fileName: test/unit/zz-a.test.ts
        lineNumber: 9
        columnNumber: 5
        typeName: Test
      ...
    
    ok 2 - outer fine
    1..2
not ok 2 - outer # time=9.468ms
  ---
  at:
    fileName: test/unit/zz-a.test.ts
    lineNumber: 7
    columnNumber: 3
    isToplevel: true
  ...

# Subtest: all pass
    ok 1 - should be equal
    1..1
ok 3 - all pass # time=0.652ms

1..3
# time=44.506ms
`

t.test('each failing assertion once, with its subtests\' names and its diagnostics; never a subtest that repeats it',
  async (t) => {
    const failures = failuresOf(TAP)
    t.equal(failures.length, 2, 'two failures')
    const [planned, nested] = failures
    t.match(planned, /^planned\nnot ok 1 - first fails\n  ---\n  compare: ===/, 'the planned subtest\'s assertion')
    t.match(planned, /-2\n    \+1/, 'with its diff')
    t.match(nested, /^outer > inner\nnot ok 2 - inner fails\n/, 'the nested one, by its path')
    t.match(nested, /lineNumber: 11/, 'with where it is')
    t.notMatch(failures.join('\n'), /not ok \d+ - (inner|outer|planned) # time/, 'no subtest\'s own not ok')
  })

t.test('a subtest that fails without a failing assertion of its own is reported', async (t) => {
  const tap = ['TAP version 14', '# Subtest: thrown', '    1..0', 'not ok 1 - thrown # time=1ms', '  ---',
    '  error: boom', '  ...', '', '1..1', ''].join('\n')
  t.same(failuresOf(tap), ['not ok 1 - thrown # time=1ms\n  ---\n  error: boom\n  ...'])
})

t.test('a file cut short (it died, or was killed by its timeout) is reported as such', async (t) => {
  const cut = TAP.slice(0, TAP.indexOf('# Subtest: outer'))
  const failures = failuresOf(cut)
  t.equal(failures.length, 2)
  t.match(failures[1], /ended before its plan/)
  t.match(failuresOf('TAP version 14\n# Subtest: all pass\n    ok 1 - fine\n'), [/^the file ended before its plan/],
    'even with no failing assertion in it')
})

t.test('a file that passed has nothing to report, a failing TODO included', async (t) => {
  t.same(failuresOf('TAP version 14\nnot ok 1 - later # TODO not yet\n1..1\n'), [])
  t.same(failuresOf(TAP.slice(TAP.indexOf('# Subtest: all pass')).replace(/^ok 3/m, 'ok 1').replace('1..3', '1..1')), [])
})
