import { readFileSync } from 'node:fs'
import t from 'tap'
import { parseAllDocuments } from 'yaml'

// The Kubernetes example is what operators copy: what it must hold for the gateway to start, write its spool and stop
// without losing usage (docs/operations.md).
const documents = parseAllDocuments(readFileSync('deploy/kubernetes/tramontane.yaml', 'utf8')).map((doc) => doc.toJS())
const deployment = documents.find((doc) => doc?.kind === 'Deployment')
const pod = deployment.spec.template.spec
const [gateway] = pod.containers
const env = Object.fromEntries(gateway.env.map((entry: { name: string, value: string }) => [entry.name, entry.value]))

t.test('a start with long migrations is waited for, not killed', async (t) => {
  const probe = gateway.startupProbe
  t.ok(probe, 'a startup probe holds back liveness until the gateway listens')
  t.ok(probe.periodSeconds * probe.failureThreshold >= 300, 'for at least 5 minutes of migrations')
})

t.test('the spool volume is writable by the image\'s user', async (t) => {
  t.equal(pod.securityContext?.runAsUser, 1000, 'the Dockerfile\'s USER node')
  t.equal(pod.securityContext?.fsGroup, 1000, 'the volume\'s group')
})

t.test('the kill comes after the delay, the grace and the last usage write', async (t) => {
  const needed = (Number(env.SHUTDOWN_DELAY_MS ?? 0) + Number(env.SHUTDOWN_GRACE_MS ?? 30_000)) / 1000 + 10
  t.ok(pod.terminationGracePeriodSeconds >= needed,
    `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} ≥ ${needed}`)
})
