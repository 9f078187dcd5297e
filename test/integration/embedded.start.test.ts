import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'

// The README's quick start: `npm start` with nothing configured runs on embedded PostgreSQL and trial secrets.
t.test('npm start with no DATABASE_URL answers /readyz and proxies a chat call', async (t) => {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const dataDir = await mkdtemp(join(tmpdir(), 'tramontane-embedded-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const gateway = await startGatewayProcess(t, { DATA_DIR: dataDir, MISTRAL_BASE_URL: mistral.url },
    { command: ['npm', 'start', '--silent'], readyTimeoutMs: 120_000 })

  const ready = await (await fetch(`${gateway.url}/readyz`)).json() as any
  t.same(ready, { status: 'ready', database: 'ok', redis: 'in-process' })

  const secretsFile = join(dataDir, 'secrets.json')
  t.equal((await stat(secretsFile)).mode & 0o777, 0o600, 'trial secrets are private to the user')
  const { adminToken } = JSON.parse(await readFile(secretsFile, 'utf8'))
  t.ok(gateway.output().includes(adminToken), 'the generated admin token is printed once on start')
  t.match(gateway.output(), /one replica only/i, 'the in-process mode says so')

  const admin = async (path: string, body: unknown) => {
    const res = await fetch(gateway.url + path, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(body)
    })
    return res.json() as Promise<any>
  }
  await admin('/admin/v1/workspaces', { slug: 'embedded', name: 'Embedded' })
  await admin('/admin/v1/workspaces/embedded/mistral-keys', { name: 'default', key: 'sk-embedded-key' })
  const { token } = await admin('/admin/v1/workspaces/embedded/tokens', { name: 'app' })

  const res = await fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hi' }] })
  })
  t.equal(res.status, 200)
  const completion = await res.json() as any
  t.equal(completion.object, 'chat.completion')
  t.equal(mistral.received.at(-1)?.apiKey, 'sk-embedded-key')

  // a second gateway on the same folder stops before it opens (and migrates) the database: two processes on one PGlite
  // folder lose committed rows
  // started from the build `npm start` just made: the same code, without compiling it again through tsx
  const second = await startGatewayProcess(t, { DATA_DIR: dataDir, MISTRAL_BASE_URL: mistral.url },
    { command: [process.execPath, 'dist/src/server.js'] })
    .then(() => null, (err: Error) => err.message)
  t.match(second, /is in use by process \d+ on this host/, 'a second start is refused, naming the holder')
  // draining on SIGTERM is proven on a bare node process (server.lifecycle.test.ts): npm in between relays signals
  // its own way
  await gateway.stop()
})
