// After a failed run: every failing assertion again, with its diagnostics, at the very end of the output. A CI log
// that keeps only its last lines still names what failed (the TAP stream puts it among 7,000 passing lines).
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'

const RESULTS = '.tap/test-results'
const NOT_OK = /^(\s*)not ok \d+ - /
const PLAN = /^\s*1\.\.\d+/

async function * tapFiles (dir: string): AsyncGenerator<string> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) yield * tapFiles(path)
    else if (entry.name.endsWith('.tap')) yield path
  }
}

/** The failing assertions of one file: each `not ok` line with its YAML block, without the subtests that only fail
 * because of them (a `not ok` right after a plan closes a subtest). */
function failures (lines: string[]): string[] {
  const found: string[] = []
  const subtests: string[] = []
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]
    const indent = line.length - line.trimStart().length
    subtests.length = Math.min(subtests.length, indent / 4)
    if (line.trimStart().startsWith('# Subtest: ')) subtests[indent / 4] = line.trim().slice('# Subtest: '.length)
    const match = NOT_OK.exec(line)
    if (match === null) continue
    let previous = i - 1
    while (previous >= 0 && lines[previous].trim() === '') previous--
    if (previous >= 0 && PLAN.test(lines[previous])) continue
    const block = [line.trim()]
    while (i + 1 < lines.length && (lines[i + 1].trim() === '' || lines[i + 1].startsWith(`${match[1]}  `))) {
      block.push(lines[++i].slice(match[1].length))
    }
    found.push([subtests.filter(Boolean).join(' > '), ...block].filter(Boolean).join('\n'))
  }
  return found
}

let count = 0
try {
  for await (const file of tapFiles(RESULTS)) {
    for (const failure of failures((await readFile(file, 'utf8')).split('\n'))) {
      count++
      console.log(`\n# ${file.slice(RESULTS.length + 1, -'.tap'.length)}\n${failure.trimEnd()}`)
    }
  }
} catch (error) {
  console.log(`# no test results to read in ${RESULTS}: ${(error as Error).message}`)
}
console.log(`\n# ${count} failing assertion(s), listed above`)
process.exitCode = 1
