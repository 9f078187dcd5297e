import { randomUUID } from 'node:crypto'
import { and, asc, count, eq, gt, isNull, ne, or, sql } from 'drizzle-orm'
import type { AuditHook } from '../audit/audit-log.js'
import type { Database } from '../db/client.js'
import { mistralKeys, workspaceTokens, type MistralKeyRow } from '../db/schema.js'
import { badRequest, conflict, notFound } from '../errors.js'
import type { InvalidationBus } from './invalidation-bus.js'
import { createKeyCipher, KeyCryptoError, type KeyCipher } from './key-crypto.js'
import type { MasterKeyRing } from './master-keys.js'

const KEY_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/
// printable ASCII, no space: a key pasted with a zero-width space or a control character in it would be stored, and
// every call with it fail before reaching Mistral (not a valid header value) as a 502 that opens the breaker
const KEY_CHARACTERS = /^[\x21-\x7e]{8,512}$/
/**
 * How long a replica uses a decrypted key, and a workspace's key names, before it reads them again: changes are pushed
 * over the bus at once, so this only bounds how long one that missed the news calls with a replaced or deleted key.
 */
export const KEY_CACHE_TTL_MS = 60_000
// a read again that fails (PostgreSQL unreachable) keeps what was read before, and is tried again after this
const STALE_RETRY_MS = 5_000
/** The key a token bound to none calls with (and fails over from): src/proxy/routes.ts, keyCandidates. */
export const DEFAULT_KEY = 'default'

/** What the admin API shows of a Mistral key: never the key. */
export interface MistralKeyView {
  id: string
  name: string
  last4: string
  status: 'active' | 'invalid'
  masterKeyId: string
  createdAt: Date
  updatedAt: Date
}

/** A decrypted key, held in memory only. */
export interface UsableKey {
  id: string
  name: string
  secret: string
  /** `invalid` once Mistral answered 401 for it, until the operator replaces it */
  status: 'active' | 'invalid'
}

/** What a replacement did: the new key, and the one it replaced. */
export interface KeyReplacement {
  key: MistralKeyView
  replaced: Pick<MistralKeyView, 'id' | 'last4'>
}

/**
 * Each operator's change writes its audit row with `audit`, in its own transaction, and tells the other replicas once
 * it has committed.
 */
export interface MistralKeyStore {
  add (workspaceId: string, name: string, secret: string, audit: AuditHook<MistralKeyView>): Promise<MistralKeyView>
  list (workspaceId: string): Promise<MistralKeyView[]>
  /** Of two replacements at once, the later one names the earlier one's key as the one it replaced. */
  replace (workspaceId: string, name: string, secret: string, audit: AuditHook<KeyReplacement>):
  Promise<KeyReplacement>
  /**
   * The id of the key deleted (`audit` gets it too). 409 while a live token relies on it (bound to it, or bound to
   * none for `default`): each of its calls would fail.
   */
  remove (workspaceId: string, name: string, audit: AuditHook<string>): Promise<string>
  /** The decrypted key a proxied call uses; cached until the bus says its workspace changed, or KEY_CACHE_TTL_MS. */
  resolve (workspaceId: string, name: string): Promise<UsableKey | undefined>
  /** The names of a workspace's keys in failover order: `default` first, then by name. Cached like `resolve`. */
  names (workspaceId: string): Promise<string[]>
  /**
   * Mistral answered 401 for this key: no call uses it until it is replaced. True the first time only, when `audit`
   * writes the mark's row in its transaction, as an operator's change does.
   */
  markInvalid (workspaceId: string, keyId: string, audit: AuditHook<Pick<MistralKeyView, 'id' | 'name'>>):
  Promise<boolean>
  /**
   * Moves every data key under the primary master key. Rows it cannot open stay, counted by master key id: those under
   * an id missing from the ring, and those under an id the ring has with other bytes.
   */
  rewrapAll (): Promise<{ moved: number, unknownMasterKeys: Record<string, number>,
    mismatchedMasterKeys: Record<string, number> }>
}

