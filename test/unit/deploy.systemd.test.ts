import { readFileSync } from 'node:fs'
import t from 'tap'
import { DEPLOY } from '../helpers/dashboards.js'

// deploy/systemd/tramontane.service: a metrics port has no credential, so the example never opens one on a public
// interface (HOST defaults to 0.0.0.0)
t.test('the systemd example serves /metrics on loopback only', async (t) => {
  const unit = readFileSync(`${DEPLOY}/systemd/tramontane.service`, 'utf8')
  const environment = Object.fromEntries([...unit.matchAll(/^Environment=([A-Z_]+)=(.*)$/gm)].map((m) => [m[1], m[2]]))
  t.ok(environment.METRICS_PORT, 'it sets METRICS_PORT, so that /metrics is not on the public port')
  t.equal(environment.METRICS_HOST, '127.0.0.1', 'and puts that port on loopback')
})
