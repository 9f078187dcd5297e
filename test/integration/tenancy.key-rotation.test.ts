import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import pg from 'pg'
import t from 'tap'
import { createLocalBus } from '../../src/tenancy/invalidation-bus.js'
import { createKeyCipher } from '../../src/tenancy/key-crypto.js'
import { generateMasterKey, parseMasterKeys } from '../../src/tenancy/master-keys.js'
import { createMistralKeyStore } from '../../src/tenancy/mistral-keys.js'
import { buildTestApp, TEST_MASTER_KEYS, TEST_REDIS_URL } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

const run = promisify(execFile)
const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hi' }] }

// docs/operations.md: put the new master key first, re-wrap, drop the old one; traffic never stops.
t.test('master key rotation works online', async (t) => {
  const databaseUrl = await createScratchDatabase(t)
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const oldKey = generateMasterKey('old')
  const newKey = generateMasterKey('new')
  const shared = { mistral }

  const before = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: oldKey }, shared)
  const ws = await before.createWorkspace({ keys: ['default', 'backup'] })
  const masterKeyIds = async () => {
    const client = new pg.Client({ connectionString: databaseUrl })
    await client.connect()
    const { rows } = await client.query('select distinct master_key_id from mistral_keys order by 1')
    await client.end()
    return rows.map((row) => row.master_key_id)
  }
  t.same(await masterKeyIds(), ['old'])

  // step 1: the new key first, the old one still there (rolled out to every replica), and calls keep flowing
  const during = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: `${newKey},${oldKey}` }, shared)
  let stop = false
  const statuses: number[] = []
  const traffic = (async () => {
    while (!stop) {
      const res = await during.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat })
      statuses.push(res.statusCode)
    }
  })()

  // step 2: re-wrap, as an operator would run it
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli/rewrap-keys.ts'], {
    env: { ...process.env, DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: `${newKey},${oldKey}`, TRAMONTANE_ADMIN_TOKEN: 'x'.repeat(32) }
  })
  t.match(stdout, /re-wrapped 2 Mistral key\(s\) under master key 'new'/)
  t.same(await masterKeyIds(), ['new'])

  // step 3: the old key is dropped; a fresh replica opens every key with the new one alone
  const after = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: newKey }, shared)
  for (const keyName of ['default', 'backup']) {
    const res = await after.app.inject({
      method: 'POST', url: '/v1/chat/completions', headers: { ...ws.headers, 'x-tramontane-key': keyName }, payload: chat
    })
    t.equal(res.statusCode, 200, keyName)
    t.equal(mistral.received.at(-1)?.apiKey, keyName === 'default' ? ws.mistralKey : `${ws.mistralKey}-${keyName}`)
  }
  stop = true
  await traffic
  t.ok(statuses.length >= 4, `${statuses.length} calls during the rotation`)
  t.ok(statuses.every((status) => status === 200), 'no call failed during the rotation')

  // a second run has nothing left to do
  const again = await run(process.execPath, ['--import', 'tsx', 'src/cli/rewrap-keys.ts'], {
    env: { ...process.env, DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: newKey, TRAMONTANE_ADMIN_TOKEN: 'x'.repeat(32) }
  })
  t.match(again.stdout, /re-wrapped 0 Mistral key/)
})

t.test('a key replaced while its replica is cut from Redis reaches the other replicas once that link is back',
  async (t) => {
    const redisUrl = new URL(TEST_REDIS_URL)
    const proxy = await startTcpProxy(Number(redisUrl.port || 6379), redisUrl.hostname)
    t.teardown(() => proxy.close())
    const mistral = await startFakeMistral()
    t.teardown(() => mistral.close())
    const a = await buildTestApp(t, { REDIS_URL: `redis://127.0.0.1:${proxy.port}` }, { mistral })
    const b = await buildTestApp(t, {}, { mistral })
    const ws = await a.createWorkspace()
    const keySentByB = async () => {
      const res = await b.app.inject({
        method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat
      })
      t.equal(res.statusCode, 200)
      return mistral.received.at(-1)?.apiKey
    }
    t.equal(await keySentByB(), ws.mistralKey, 'B has the key in its cache')

    proxy.cut()
    const rotated = `sk-rotated-${randomBytes(8).toString('hex')}`
    const replaced = await a.admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key: rotated })
    t.equal(replaced.statusCode, 200, 'A replaces the key without Redis')
    t.equal(await keySentByB(), ws.mistralKey, 'B has not heard of it: A could not tell')
    proxy.restore()

    const restoredAt = Date.now()
    let sent: string | undefined = ws.mistralKey
    while (sent !== rotated && Date.now() - restoredAt < 5_000) {
      await sleep(100)
      sent = await keySentByB()
    }
    t.equal(sent, rotated, `B calls with the new key ${Date.now() - restoredAt} ms after A's link is back`)
  })