interface Cached<T> {
  value: Promise<T>
  /** when it is to be read again */
  until: number
  /** a read again is under way: calls meanwhile take `value` */
  refreshing: boolean
}

interface MistralKeyStoreOptions {
  db: Database
  cipher: KeyCipher
  bus: InvalidationBus
  cacheTtlMs?: number
}

export function createMistralKeyStore ({ db, cipher, bus, cacheTtlMs = KEY_CACHE_TTL_MS }: MistralKeyStoreOptions):
MistralKeyStore {
  const cache = new Map<string, Cached<UsableKey | undefined>>()
  const nameCache = new Map<string, Cached<string[]>>()
  bus.subscribe((message) => {
    if (message === null) {
      nameCache.clear()
      return cache.clear()
    }
    if (message.type !== 'workspace') return
    nameCache.delete(message.workspaceId)
    for (const cacheKey of cache.keys()) if (cacheKey.startsWith(message.workspaceId)) cache.delete(cacheKey)
  })
  const changed = (workspaceId: string) => bus.publish({ type: 'workspace', workspaceId }).catch(() => {})
  const byName = (workspaceId: string, name: string) =>
    and(eq(mistralKeys.workspaceId, workspaceId), eq(mistralKeys.name, name))

  return {
    async add (workspaceId, name, secret, audit) {
      checkName(name)
      const id = randomUUID()
      const sealed = seal(cipher, workspaceId, id, secret)
      const added = await db.transaction(async (tx) => {
        const [row] = await tx.insert(mistralKeys).values({ id, workspaceId, name, ...sealed })
          .onConflictDoNothing().returning()
        if (!row) throw conflict(`Mistral key '${name}' exists; PUT replaces it`, { param: 'name' })
        await audit(tx, view(row))
        return view(row)
      })
      await changed(workspaceId)
      return added
    },
    async list (workspaceId) {
      const rows = await db.select().from(mistralKeys).where(eq(mistralKeys.workspaceId, workspaceId))
        .orderBy(asc(mistralKeys.name))
      return rows.map(view)
    },
    async replace (workspaceId, name, secret, audit) {
      if (!isKeyName(name)) throw notFound(`No Mistral key named '${name}'`)
      // a new key gets a new id: what is known by the old one (a cooldown, an open breaker, Mistral's quota, a 401
      // that a call still in flight with the old secret meets and would mark invalid) is the old key's, not this one's.
      // By name: of two replacements at once, the later one wins, and the row lock has it read the earlier one's key
      const id = randomUUID()
      const result = await db.transaction(async (tx) => {
        const [old] = await tx.select({ id: mistralKeys.id, last4: mistralKeys.last4 }).from(mistralKeys)
          .where(byName(workspaceId, name)).for('update')
        if (!old) throw notFound(`No Mistral key named '${name}'`)
        const [row] = await tx.update(mistralKeys)
          .set({ id, ...seal(cipher, workspaceId, id, secret), status: 'active', updatedAt: sql`now()` })
          .where(eq(mistralKeys.id, old.id)).returning()
        const replacement = { key: view(row), replaced: old }
        await audit(tx, replacement)
        return replacement
      })
      await changed(workspaceId)
      return result
    },
    async remove (workspaceId, name, audit) {
      if (!isKeyName(name)) throw notFound(`No Mistral key named '${name}'`)
      const id = await db.transaction(async (tx) => {
        // held until the deletion commits, against the mints that lock the key (lockKeyForMint): one that locked it
        // first has committed its token by the time this lock is granted, and the query below (a new snapshot) counts
        // it; one that comes after waits, then finds no key
        const [key] = await tx.select({ id: mistralKeys.id }).from(mistralKeys).where(byName(workspaceId, name))
          .for('update')
        if (!key) throw notFound(`No Mistral key named '${name}'`)
        const relying = await liveTokensRelyingOn(tx, workspaceId, name)
        if (relying.length > 0) throw conflict(inUseMessage(name, relying), { param: 'name' })
        await tx.delete(mistralKeys).where(eq(mistralKeys.id, key.id))
        await audit(tx, key.id)
        return key.id
      })
      await changed(workspaceId)
      return id
    },
    resolve (workspaceId, name) {
      return cached(cache, `${workspaceId}/${name}`, () => load(workspaceId, name))
    },
    names (workspaceId) {
      return cached(nameCache, workspaceId, async () => {
        const rows = await db.select({ name: mistralKeys.name }).from(mistralKeys)
          .where(eq(mistralKeys.workspaceId, workspaceId))
        return rows.map((row) => row.name)
          .sort((a, b) => a === DEFAULT_KEY ? -1 : b === DEFAULT_KEY ? 1 : a.localeCompare(b))
      })
    },
    async markInvalid (workspaceId, keyId, audit) {
      const marked = await db.transaction(async (tx) => {
        const [row] = await tx.update(mistralKeys).set({ status: 'invalid', updatedAt: sql`now()` })
          .where(and(eq(mistralKeys.id, keyId), eq(mistralKeys.workspaceId, workspaceId),
            eq(mistralKeys.status, 'active')))
          .returning({ id: mistralKeys.id, name: mistralKeys.name })
        if (row) await audit(tx, row)
        return row !== undefined
      })
      await changed(workspaceId)
      return marked
    },
    async rewrapAll () {
      const rows = await db.select().from(mistralKeys).where(ne(mistralKeys.masterKeyId, cipher.primaryId))
      let moved = 0
      const unknownMasterKeys: Record<string, number> = {}
      const mismatchedMasterKeys: Record<string, number> = {}
      const countIn = (counts: Record<string, number>, masterKeyId: string) => {
        counts[masterKeyId] = (counts[masterKeyId] ?? 0) + 1
      }
      for (const row of rows) {
        if (!cipher.knows(row.masterKeyId)) {
          countIn(unknownMasterKeys, row.masterKeyId)
          continue
        }
        let rewrapped: ReturnType<KeyCipher['rewrap']>
        try {
          rewrapped = cipher.rewrap({ ...row, keyId: row.id })
        } catch (err) {
          // the same id with other bytes (checkRingOpensStoredKeys): the rows after this one may still move
          if (!(err instanceof KeyCryptoError && err.code === 'authentication_failed')) throw err
          countIn(mismatchedMasterKeys, row.masterKeyId)
          continue
        }
        if (!rewrapped) continue
        // only if nobody replaced the key meanwhile: the old data key must still be the one we unwrapped (a replacement
        // sealed under the same master key by a replica not yet given the new one would pass a check of that alone)
        const updated = await db.update(mistralKeys).set(rewrapped)
          .where(and(eq(mistralKeys.id, row.id), eq(mistralKeys.masterKeyId, row.masterKeyId),
            eq(mistralKeys.wrappedDataKey, row.wrappedDataKey)))
          .returning({ id: mistralKeys.id })
        moved += updated.length
      }
      return { moved, unknownMasterKeys, mismatchedMasterKeys }
    }
  }

  /**
   * What `read` gives, read again in the background once `cacheTtlMs` has passed (one read at a time), the value read
   * before answering meanwhile: a call never waits on PostgreSQL for a key it has, as none did before keys expired. A
   * read that fails keeps that value, as token lookups do through a PostgreSQL outage, and is tried again after
   * STALE_RETRY_MS. Only a value never read, or dropped on the bus' word, is waited for (callers share its read).
   */
  function cached<T> (entries: Map<string, Cached<T>>, cacheKey: string, read: () => Promise<T>): Promise<T> {
    const entry = entries.get(cacheKey)
    if (entry) {
      if (entry.until <= Date.now() && !entry.refreshing) refresh(entries, cacheKey, entry, read)
      return entry.value
    }
    const first: Cached<T> = { value: read(), until: Date.now() + cacheTtlMs, refreshing: false }
    entries.set(cacheKey, first)
    first.value.catch(() => { if (entries.get(cacheKey) === first) entries.delete(cacheKey) })
    return first.value
  }

  function refresh<T> (entries: Map<string, Cached<T>>, cacheKey: string, entry: Cached<T>, read: () => Promise<T>) {
    entry.refreshing = true
    read().then((value) => {
      // dropped on the bus' word meanwhile: this read may have begun before the change it announced
      if (entries.get(cacheKey) !== entry) return
      entries.set(cacheKey, { value: Promise.resolve(value), until: Date.now() + cacheTtlMs, refreshing: false })
    }, () => {
      entry.until = Date.now() + STALE_RETRY_MS
      entry.refreshing = false
    })
  }

  async function load (workspaceId: string, name: string): Promise<UsableKey | undefined> {
    const [row] = await db.select().from(mistralKeys).where(byName(workspaceId, name))
    if (!row) return undefined
    return { id: row.id, name: row.name, status: row.status, secret: cipher.open({ ...row, keyId: row.id }) }
  }
}

