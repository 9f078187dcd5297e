import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import pg from 'pg'
import t from 'tap'
import { generateMasterKey } from '../../src/tenancy/master-keys.js'
import { buildTestApp } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'

const run = promisify(execFile)

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
  const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hi' }] }
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
