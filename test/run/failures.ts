// What failed in a tap run, read back from the TAP it left in .tap/test-results: test/run/tap.ts prints it last, where
// a CI log that keeps only its end still shows it (the TAP stream puts it among 7,000 passing lines).

const TEST_POINT = /^( *)(not ok|ok) \d+ - (.*?)(?: # (time=.*|SKIP.*|TODO.*))?$/
const SUBTEST = /^( *)# Subtest: (.*)$/
const TOP_PLAN = /^1\.\.\d+/

/**
 * The failing assertions of one file, each with the names of its subtests and its YAML block. A subtest's own
 * `not ok` (the line that closes its `# Subtest:` header, at the header's indent) only repeats its children's
 * failures and is left out; a file whose TAP never reached a plan of its own (it died on import, was killed by a timeout,
 * a hook failed) is reported as such.
 */
export function failuresOf (tap: string): string[] {
  const lines = tap.split('\n')
  const found: string[] = []
  const open: Array<{ indent: number, name: string, found: number }> = []
  for (let i = 0; i < lines.length; i++) {
    const header = SUBTEST.exec(lines[i])
    if (header) {
      open.push({ indent: header[1].length, name: header[2], found: found.length })
      continue
    }
    const point = TEST_POINT.exec(lines[i])
    if (!point) continue
    const indent = point[1].length
    while (open.length > 0 && open[open.length - 1].indent > indent) open.pop()
    const last = open[open.length - 1]
    if (last !== undefined && last.indent === indent && last.name === point[3]) {
      open.pop()
      if (found.length > last.found) continue
    }
    // a TODO's failure is expected: tap does not count it
    if (point[2] === 'ok' || point[4]?.startsWith('TODO')) continue
    const block = [lines[i].trim()]
    while (i + 1 < lines.length && (lines[i + 1].trim() === '' || lines[i + 1].startsWith(`${point[1]}  `))) {
      block.push(lines[++i].slice(indent))
    }
    const path = open.map((subtest) => subtest.name).join(' > ')
    found.push([path, ...block].filter(Boolean).join('\n').trimEnd())
  }
  if (!lines.some((line) => TOP_PLAN.test(line))) {
    found.push('the file ended before its plan: it died, was killed (a timeout) or a hook failed; its own output ' +
      'is in the log above')
  }
  return found
}
