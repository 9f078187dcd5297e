import { randomUUID } from 'node:crypto'
import { link, open, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { hostname, uptime } from 'node:os'

interface LockHolder {
  pid: number
  hostname: string
}

/** The lock files this process holds or is taking: a second open of one of them here is refused. */
const heldLocks = new Set<string>()

/**
 * PGlite is PostgreSQL inside this process, and nothing in it stops a second process from opening the same folder:
 * the two overwrite each other's pages and committed rows vanish. A lock file beside the folder names the process
 * that has it; one left by a process that is gone is taken over. Returns its release.
 */
export async function lockFolder (folder: string): Promise<() => Promise<void>> {
  const file = `${folder}.lock`
  // claimed before the first await: two opens in this process at once cannot both find the lock theirs
  if (heldLocks.has(file)) throw new Error(`${folder} is already open in this process`)
  heldLocks.add(file)
  try {
    await takeLock(folder, file)
  } catch (err) {
    heldLocks.delete(file)
    throw err
  }
  return async () => {
    heldLocks.delete(file)
    await rm(file, { force: true })
  }
}

async function takeLock (folder: string, file: string): Promise<void> {
  // a few tries: each finds the lock free, held (refused) or stale (moved aside), unless others race for it too
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await createLock(file)) return
    const found = await readLock(file)
    if (found === null) continue // released meanwhile
    const refusal = refusalFor(folder, file, found)
    if (refusal !== null) throw new Error(refusal)
    await moveStaleAside(file, found.content)
  }
  throw new Error(`${folder}: could not take ${file}, other processes keep taking it`)
}

/**
 * Whether the lock was free and is now this process's. Written to a file of its own first, then linked: a lock created
 * and then written (open with O_EXCL, write) can be read empty in between, and judged stale while its process lives.
 */
async function createLock (file: string): Promise<boolean> {
  const draft = `${file}.${randomUUID()}`
  const me: LockHolder = { pid: process.pid, hostname: hostname() }
  try {
    await writeFile(draft, JSON.stringify(me), { flag: 'wx' })
    await link(draft, file)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  } finally {
    await rm(draft, { force: true })
  }
}

interface FoundLock {
  content: string
  writtenAt: number
}

/** Content and time from one open file: the lock may be replaced between two lookups by name. */
async function readLock (file: string): Promise<FoundLock | null> {
  let handle
  try {
    handle = await open(file, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
  try {
    const { mtimeMs } = await handle.stat()
    return { content: await handle.readFile('utf8'), writtenAt: mtimeMs }
  } finally {
    await handle.close()
  }
}

/** Why the lock is not ours to take, or null when it is stale: its process is gone, or so is the boot it ran in. */
function refusalFor (folder: string, file: string, { content, writtenAt }: FoundLock): string | null {
  const beforeBoot = writtenAt < Date.now() - uptime() * 1000
  const holder = parseHolder(content)
  if (holder === null) {
    // no lock is ever seen half-written (createLock), so this is no process's that could be checked; only a power
    // loss, which a boot follows, or something else writing there leaves one
    return beforeBoot ? null : `${folder}: its lock ${file} names no process (it is empty or unreadable), so whether ` +
      `a gateway has the folder open cannot be checked. If none does, remove ${file}`
  }
  if (holder.hostname !== hostname()) {
    return `${folder} is locked by process ${holder.pid} on host ${holder.hostname}: embedded PostgreSQL (PGlite) ` +
      `allows one process at a time. If no gateway runs there any more, remove ${file}`
  }
  // this pid without the lock in hand (lockFolder refused it otherwise): this process restarted, as a container's
  // process is pid 1 again
  if (holder.pid === process.pid) return null
  // written before this host last booted: whoever has that pid now is not the process that wrote it
  if (!alive(holder.pid) || beforeBoot) return null
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
