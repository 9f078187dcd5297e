import { mkdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { sql } from 'drizzle-orm'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres'
import pg from 'pg'
import { MAX_TIMER_MS } from '../config.js'
import { lockFolder } from './embedded-lock.js'
import { LeasingPool } from './pool.js'
import * as schema from './schema.js'

export type Database = PgDatabase<PgQueryResultHKT, typeof schema>

export interface DatabaseHandle {
  db: Database
  kind: 'postgres' | 'embedded'
  /** Runs pending migrations; safe when several replicas start at once. */
  migrate (): Promise<void>
  ping (): Promise<void>
  close (): Promise<void>
}

export interface DatabaseOptions {
  url?: string
  dataDir: string
  poolSize?: number
  /**
   * On PostgreSQL, the longest one statement may take (PG_QUERY_TIMEOUT_MS); unset, as for the CLIs: no bound.
   * Migrations are never bounded by it. The embedded PGlite is not either: no other session or network to wait on.
   */
  queryTimeoutMs?: number
}

export async function openDatabase ({ url, dataDir, poolSize = 10, queryTimeoutMs }: DatabaseOptions):
Promise<DatabaseHandle> {
  return url ? openPostgres(url, poolSize, queryTimeoutMs) : openEmbedded(dataDir)
}

// past the timeout the server cancels the statement and its connection stays usable; the driver gives up this much
// later, on a connection that no longer answers at all (a network gone silent)
const SERVER_CANCEL_GRACE_MS = 1_000
const CONNECT_TIMEOUT_MS = 5_000

function openPostgres (url: string, poolSize: number, queryTimeoutMs: number | undefined): DatabaseHandle {
  const pool = new LeasingPool({
    connectionString: url,
    max: poolSize,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    query_timeout: queryTimeoutMs && Math.min(queryTimeoutMs + SERVER_CANCEL_GRACE_MS, MAX_TIMER_MS),
    // statement_timeout: the server cancels a statement that waits (on a lock another session holds, say), which frees
    // what it held. Set on each new connection before the pool hands it out (the pool awaits this), not as a startup
    // parameter, which a PgBouncer in front refuses
    onConnect: queryTimeoutMs === undefined
      ? undefined
      : async (client) => { await client.query(`set statement_timeout = ${queryTimeoutMs}`) }
  })
  // an idle client that loses its server must not crash the process; the next query reports it
  pool.on('error', () => {})
  const db = drizzlePg(pool, { schema })
  return {
    db: db as unknown as Database,
    kind: 'postgres',
    async migrate () {
      const { migrate } = await import('drizzle-orm/node-postgres/migrator')
      // a connection of its own, outside the pool and its timeouts: a migration may rewrite a large table (0007), and
      // a replica waits here while another one migrates
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS })
      // a connection lost between two statements fails the next one; unheard, its error event would end the process
      client.on('error', () => {})
      await client.connect()
      try {
        const { rows: [server] } = await client.query<{ num: string, version: string }>(
          "select current_setting('server_version_num') as num, current_setting('server_version') as version")
        checkServerVersion(server.num, server.version)
        // replicas starting together would race on the same DDL; a session lock serialises them
        await client.query('select pg_advisory_lock(7275871)')
        await migrate(drizzlePg(client, { schema }), { migrationsFolder: migrationsFolder() })
      } finally {
        await client.query('select pg_advisory_unlock(7275871)').catch(() => {})
        await client.end()
      }
    },
    async ping () { await pool.query('select 1') },
    async close () { await pool.end() }
  }
}

// migration 0003 declares UNIQUE NULLS NOT DISTINCT, which PostgreSQL parses from 15 on
const MIN_SERVER_VERSION_NUM = 150000

/**
 * Refuses a server older than PostgreSQL 15 before anything is migrated: it would stop at a syntax error in the middle
 * of the migrations. `num` is its `server_version_num` (140012 for 14.12), `version` its `server_version`, shown. The
 * embedded PGlite is not asked: its version comes with the dependency (0.5 reports 18.6).
 */
export function checkServerVersion (num: string, version: string): void {
  if (Number.parseInt(num, 10) >= MIN_SERVER_VERSION_NUM) return
  throw new Error(`PostgreSQL ${version} is too old: tramontane needs PostgreSQL 15 or later (its migrations use ` +
    'UNIQUE NULLS NOT DISTINCT). Upgrade the server DATABASE_URL points to, or leave DATABASE_URL unset to run on ' +
    'the embedded PostgreSQL')
}

async function openEmbedded (dataDir: string): Promise<DatabaseHandle> {
  const folder = resolve(dataDir, 'pglite')
  await mkdir(folder, { recursive: true })
  const unlock = await lockFolder(folder)
  // imported here, not at the top: drizzle-orm/pglite loads PGlite, megabytes a postgres-backed gateway never uses
  const { PGlite } = await import('@electric-sql/pglite')
  const { drizzle: drizzlePglite } = await import('drizzle-orm/pglite')
  const client = new PGlite(folder)
  const db = drizzlePglite(client, { schema })
  return {
    db: db as unknown as Database,
    kind: 'embedded',
    async migrate () {
      const { migrate } = await import('drizzle-orm/pglite/migrator')
      await migrate(db, { migrationsFolder: migrationsFolder() })
    },
    async ping () { await db.execute(sql`select 1`) },
    async close () {
      try {
        await client.close()
      } finally {
        await unlock()
      }
    }
  }
}

/**
 * The committed drizzle-kit output, found from src/ (tsx) and from dist/src/ (built) alike. A file path, not the URL's
 * percent-encoded one: a checkout under `My Projects/` must find it too.
 */
export function migrationsFolder (moduleUrl = import.meta.url): string {
  const here = fileURLToPath(new URL('.', moduleUrl))
  const root = here.includes('/dist/') ? resolve(here, '../../..') : resolve(here, '../..')
  return join(root, 'migrations')
}
