// `npm run keys:rewrap` as an operator runs it: a child process, with only the environment given here
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import t from 'tap'
import { generateMasterKey } from '../../src/tenancy/master-keys.js'
import { buildTestApp } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'

const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hi' }] }
const STACK_LINE = /^\s+at /m

interface Tap {
  teardown (fn: () => unknown): void
}

/** The CLI's exit code and output; the parent's own database, secrets and data folder are not passed on. */
async function rewrap (env: Record<string, string>) {
  const inherited = Object.fromEntries(Object.entries(process.env)
    .filter(([name]) => !name.startsWith('TRAMONTANE_') && name !== 'DATABASE_URL' && name !== 'DATA_DIR'))
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath,
      ['--import', 'tsx', 'src/cli/rewrap-keys.ts'], { env: { ...inherited, ...env } })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const { code, stdout, stderr } = err as { code: number, stdout: string, stderr: string }
    return { code, stdout, stderr }
  }
}

async function tempDataDir (t: Tap): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tmt-rewrap-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

// a ring with the old key's id but other bytes (a `trial` key generated anew elsewhere): unwrapping threw, the CLI died
// with a stack trace mid-loop, the rows before moved, the rest not, and no summary said which
t.test('keys whose master key is in the ring under other bytes are left and counted; the others are re-wrapped',
  async (t) => {
    const databaseUrl = await createScratchDatabase(t)
    const dataDir = await tempDataDir(t)
    const mistral = await startFakeMistral()
    t.teardown(() => mistral.close())
    const shared = { mistral }
    const oldKey = generateMasterKey('old')
    const otherOld = generateMasterKey('old')
    const midKey = generateMasterKey('mid')
    const newKey = generateMasterKey('new')

    const first = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: oldKey }, shared)
    const underOld = await first.createWorkspace({ keys: ['default', 'backup'] })
    const second = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: `${midKey},${oldKey}` },
      shared)
    await second.createWorkspace()

    const result = await rewrap({
      DATABASE_URL: databaseUrl, DATA_DIR: dataDir, TRAMONTANE_MASTER_KEYS: `${newKey},${otherOld},${midKey}`
    })
    t.equal(result.code, 1)
    t.match(result.stdout, /re-wrapped 1 Mistral key\(s\) under master key 'new'/, 'the key under mid moved')
    t.match(result.stderr, /2 Mistral key\(s\) under master key 'old' do not open with it/)
    t.notMatch(result.stderr, STACK_LINE, 'no stack trace')
    for (const key of [oldKey, otherOld, midKey, newKey]) {
      t.notOk(result.stderr.includes(key.split(':')[1]), 'no master key in the output')
    }

    const client = new pg.Client({ connectionString: databaseUrl })
    await client.connect()
    const { rows } = await client.query(
      'select master_key_id, count(*)::int as keys from mistral_keys group by 1 order by 1')
    await client.end()
    t.same(rows, [{ master_key_id: 'new', keys: 1 }, { master_key_id: 'old', keys: 2 }])

    const right = await buildTestApp(t, { DATABASE_URL: databaseUrl, TRAMONTANE_MASTER_KEYS: `${newKey},${oldKey}` },
      shared)
    for (const keyName of ['default', 'backup']) {
      const headers = { ...underOld.headers, 'x-tramontane-key': keyName }
      const res = await right.app.inject({ method: 'POST', url: '/v1/chat/completions', headers, payload: chat })
      t.equal(res.statusCode, 200, `${keyName} opens under the right 'old'`)
      t.equal(mistral.received.at(-1)?.apiKey,
        keyName === 'default' ? underOld.mistralKey : `${underOld.mistralKey}-backup`)
    }
  })

// with DATABASE_URL it ran resolveTrialSecrets: a shell without the secrets generated an admin token and a trial master
// key into the data folder, and re-wrapped every stored key under that one-host key
t.test('on PostgreSQL it needs TRAMONTANE_MASTER_KEYS and generates no secret', async (t) => {
  const databaseUrl = await createScratchDatabase(t)
  const dataDir = await tempDataDir(t)
  const result = await rewrap({ DATABASE_URL: databaseUrl, DATA_DIR: dataDir })
  t.equal(result.code, 1)
  t.match(result.stderr, /TRAMONTANE_MASTER_KEYS is not set/)
  t.notMatch(result.stderr, STACK_LINE, 'no stack trace')
  t.same(await readdir(dataDir), [], 'no secrets.json')
})

t.test('on embedded PostgreSQL it reads the trial master key from secrets.json and never writes one', async (t) => {
  const dataDir = await tempDataDir(t)
  const none = await rewrap({ DATA_DIR: dataDir })
  t.equal(none.code, 1, 'no master key anywhere')
  t.match(none.stderr, /TRAMONTANE_MASTER_KEYS is not set/)
  t.same(await readdir(dataDir), [], 'no secrets.json, no database')

  const file = join(dataDir, 'secrets.json')
  const stored = JSON.stringify({ masterKeys: generateMasterKey('trial-0a1b2c3d') }) + '\n'
  await writeFile(file, stored, { mode: 0o600 })
  const result = await rewrap({ DATA_DIR: dataDir })
  t.equal(result.code, 0, result.stderr)
  t.match(result.stdout, /re-wrapped 0 Mistral key\(s\) under master key 'trial-0a1b2c3d'/)
  t.equal(await readFile(file, 'utf8'), stored, 'secrets.json as it was: no admin token added')
})
