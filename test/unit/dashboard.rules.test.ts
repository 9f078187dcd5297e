import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import t from 'tap'
import { DEPLOY } from '../helpers/dashboards.js'

// The alerts' behaviour on series as the gateway exposes them, run by Prometheus' own rule engine: the cases are in
// deploy/prometheus/tests (an operator who tunes a threshold runs them the same way)
const TESTS = join(DEPLOY, 'prometheus', 'tests', 'tramontane.test.yml')
const promtool = spawnSync('promtool', ['--version']).status === 0

t.test('promtool test rules: every alert fires when it should and not otherwise', {
  skip: promtool ? false : 'promtool is not installed (Debian: apt-get install prometheus; .ci/run does)'
}, async (t) => {
  const run = spawnSync('promtool', ['test', 'rules', TESTS], { encoding: 'utf8' })
  t.equal(run.status, 0, run.stdout + run.stderr)
  t.match(run.stdout, /SUCCESS/)
})