/**
 * Refuses a start whose ring cannot open stored Mistral keys: every call with them would fail. A master key the ring
 * lacks may be another replica's trial key, lost with its data folder if it is not set now; one the ring has under the
 * same id with other bytes (replicas of an install from before trial keys got a random suffix each kept `trial`) is
 * found by opening one of its keys. A rotation in progress passes: its ring holds the old key and the new one. The
 * message names ids and counts only.
 */
export async function checkRingOpensStoredKeys (db: Database, ring: MasterKeyRing): Promise<void> {
  const rows = await db.select({ masterKeyId: mistralKeys.masterKeyId, keys: count() }).from(mistralKeys)
    .groupBy(mistralKeys.masterKeyId).orderBy(asc(mistralKeys.masterKeyId))
  const cipher = createKeyCipher(ring)
  const missing: Record<string, number> = {}
  const mismatched: Record<string, number> = {}
  for (const row of rows) {
    if (!cipher.knows(row.masterKeyId)) missing[row.masterKeyId] = row.keys
    else if (!await opensOneUnder(db, cipher, row.masterKeyId)) mismatched[row.masterKeyId] = row.keys
  }
  const unopened = unopenedKeys(missing, mismatched)
  if (unopened.length === 0) return
  throw new Error([
    ...unopened.map((fact) => `${fact}.`),
    'This gateway could not open them, so it does not start. Add the id:<base64> entry that wrapped them to ' +
    'TRAMONTANE_MASTER_KEYS, as it is set on the replicas that stored them (the first entry keeps wrapping new keys; ' +
    'npm run keys:rewrap then moves these under it). A trial start keeps the key it generated in ' +
    'DATA_DIR/secrets.json on the machine that made it'
  ].join(' '))
}

