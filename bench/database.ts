import pg from 'pg'

/**
 * The bench's own database, created on first use: a benchmark writes tens of thousands of ledger rows and workspaces,
 * which must not land in a database that tests or an operator use.
 */
export async function ensureDatabase (databaseUrl: string): Promise<void> {
  const target = new URL(databaseUrl)
  const name = decodeURIComponent(target.pathname.slice(1))
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`BENCH_DATABASE_URL: "${name}" is not a plain database name`)
  const server = new URL(databaseUrl)
  server.pathname = '/postgres'
  const client = new pg.Client({ connectionString: server.toString() })
  await client.connect()
  try {
    const found = await client.query('select 1 from pg_database where datname = $1', [name])
    if (found.rowCount === 0) await client.query(`create database ${name}`)
  } finally {
    await client.end()
  }
}
