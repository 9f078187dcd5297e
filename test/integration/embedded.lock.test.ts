// Embedded PostgreSQL (PGlite) is PostgreSQL inside one process: a second process on the same folder overwrote the
// first one's pages and committed rows vanished. The folder is locked by whoever opens it.
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { openDatabase } from '../../src/db/client.js'

const run = promisify(execFile)

/** `npm run db:migrate` on embedded PostgreSQL in dataDir, as a process of its own: the lock is per process. */
function migrateIn (dataDir: string) {
  return run(process.execPath, ['--import', 'tsx', 'src/cli/migrate.ts'],
    { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', DATA_DIR: dataDir } })
}

/** A pid that no process on this host has any more: a child's, once it has exited and been reaped. */
async function deadPid (): Promise<number> {
  const child = execFile(process.execPath, ['-e', ''])
  await new Promise((resolve) => child.once('exit', resolve))
  return child.pid as number
}

// one folder for every test, opened in turn: a fresh one takes PGlite seconds to create
const dataDir = await mkdtemp(join(tmpdir(), 'tramontane-lock-'))
t.teardown(() => rm(dataDir, { recursive: true, force: true }))
const lockFile = join(dataDir, 'pglite.lock')

t.test('a second process is refused, naming the holder; once the first one closed, the folder opens', async (t) => {
  const first = await openDatabase({ dataDir })
  await first.migrate()
  const refused = await migrateIn(dataDir).then(() => null, (err: { stderr: string }) => err)
  t.ok(refused, 'db:migrate is refused while the folder is open')
  t.match(refused?.stderr, new RegExp(`in use by process ${process.pid} `))
  t.match(refused?.stderr, /stop the gateway/i, 'the CLI says what to do')
  t.same(JSON.parse(await readFile(lockFile, 'utf8')), { pid: process.pid, hostname: hostname() })

  await first.close()
  await t.rejects(stat(lockFile), { code: 'ENOENT' }, 'closing removes the lock')
  t.same(await readdir(dataDir), ['pglite'], 'and leaves no file it wrote the lock to first')
  const second = await openDatabase({ dataDir })
  await second.ping()
  await second.close()
})

t.test('a second open in the same process is refused too', async (t) => {
  const first = await openDatabase({ dataDir })
  t.teardown(() => first.close())
  await t.rejects(openDatabase({ dataDir }), { message: /already open in this process/ })
})

/** Opens the folder over a lock found there: it must then name this process, and be gone once closed. */
async function opensOver (t: Test, lock: string, writtenAt?: Date) {
  await writeFile(lockFile, lock)
  if (writtenAt) await utimes(lockFile, writtenAt, writtenAt)
  const database = await openDatabase({ dataDir })
  t.same(JSON.parse(await readFile(lockFile, 'utf8')), { pid: process.pid, hostname: hostname() }, 'taken over')
  await database.close()
  await t.rejects(stat(lockFile), { code: 'ENOENT' }, 'and released')
}

t.test('a lock left by a process that died is taken over', async (t) => {
  await opensOver(t, JSON.stringify({ pid: await deadPid(), hostname: hostname() }))
})

t.test('a lock naming this pid that this process does not hold is taken over: a restarted container has the same pid',
  async (t) => {
    await opensOver(t, JSON.stringify({ pid: process.pid, hostname: hostname() }))
  })

t.test('a lock written before this host booted is taken over, whoever has its pid now', async (t) => {
  await opensOver(t, JSON.stringify({ pid: process.ppid, hostname: hostname() }), new Date(0))
})

// a lock appears with its holder already in it (linked from a file written first): an empty one is no process's that
// could be checked, and an older gateway's writeFile showed its live lock empty for an instant. Taking that over put
// two processes on the folder
t.test('an empty lock written since this host booted is refused, naming the file', async (t) => {
  await writeFile(lockFile, '')
  const refused = await openDatabase({ dataDir }).then(() => null, (err: Error) => err.message)
  t.match(refused, /names no process/)
  t.ok(refused?.includes(lockFile), 'names the lock file')
  t.equal(await readFile(lockFile, 'utf8'), '', 'the lock is left as it was')
  await rm(lockFile)
})

t.test('an unreadable lock written before this host booted (cut short by a power loss) is taken over', async (t) => {
  await opensOver(t, '{"pid":', new Date(0))
})

t.test('a lock held on another host is refused, naming the host and the file to remove', async (t) => {
  await writeFile(lockFile, JSON.stringify({ pid: 4242, hostname: 'elsewhere.example' }))
  const refused = await openDatabase({ dataDir }).then(() => null, (err: Error) => err.message)
  t.match(refused, /process 4242 on host elsewhere\.example/)
  t.ok(refused?.includes(lockFile), 'names the lock file')
  t.same(JSON.parse(await readFile(lockFile, 'utf8')), { pid: 4242, hostname: 'elsewhere.example' },
    'the lock is left as it was')
})
