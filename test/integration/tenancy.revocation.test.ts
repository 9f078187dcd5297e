import { randomBytes } from 'node:crypto'
import t from 'tap'
import { TEST_ADMIN_TOKEN, gatewayEnv } from '../helpers/app.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'

t.test('a revoked token is refused by every replica within 1 s', async (t) => {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const env = {
    ...gatewayEnv(mistral.url),
    // the push must do the work, not the cache expiring
    TOKEN_CACHE_TTL_MS: '600000'
  }
  const [one, two] = await Promise.all([startGatewayProcess(t, env), startGatewayProcess(t, env)])
  const admin = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(one.url + path, {
      method,
      headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    return res.json() as Promise<any>
  }
  const slug = `rv-${randomBytes(5).toString('hex')}`
  await admin('POST', '/admin/v1/workspaces', { slug, name: 'Revocation' })
  await admin('POST', `/admin/v1/workspaces/${slug}/mistral-keys`, { name: 'default', key: 'sk-revocation-test' })
  const minted = await admin('POST', `/admin/v1/workspaces/${slug}/tokens`, { name: 'app' })
  const models = (url: string) => fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${minted.token}` } })

  // both replicas have the token in their caches
  for (const gateway of [one, two]) t.equal((await models(gateway.url)).status, 200)

  const revokedAt = Date.now()
  await admin('DELETE', `/admin/v1/workspaces/${slug}/tokens/${minted.id}`)
  const refusedAfter: number[] = []
  for (const gateway of [one, two]) {
    let status = 200
    while (status !== 401 && Date.now() - revokedAt < 5_000) {
      status = (await models(gateway.url)).status
      if (status !== 401) await new Promise((resolve) => setTimeout(resolve, 20))
    }
    refusedAfter.push(Date.now() - revokedAt)
    t.equal(status, 401)
  }
  t.ok(refusedAfter.every((ms) => ms < 1_000), `refused after ${refusedAfter.join(' ms, ')} ms`)
  const body = await (await models(two.url)).json() as any
  t.equal(body.code, 'invalid_token')
})
