// `npm test`: tap with the arguments given (none: the whole suite), then, when it failed, every failing assertion again
// with its diagnostics, last: a CI log cut to its last lines still names what failed.
import { spawn } from 'node:child_process'
import { constants as osConstants } from 'node:os'
import { readdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { failuresOf } from './failures.js'

const RESULTS = '.tap/test-results'

// tap rewrites the results of the files it runs and leaves the others': an earlier run's would be reported as this one's
await rm(RESULTS, { recursive: true, force: true })
const tap = spawn(join('node_modules', '.bin', 'tap'), process.argv.slice(2), { stdio: 'inherit' })
// a signal meant for the run (a CI job cancelled) reaches tap, which stops its test processes and cleans up. Not
// SIGINT: a terminal's Ctrl-C reaches tap itself already, and a second one would cut its summary short
const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP']
const forward = (signal: NodeJS.Signals) => tap.kill(signal)
for (const signal of signals) process.on(signal, forward)
const code = await new Promise<number>((resolve) => {
  tap.once('error', (err) => {
    console.error(`tap could not be started: ${err.message}`)
    resolve(1)
  })
  tap.once('exit', (status, signal) => resolve(status ?? (signal ? 128 + osConstants.signals[signal] : 0)))
})
for (const signal of signals) process.off(signal, forward)
if (code !== 0) {
  let count = 0
  try {
    const files = (await readdir(RESULTS, { recursive: true })).filter((file) => file.endsWith('.tap')).sort()
    for (const file of files) {
      for (const failure of failuresOf(await readFile(join(RESULTS, file), 'utf8'))) {
        count++
        console.log(`\n# ${file.slice(0, -'.tap'.length)}\n${failure}`)
      }
    }
  } catch (err) {
    console.log(`# ${RESULTS} could not be read: ${(err as Error).message}`)
  }
  console.log(count > 0
    ? `\n# ${count} failure(s), listed above`
    : '\n# tap failed, but no test file recorded a failure: the cause is in its own output above')
}
process.exitCode = code