/**
 * What a ring cannot open of the stored keys, by master key id, as the start-up check and keys:rewrap both say it: ids
 * and counts only. Empty when it opens them all.
 */
export function unopenedKeys (missing: Record<string, number>, mismatched: Record<string, number>): string[] {
  const under = (counts: Record<string, number>) => Object.entries(counts)
    .map(([id, keys]) => `${keys} Mistral key(s) under master key '${id}'`).join(', ')
  const facts: string[] = []
  if (Object.keys(missing).length > 0) {
    facts.push(`TRAMONTANE_MASTER_KEYS lacks the master key(s) that wrapped stored Mistral keys: ${under(missing)}`)
  }
  if (Object.keys(mismatched).length > 0) {
    facts.push('TRAMONTANE_MASTER_KEYS has other bytes under the id of the master key(s) that wrapped stored Mistral ' +
      `keys: ${under(mismatched)} do not open with it (the same id was generated or set anew elsewhere)`)
  }
  return facts
}

/**
 * Whether one key under this master key opens: GCM authenticates the wrapped data key against the master key's bytes,
 * so one row tells a right key from a wrong one under the same id. The secret is dropped at once.
 */
async function opensOneUnder (db: Database, cipher: KeyCipher, masterKeyId: string): Promise<boolean> {
  const [row] = await db.select().from(mistralKeys).where(eq(mistralKeys.masterKeyId, masterKeyId))
    .orderBy(asc(mistralKeys.id)).limit(1)
  if (!row) return true // deleted since they were counted: nothing left that it fails to open
  try {
    cipher.open({ ...row, keyId: row.id })
    return true
  } catch (err) {
    if (err instanceof KeyCryptoError && err.code === 'authentication_failed') return false
    throw err
  }
}

