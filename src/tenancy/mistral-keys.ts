import { randomUUID } from 'node:crypto'
import { and, asc, eq, ne, sql } from 'drizzle-orm'
import type { Database } from '../db/client.js'
import { mistralKeys, type MistralKeyRow } from '../db/schema.js'
import { badRequest, conflict, notFound } from '../errors.js'
import type { InvalidationBus } from './invalidation-bus.js'
import type { KeyCipher } from './key-crypto.js'

const KEY_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/

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

export interface MistralKeyStore {
  add (workspaceId: string, name: string, secret: string): Promise<MistralKeyView>
  list (workspaceId: string): Promise<MistralKeyView[]>
  replace (workspaceId: string, name: string, secret: string): Promise<MistralKeyView>
  /** The id of the key deleted. */
  remove (workspaceId: string, name: string): Promise<string>
  exists (workspaceId: string, name: string): Promise<boolean>
  /** The decrypted key a proxied call uses; cached until the bus says the workspace changed. */
  resolve (workspaceId: string, name: string): Promise<UsableKey | undefined>
  /** The names of a workspace's keys in failover order: `default` first, then by name. Cached like `resolve`. */
  names (workspaceId: string): Promise<string[]>
  /** Mistral answered 401 for this key: no call uses it until it is replaced. True the first time only. */
  markInvalid (workspaceId: string, keyId: string): Promise<boolean>
  /** Moves every data key under the primary master key. Rows under a master key missing from the ring stay. */
  rewrapAll (): Promise<{ moved: number, unknownMasterKeys: Record<string, number> }>
}

export function createMistralKeyStore ({ db, cipher, bus }: { db: Database, cipher: KeyCipher, bus: InvalidationBus }):
MistralKeyStore {
  const cache = new Map<string, Promise<UsableKey | undefined>>()
  const nameCache = new Map<string, Promise<string[]>>()
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
    async add (workspaceId, name, secret) {
      checkName(name)
      const id = randomUUID()
      const [row] = await db.insert(mistralKeys)
        .values({ id, workspaceId, name, ...seal(cipher, workspaceId, id, secret) })
        .onConflictDoNothing().returning()
      if (!row) throw conflict(`Mistral key '${name}' exists; PUT replaces it`, { param: 'name' })
      await changed(workspaceId)
      return view(row)
    },
    async list (workspaceId) {
      const rows = await db.select().from(mistralKeys).where(eq(mistralKeys.workspaceId, workspaceId))
        .orderBy(asc(mistralKeys.name))
      return rows.map(view)
    },
    async replace (workspaceId, name, secret) {
      // a new key gets a new id: what is known by the old one (a cooldown, an open breaker, Mistral's quota, a 401
      // that a call still in flight with the old secret meets and would mark invalid) is the old key's, not this one's.
      // By name: of two replacements at once, the later one wins
      const id = randomUUID()
      const [row] = await db.update(mistralKeys)
        .set({ id, ...seal(cipher, workspaceId, id, secret), status: 'active', updatedAt: sql`now()` })
        .where(byName(workspaceId, name)).returning()
      if (!row) throw notFound(`No Mistral key named '${name}'`)
      await changed(workspaceId)
      return view(row)
    },
    async remove (workspaceId, name) {
      const deleted = await db.delete(mistralKeys).where(byName(workspaceId, name)).returning({ id: mistralKeys.id })
      if (deleted.length === 0) throw notFound(`No Mistral key named '${name}'`)
      await changed(workspaceId)
      return deleted[0].id
    },
    async exists (workspaceId, name) {
      const rows = await db.select({ id: mistralKeys.id }).from(mistralKeys).where(byName(workspaceId, name))
      return rows.length > 0
    },
    resolve (workspaceId, name) {
      const cacheKey = `${workspaceId}/${name}`
      let entry = cache.get(cacheKey)
      if (!entry) {
        entry = load(workspaceId, name)
        cache.set(cacheKey, entry)
        entry.catch(() => cache.delete(cacheKey))
      }
      return entry
    },
    names (workspaceId) {
      let entry = nameCache.get(workspaceId)
      if (!entry) {
        entry = db.select({ name: mistralKeys.name }).from(mistralKeys).where(eq(mistralKeys.workspaceId, workspaceId))
          .then((rows) => rows.map((row) => row.name).sort((a, b) => a === 'default' ? -1 : b === 'default' ? 1 : a.localeCompare(b)))
        nameCache.set(workspaceId, entry)
        entry.catch(() => nameCache.delete(workspaceId))
      }
      return entry
    },
    async markInvalid (workspaceId, keyId) {
      const updated = await db.update(mistralKeys).set({ status: 'invalid', updatedAt: sql`now()` })
        .where(and(eq(mistralKeys.id, keyId), eq(mistralKeys.workspaceId, workspaceId), eq(mistralKeys.status, 'active')))
        .returning({ id: mistralKeys.id })
      await changed(workspaceId)
      return updated.length > 0
    },
    async rewrapAll () {
      const rows = await db.select().from(mistralKeys).where(ne(mistralKeys.masterKeyId, cipher.primaryId))
      let moved = 0
      const unknownMasterKeys: Record<string, number> = {}
      for (const row of rows) {
        if (!cipher.knows(row.masterKeyId)) {
          unknownMasterKeys[row.masterKeyId] = (unknownMasterKeys[row.masterKeyId] ?? 0) + 1
          continue
        }
        const rewrapped = cipher.rewrap({ ...row, keyId: row.id })
        if (!rewrapped) continue
        // only if nobody replaced the key meanwhile: the old data key must still be the one we unwrapped (a replacement
        // sealed under the same master key by a replica not yet given the new one would pass a check of that alone)
        const updated = await db.update(mistralKeys).set(rewrapped)
          .where(and(eq(mistralKeys.id, row.id), eq(mistralKeys.masterKeyId, row.masterKeyId),
            eq(mistralKeys.wrappedDataKey, row.wrappedDataKey)))
          .returning({ id: mistralKeys.id })
        moved += updated.length
      }
      return { moved, unknownMasterKeys }
    }
  }

  async function load (workspaceId: string, name: string): Promise<UsableKey | undefined> {
    const [row] = await db.select().from(mistralKeys).where(byName(workspaceId, name))
    if (!row) return undefined
    return { id: row.id, name: row.name, status: row.status, secret: cipher.open({ ...row, keyId: row.id }) }
  }
}

function seal (cipher: KeyCipher, workspaceId: string, keyId: string, secret: string) {
  const trimmed = secret.trim()
  if (trimmed.length < 8 || trimmed.length > 512 || /\s/.test(trimmed)) {
    throw badRequest('key must be a Mistral API key: 8-512 characters without spaces', { param: 'key' })
  }
  return { ...cipher.seal({ workspaceId, keyId, plaintext: trimmed }), last4: trimmed.slice(-4) }
}

function checkName (name: string) {
  if (!KEY_NAME.test(name)) {
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
