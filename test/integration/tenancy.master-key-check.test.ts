// A replica whose TRAMONTANE_MASTER_KEYS lacks the master key that wrapped stored Mistral keys could open none of
// them: every call with them failed, long after the start. It refuses to start instead, naming the missing ids.
import t from 'tap'
import { generateMasterKey } from '../../src/tenancy/master-keys.js'
import { buildTestApp } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'

const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hi' }] }

// a database of its own, shared by the apps below: a key under ring A in the run's database would stop every other
// test file's app (ring `test`) from starting
t.test('a start whose ring lacks the master key of stored Mistral keys is refused; the ring of a rotation starts',
  async (t) => {
    const databaseUrl = await createScratchDatabase(t)
    const mistral = await startFakeMistral()
    t.teardown(() => mistral.close())
    const shared = { mistral }
    const ringA = generateMasterKey('ring-a')
    const ringB = generateMasterKey('ring-b')

    const first = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: ringA }, shared)
    const ws = await first.createWorkspace({ keys: ['default', 'backup'] })

    const refused = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: ringB }, shared)
      .then(() => null, (err: Error) => err.message)
    t.match(refused, /2 Mistral key\(s\) under master key 'ring-a'/)
    t.match(refused, /TRAMONTANE_MASTER_KEYS/, 'says what to set')
    for (const ring of [ringA, ringB]) t.notOk(refused?.includes(ring.split(':')[1]), 'no master key in the message')

    // step 1 of a rotation (docs/operations.md): the new key first, the old one still there
    const rotating = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: `${ringB},${ringA}` },
      shared)
    const res = await rotating.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat })
    t.equal(res.statusCode, 200)
    t.equal(mistral.received.at(-1)?.apiKey, ws.mistralKey)
  })

// replicas of an install from before trial keys got a random suffix each kept a master key named `trial`: the same
// id, other bytes. A check of ids alone let such a replica start, and each of its calls failed
t.test('a start whose ring has the id of stored keys\' master key but other bytes is refused', async (t) => {
  const databaseUrl = await createScratchDatabase(t)
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const shared = { mistral }
  const mine = generateMasterKey('trial')
  const theirs = generateMasterKey('trial')

  const first = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: mine }, shared)
  await first.createWorkspace({ keys: ['default', 'backup'] })

  const refused = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: theirs }, shared)
    .then(() => null, (err: Error) => err.message)
  t.match(refused, /2 Mistral key\(s\) under master key 'trial'/)
  t.match(refused, /TRAMONTANE_MASTER_KEYS/, 'says what to set')
  for (const ring of [mine, theirs]) t.notOk(refused?.includes(ring.split(':')[1]), 'no master key in the message')

  const again = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: mine }, shared)
  t.ok(again.app, 'the ring that wrapped them still starts')
})