/**
 * Whether the workspace has the key a token about to be minted will call with, its row locked until `db` (a
 * transaction) writes the token and commits: a deletion of the key (`remove`) then waits and counts the token, or went
 * first and the key is not found. Share mode: mints do not wait on each other, only on a change to the key.
 */
export async function lockKeyForMint (db: Database, workspaceId: string, name: string): Promise<boolean> {
  const rows = await db.select({ id: mistralKeys.id }).from(mistralKeys)
    .where(and(eq(mistralKeys.workspaceId, workspaceId), eq(mistralKeys.name, name))).for('share')
  return rows.length > 0
}

interface RelyingToken {
  prefix: string
  mistralKeyName: string | null
}

/** The live (unexpired, unrevoked) tokens whose every call needs this key: bound to it, or to none if it is `default`. */
function liveTokensRelyingOn (db: Database, workspaceId: string, name: string): Promise<RelyingToken[]> {
  const boundToIt = eq(workspaceTokens.mistralKeyName, name)
  return db.select({ prefix: workspaceTokens.prefix, mistralKeyName: workspaceTokens.mistralKeyName })
    .from(workspaceTokens)
    .where(and(eq(workspaceTokens.workspaceId, workspaceId),
      name === DEFAULT_KEY ? or(boundToIt, isNull(workspaceTokens.mistralKeyName)) : boundToIt,
      isNull(workspaceTokens.revokedAt),
      or(isNull(workspaceTokens.expiresAt), gt(workspaceTokens.expiresAt, sql`now()`))))
    .orderBy(asc(workspaceTokens.createdAt))
}

/** Names the tokens by their prefix (never more of a token), and what the operator can do instead. */
function inUseMessage (name: string, relying: RelyingToken[]): string {
  const prefixes = (tokens: RelyingToken[]) => tokens.map((token) => token.prefix).join(', ')
  const bound = relying.filter((token) => token.mistralKeyName !== null)
  const unbound = relying.filter((token) => token.mistralKeyName === null)
  const uses = [
    bound.length > 0 && `is bound to ${bound.length} live token(s) (${prefixes(bound)})`,
    unbound.length > 0 && `is used by ${unbound.length} live token(s) bound to no key (${prefixes(unbound)})`
  ].filter(Boolean)
  return `Mistral key '${name}' ${uses.join(' and ')}: replace the key in place (PUT), or revoke those tokens first ` +
    '(a token\'s key is set when it is minted: mint replacements bound to another key)'
}

function seal (cipher: KeyCipher, workspaceId: string, keyId: string, secret: string) {
  const trimmed = secret.trim()
  if (!KEY_CHARACTERS.test(trimmed)) {
    throw badRequest('key must be a Mistral API key: 8-512 printable ASCII characters without spaces', { param: 'key' })
  }
  return { ...cipher.seal({ workspaceId, keyId, plaintext: trimmed }), last4: trimmed.slice(-4) }
}

/** Whether a key could be named so: a name that could not (one with a NUL, which PostgreSQL refuses) names no key. */
export function isKeyName (name: string): boolean {
  return KEY_NAME.test(name)
}

function checkName (name: string) {
  if (!isKeyName(name)) {
    throw badRequest('name must be 1-63 characters of a-z, 0-9, _ and -', { param: 'name' })
  }
}

function view (row: MistralKeyRow): MistralKeyView {
  return {
    id: row.id,
    name: row.name,
    last4: row.last4,
    status: row.status,
    masterKeyId: row.masterKeyId,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt
  }
}
