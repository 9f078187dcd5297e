import pg from 'pg'

/** The server the suite creates its databases on; its own database is only used to connect. */
export const TEST_POSTGRES_URL = process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

/**
 * The suite's database: created empty before every run (test/run/before.ts) and dropped after it, so that a run never
 * sees rows left by an earlier one (the machine's `test` database may hold anything). It is named after the tap runner
 * (the parent of the before script and of every test process), so that two runs side by side never share one. A test
 * file started without tap uses the `test` database itself; TEST_DATABASE_URL, when set, is used as it is and never
 * dropped.
 */
const RUN_PREFIX = 'tmt_run_'
const underTap = process.env.TAP_BEFORE !== undefined
export const RUN_DATABASE_NAME = `${RUN_PREFIX}${process.ppid}`

export function runDatabaseUrl (): string {
  if (process.env.TEST_DATABASE_URL !== undefined) return process.env.TEST_DATABASE_URL
  if (!underTap) return TEST_POSTGRES_URL
  const url = new URL(TEST_POSTGRES_URL)
  url.pathname = `/${RUN_DATABASE_NAME}`
  return url.toString()
}

async function onServer (work: (client: pg.Client) => Promise<void>): Promise<void> {
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL })
  await client.connect()
  try {
    await work(client)
  } finally {
    await client.end()
  }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

export async function recreateRunDatabase (): Promise<void> {
  if (process.env.TEST_DATABASE_URL !== undefined) return
  await onServer(async (client) => {
    // what runs that were killed left behind (their after script never ran)
    const { rows } = await client.query<{ datname: string }>(
      `select datname from pg_database where datname like '${RUN_PREFIX.replaceAll('_', '\\_')}%'`)
    for (const { datname } of rows) {
      const pid = Number(datname.slice(RUN_PREFIX.length))
      if (datname === RUN_DATABASE_NAME || !alive(pid)) await client.query(`drop database if exists ${datname} with (force)`)
    }
    await client.query(`create database ${RUN_DATABASE_NAME}`)
  })
}

export async function dropRunDatabase (): Promise<void> {
  if (process.env.TEST_DATABASE_URL !== undefined) return
  await onServer(async (client) => { await client.query(`drop database if exists ${RUN_DATABASE_NAME} with (force)`) })
}
