import { randomUUID } from 'node:crypto'
import { rm } from 'node:fs/promises'
import { promisify } from 'node:util'
import {
  closeSync, fdatasync as fdatasyncCallback, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, utimesSync,
  writeFileSync, writeSync
} from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'

/**
 * The usage spool: every record is appended to a file before anything else happens to it, so that a record survives
 * a PostgreSQL outage, a SIGKILL (the kernel keeps what `write` handed it) and a restart. Each running gateway owns
 * one folder under the spool directory, named by a random instance id, with an `owner` file it touches every few
 * seconds. Its records go to numbered segment files; a segment is sealed when a flush takes its records, and deleted
 * once every one of them is in the ledger.
 *
 * A folder whose owner is gone (same host and its process is dead, or its `owner` file stopped changing) is claimed by
 * the first gateway that sees it, with an atomic rename, and its records are replayed: the ledger insert is idempotent
 * by request id, so a record that had already reached PostgreSQL is not counted twice. A heartbeat is judged only by
 * whether it changed while the claimer watched, on the claimer's own clock: on a volume shared by several hosts the
 * owner file's time is the owner's clock, and comparing it with another host's would take a live gateway's folder
 * from it (its clock behind) or never take a dead one's (its clock ahead).
 */
export interface Spool {
  /**
   * Appends one line; synchronous, so it is on disk (in the page cache) when this returns. The segment's number. Throws
   * when the line cannot be written (a full or failing disk, the folder gone); the next append opens a new segment,
   * in the folder made again if it is gone.
   */
  append (line: string): number
  /** The segment holds the start of a call still in flight: it outlives its release until `unpin`. */
  pin (segment: number): void
  unpin (segment: number): void
  /** Closes the open segment: what it holds is about to be written, and a new segment takes the next records. */
  seal (): void
  /**
   * Deletes the sealed segments that no call in flight pins: every record in them is in the ledger. The deletions run
   * off the event loop (the promise: when they are done); one a crash interrupts leaves a segment whose replay the
   * ledger ignores (idempotent inserts).
   */
  release (): Promise<void>
  /** The records of folders whose owner is gone, claimed by this spool (their files are sealed segments now). */
  claimOrphans (): string[]
  /**
   * Seals the open segment, then flushes it to the disk itself (a power loss, not only a crash), off the event loop:
   * every record in it is synced, also those appended while the sync runs (they go to the next segment).
   */
  sealSynced (): Promise<void>
  /** Stops the heartbeat; removes this instance's folder when it holds nothing. */
  close (): void
}

export interface SpoolOptions {
  dir: string
  /** how often the owner file is touched */
  heartbeatMs?: number
  /**
   * an owner file seen unchanged for this long, by this gateway's clock, belongs to a gateway that is gone (another
   * host, or a frozen process)
   */
  staleMs?: number
}

interface Owner {
  host: string
  pid: number
}

const OWNER = 'owner'
/** An owner file seen unchanged for this long is a dead gateway's, by default. */
export const STALE_OWNER_MS = 30_000
const fdatasync = promisify(fdatasyncCallback)