t.test('a replica that missed every message about a key reads it again past its cache\'s time limit', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const { db } = app.database
  const cipher = createKeyCipher(parseMasterKeys(TEST_MASTER_KEYS))
  // two replicas whose buses never meet: every message one sends is lost to the other
  const [one, other] = [createLocalBus(), createLocalBus()]
    .map((bus) => createMistralKeyStore({ db, cipher, bus, cacheTtlMs: 200 }))
  t.equal((await other.resolve(ws.id, 'default'))?.secret, ws.mistralKey)
  t.same(await other.names(ws.id), ['default'])

  const rotated = `sk-rotated-${randomBytes(8).toString('hex')}`
  const unaudited = async () => {} // the store's caches are tested here, not the admin API's audit rows
  await one.replace(ws.id, 'default', rotated, unaudited)
  await one.add(ws.id, 'backup', `${rotated}-backup`, unaudited)
  t.equal((await other.resolve(ws.id, 'default'))?.secret, ws.mistralKey, 'within the limit, the cached key')
  await sleep(250)
  t.equal((await other.resolve(ws.id, 'default'))?.secret, ws.mistralKey, 'past it, the cached key while it is read')
  t.same(await other.names(ws.id), ['default'], 'and the cached names')
  const readAgainBy = Date.now() + 2_000
  let secret: string | undefined
  let names: string[] = []
  while ((secret !== rotated || names.length < 2) && Date.now() < readAgainBy) {
    await sleep(20)
    secret = (await other.resolve(ws.id, 'default'))?.secret
    names = await other.names(ws.id)
  }
  t.equal(secret, rotated, 'then the key as it is now')
  t.same(names, ['default', 'backup'], 'and the names as they are now')
  t.equal(mistral.received.length, 0)
})

t.test('past its cache\'s time limit a key is answered at once from the cache while PostgreSQL does not answer',
  async (t) => {
    const databaseUrl = await createScratchDatabase(t)
    const { app, createWorkspace } = await buildTestApp(t, { DATABASE_URL: databaseUrl })
    const ws = await createWorkspace()
    const cipher = createKeyCipher(parseMasterKeys(TEST_MASTER_KEYS))
    const [one, other] = [createLocalBus(), createLocalBus()]
      .map((bus) => createMistralKeyStore({ db: app.database.db, cipher, bus, cacheTtlMs: 200 }))
    t.equal((await other.resolve(ws.id, 'default'))?.secret, ws.mistralKey)
    const rotated = `sk-rotated-${randomBytes(8).toString('hex')}`
    await one.replace(ws.id, 'default', rotated, async () => {})

    // every read of the keys waits behind this lock until it is released: PostgreSQL hangs
    const locker = new pg.Client({ connectionString: databaseUrl })
    await locker.connect()
    t.teardown(() => locker.end())
    await locker.query('begin')
    await locker.query('lock table mistral_keys in access exclusive mode')
    await sleep(250)
    const secretWithin100Ms = () => Promise.race([other.resolve(ws.id, 'default').then((key) => key?.secret),
      sleep(100).then(() => 'no answer within 100 ms')])
    t.equal(await secretWithin100Ms(), ws.mistralKey, 'past the limit, the cached key at once')
    t.equal(await secretWithin100Ms(), ws.mistralKey, 'again, while the read that replaces it waits')

    await locker.query('commit')
    const releasedAt = Date.now()
    let secret: string | undefined = ws.mistralKey
    while (secret !== rotated && Date.now() - releasedAt < 2_000) {
      await sleep(20)
      secret = (await other.resolve(ws.id, 'default'))?.secret
    }
    t.equal(secret, rotated, 'the key as it is now, once the read went through')
  })
