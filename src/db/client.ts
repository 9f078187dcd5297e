import { link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { hostname, uptime } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { sql } from 'drizzle-orm'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres'
import pg from 'pg'
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
}

export async function openDatabase ({ url, dataDir, poolSize = 10 }: DatabaseOptions): Promise<DatabaseHandle> {
  return url ? openPostgres(url, poolSize) : openEmbedded(dataDir)
}

function openPostgres (url: string, poolSize: number): DatabaseHandle {
  const pool = new pg.Pool({ connectionString: url, max: poolSize, connectionTimeoutMillis: 5_000 })
  // an idle client that loses its server must not crash the process; the next query reports it
  pool.on('error', () => {})
  const db = drizzlePg(pool, { schema })
  return {
    db: db as unknown as Database,
    kind: 'postgres',
    async migrate () {
      const { migrate } = await import('drizzle-orm/node-postgres/migrator')
      const client = await pool.connect()
      try {
        // replicas starting together would race on the same DDL; a session lock serialises them
        await client.query('select pg_advisory_lock(7275871)')
        await migrate(drizzlePg(client, { schema }), { migrationsFolder: migrationsFolder() })
      } finally {
        await client.query('select pg_advisory_unlock(7275871)').catch(() => {})
        client.release()
      }
    },
    async ping () { await pool.query('select 1') },
    async close () { await pool.end() }
  }
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

interface LockHolder {
  pid: number
  hostname: string
}

/** The lock files this process holds: a second open of one of them here is refused like another process's. */
const heldLocks = new Set<string>()

/**
 * PGlite is PostgreSQL inside this process, and nothing in it stops a second process from opening the same folder:
 * the two overwrite each other's pages and committed rows vanish. A lock file beside the folder, created only if
 * absent, names the process that has it; one left by a process that is gone is taken over. Returns its release.
 */
async function lockFolder (folder: string): Promise<() => Promise<void>> {
  const file = `${folder}.lock`
  const me: LockHolder = { pid: process.pid, hostname: hostname() }
  // a few tries: each finds the lock free, held (refused) or stale (moved aside), unless others race for it too
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFile(file, JSON.stringify(me), { flag: 'wx' })
      heldLocks.add(file)
      return async () => {
        heldLocks.delete(file)
        await rm(file, { force: true })
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const found = await readLock(file)
    if (found === null) continue // released meanwhile
    const refusal = refusalFor(folder, file, found)
    if (refusal !== null) throw new Error(refusal)
    await moveStaleAside(file, found.content)
  }
  throw new Error(`${folder}: could not take ${file}, other processes keep taking it`)
}

interface FoundLock {
  content: string
  writtenAt: number
}

async function readLock (file: string): Promise<FoundLock | null> {
  try {
    const { mtimeMs } = await stat(file)
    return { content: await readFile(file, 'utf8'), writtenAt: mtimeMs }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
}

/** Why the lock is not ours to take, or null when it is stale: its process is gone, or so is the boot it ran in. */
function refusalFor (folder: string, file: string, { content, writtenAt }: FoundLock): string | null {
  const holder = parseHolder(content)
  // unreadable: a write cut short by a crash, since a process that lives on created its lock whole
  if (holder === null) return null
  if (holder.hostname !== hostname()) {
    return `${folder} is locked by process ${holder.pid} on host ${holder.hostname}: embedded PostgreSQL (PGlite) ` +
      `allows one process at a time. If no gateway runs there any more, remove ${file}`
  }
  if (holder.pid === process.pid) {
    // the same pid without the lock in hand: this process restarted (a container's process is pid 1 again)
    return heldLocks.has(file) ? `${folder} is already open in this process` : null
  }
  // written before this host last booted: whoever has that pid now is not the process that wrote it
  if (!alive(holder.pid) || writtenAt < Date.now() - uptime() * 1000) return null
  return `${folder} is in use by process ${holder.pid} on this host: embedded PostgreSQL (PGlite) allows one ` +
    'process at a time, and a second one loses committed writes. Stop the gateway before running npm run ' +
    'db:migrate or keys:rewrap, and run several replicas on PostgreSQL (DATABASE_URL). If that process is no ' +
    `gateway, remove ${file}`
}

function parseHolder (content: string): LockHolder | null {
  try {
    const { pid, hostname } = JSON.parse(content) as Partial<LockHolder>
    return Number.isInteger(pid) && typeof hostname === 'string' ? { pid: pid as number, hostname } : null
  } catch {
    return null
  }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' // alive, another user's
  }
}

/**
 * Renamed aside, not removed: another process may have taken the stale lock over since it was read, and its new lock
 * (found aside with other content) is put back, where the next try finds it held.
 */
async function moveStaleAside (file: string, stale: string): Promise<void> {
  const aside = `${file}.${process.pid}`
  try {
    await rename(file, aside)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  if (await readFile(aside, 'utf8') !== stale) await link(aside, file)
  await rm(aside, { force: true })
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