export function createSpool ({ dir, heartbeatMs = 5_000, staleMs = STALE_OWNER_MS }: SpoolOptions): Spool {
  const instance = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`
  const own = join(dir, instance)
  const makeFolder = () => {
    mkdirSync(own, { recursive: true, mode: 0o700 })
    writeFileSync(join(own, OWNER), JSON.stringify({ host: hostname(), pid: process.pid } satisfies Owner))
  }
  makeFolder()
  const heartbeat = setInterval(() => {
    const now = new Date()
    try { utimesSync(join(own, OWNER), now, now) } catch {}
  }, heartbeatMs)
  heartbeat.unref()

  let sequence = 0
  let fd: number | undefined
  let sealed: string[] = []
  let dirty = false
  const pins = new Map<number, number>()
  // other folders' heartbeats as last seen, and since when (this process' monotonic clock)
  const watched = new Map<string, { heartbeat: string, since: number }>()

  const segmentPath = (n: number) => join(own, `${String(n).padStart(9, '0')}.jsonl`)

  /** Takes the open segment out of use (the next record starts a new one); its descriptor, still open. */
  function detach (): number | undefined {
    const detached = fd
    if (detached === undefined) return undefined
    fd = undefined
    dirty = false
    sealed.push(segmentPath(sequence))
    return detached
  }

  function seal () {
    const detached = detach()
    if (detached !== undefined) closeSync(detached)
  }

  /** Its process is dead on this host, or its heartbeat has not changed for staleMs while this spool watched. */
  function isOrphan (folder: string, name: string): boolean {
    const { heartbeat, deadHere } = ownerOf(folder)
    if (deadHere) return true
    const now = performance.now()
    const last = watched.get(name)
    if (last === undefined || last.heartbeat !== heartbeat) {
      watched.set(name, { heartbeat, since: now })
      return false
    }
    return now - last.since >= staleMs
  }

  function openSegment (): number {
    sequence += 1
    try {
      return openSync(segmentPath(sequence), 'a', 0o600)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      // the folder is gone: removed by hand, or claimed by a gateway that took this one for dead (a long pause)
      makeFolder()
      return openSync(segmentPath(sequence), 'a', 0o600)
    }
  }

  const pinned = (path: string) => [...pins.keys()].some((segment) => segmentPath(segment) === path)

  return {
    append (line) {
      const text = line + '\n'
      try {
        fd ??= openSegment()
        // a short write (the disk filled mid-line) fails too: the next line would run on from the cut one. The string
        // is written as it is (a Buffer of it would copy every line); its length in bytes is counted, not encoded
        const written = writeSync(fd, text)
        const length = Buffer.byteLength(text)
        if (written < length) throw new Error(`usage spool: ${written} of ${length} bytes written`)
      } catch (err) {
        // a line the failure cut can only be the last of its segment, as a crash leaves it: a new one takes the next
        try { seal() } catch {}
        throw err
      }
      dirty = true
      return sequence
    },
    pin (segment) { pins.set(segment, (pins.get(segment) ?? 0) + 1) },
    unpin (segment) {
      const count = (pins.get(segment) ?? 0) - 1
      if (count > 0) pins.set(segment, count)
      else pins.delete(segment)
    },
    seal,
    async release () {
      const kept: string[] = []
      const deletions: Array<Promise<void>> = []
      for (const path of sealed) {
        if (pinned(path)) kept.push(path)
        else deletions.push(rm(path, { recursive: true, force: true }).catch(() => {}))
      }
      sealed = kept
      await Promise.all(deletions)
    },
    claimOrphans () {
      const lines: string[] = []
      const names = readdirSafe(dir)
      for (const name of watched.keys()) if (!names.includes(name)) watched.delete(name)
      for (const name of names) {
        if (name === instance || !isOrphan(join(dir, name), name)) continue
        watched.delete(name)
        // whoever renames first owns it: a second claimer finds nothing at the old name
        const claimed = join(own, `claimed-${name}`)
        try { renameSync(join(dir, name), claimed) } catch { continue }
        for (const path of segmentsIn(claimed)) {
          lines.push(...readFileSync(path, 'utf8').split('\n').filter((line) => line.length > 0))
        }
        sealed.push(claimed)
      }
      return lines
    },
    async sealSynced () {
      const unsynced = dirty
      const detached = detach()
      if (detached === undefined) return
      try {
        if (unsynced) await fdatasync(detached)
      } finally {
        closeSync(detached)
      }
    },
    close () {
      clearInterval(heartbeat)
      seal()
      // anything still sealed is not in the ledger yet: the folder stays, for this gateway's restart or another one
      if (sealed.length === 0) rmSync(own, { recursive: true, force: true })
    }
  }
}

/** Segment files of a claimed folder, oldest first, also those of folders it had itself claimed before it died. */
function segmentsIn (folder: string): string[] {
  const found: string[] = []
  for (const name of readdirSafe(folder).sort()) {
    const path = join(folder, name)
    if (name.endsWith('.jsonl')) found.push(path)
    else if (name.startsWith('claimed-')) found.push(...segmentsIn(path))
  }
  return found
}

function readdirSafe (path: string): string[] {
  try { return readdirSync(path) } catch { return [] }
}

/**
 * What tells whether a folder's gateway lives: its owner file's time (touched by the heartbeat), or the folder's own
 * while it has none (being created, or it never got one); and whether its process is dead on this host.
 */
function ownerOf (folder: string): { heartbeat: string, deadHere: boolean } {
  try {
    const owner = JSON.parse(readFileSync(join(folder, OWNER), 'utf8')) as Owner
    const heartbeat = `owner ${statSync(join(folder, OWNER)).mtimeMs}`
    return { heartbeat, deadHere: owner.host === hostname() && !isAlive(owner.pid) }
  } catch {
    try { return { heartbeat: `folder ${statSync(folder).mtimeMs}`, deadHere: false } } catch {
      return { heartbeat: 'gone', deadHere: false }
    }
  }
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: a process of another user holds that pid, so it is alive
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
