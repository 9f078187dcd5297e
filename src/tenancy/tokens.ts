import { and, desc, DrizzleQueryError, eq, isNull, sql } from 'drizzle-orm'
import type { FastifyBaseLogger } from 'fastify'
import type { AuditHook } from '../audit/audit-log.js'
import type { Database } from '../db/client.js'
import { workspaces, workspaceTokens, type WorkspaceToken } from '../db/schema.js'
import { authenticationUnavailable, badRequest, notFound } from '../errors.js'
import type { RateLimits, SpendCaps, WorkspaceLimits } from '../limits/policy.js'
import type { Invalidation, InvalidationBus } from './invalidation-bus.js'
import { DEFAULT_KEY, isKeyName, lockKeyForMint } from './mistral-keys.js'
import { generateWorkspaceToken, hashWorkspaceToken } from './token-format.js'
import { checkName, type CooldownPolicy } from './workspaces.js'

/** Who is calling: the only source of the workspace for a proxied request (DESIGN.md, Isolation). */
export interface TenantContext {
  workspace: {
    id: string
    slug: string
    status: 'active' | 'suspended'
    allowOrganizationRoutes: boolean
    timezone: string
    currency: string
    markupBps: number
    limits: WorkspaceLimits
    caps: SpendCaps
    /** read on every cooling key, so it travels with the context rather than from the database */
    cooldown: CooldownPolicy
  }
  token: {
    id: string
    name: string
    prefix: string
    /** Empty: every area. */
    scopes: readonly string[]
    mistralKeyName: string | null
    limits: RateLimits
    caps: SpendCaps
  }
}

export interface TokenInput {
  name: string
  mistralKey?: string | null
  expiresAt?: string | null
  scopes?: string[]
}

export type TokenView = Omit<WorkspaceToken, 'hash' | 'workspaceId'>

/**
 * Each change writes its audit row with `audit`, in its own transaction, and tells the other replicas once it has
 * committed.
 */
export interface TokenStore {
  /** The secret is in the answer only: a mint whose audit row fails leaves no token. */
  mint (workspaceId: string, input: TokenInput, audit: AuditHook<TokenView>):
  Promise<{ token: string, view: TokenView }>
  list (workspaceId: string): Promise<TokenView[]>
  revoke (workspaceId: string, tokenId: string, audit: AuditHook<TokenView>): Promise<TokenView>
  find (workspaceId: string, tokenId: string): Promise<TokenView | undefined>
  /** Undefined when the token's limits or caps are no longer those `read` holds (see workspaces' update). */
  update (workspaceId: string, tokenId: string, patch: { limits?: RateLimits, caps?: SpendCaps },
    read: { limits: unknown, caps: unknown }, audit: AuditHook<TokenView>): Promise<TokenView | undefined>
  /**
   * The caller's context, or undefined for any bad, unknown, expired or revoked token. Throws 503
   * `authentication_unavailable` for a well-formed token it cannot read (PostgreSQL does not answer) and has nothing
   * of to keep serving.
   */
  authenticate (token: string): Promise<TenantContext | undefined>
  /** Tells every replica to reload the contexts of a workspace whose settings or status changed. */
  forgetWorkspace (workspaceId: string): Promise<void>
}

interface CacheEntry {
  context: TenantContext | undefined
  workspaceId: string | undefined
  /** the token's expiry (epoch ms; Infinity: none), which a failed read cannot postpone */
  expiresAt: number
  until: number
}

interface TokenStoreOptions {
  db: Database
  bus: InvalidationBus
  cacheTtlMs: number
  scopes: ReadonlySet<string>
  log: FastifyBaseLogger
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const LAST_USED_EVERY_MS = 60_000
// unknown tokens are cached too (a client looping on a revoked token costs no query), so the cache is bounded
const CACHE_MAX_ENTRIES = 50_000
const STALE_RETRY_MS = 5_000
// invalidations kept for the lookups in flight
const MAX_HEARD = 1_000

export function createTokenStore ({ db, bus, cacheTtlMs, scopes, log }: TokenStoreOptions): TokenStore {
  const cache = new Map<string, CacheEntry>()
  // the token's checksum and SHA-256, worked out once per token and not on every call (2-3 µs each): the process
  // holds the token as long as it serves it, as it holds the decrypted Mistral keys
  const digests = new Map<string, string>()
  const loading = new Map<string, Promise<CacheEntry>>()
  const lastUsedWritten = new Map<string, number>()
  // a failing read is logged once per retry period, not once per call of an outage
  let failureLoggedAt = -Infinity

  // The invalidations heard while lookups are in flight, numbered from `heardFrom`. A lookup that overlapped one about
  // its own token or workspace, or a reconnect (which may have missed any), must not cache what it read before the
  // change; one that overlapped changes to other tokens and workspaces still caches what it read, or every admin change
  // of any workspace would leave uncached the tokens whose lookups it crossed (and a PostgreSQL outage then fail them)
  let heard: Array<Invalidation | null> = []
  let heardFrom = 0
  const overlapped = (since: number, key: string, workspaceId: string | undefined) => since < heardFrom ||
    heard.slice(since - heardFrom).some((message) => message === null ||
      (message.type === 'token' && message.hash === key) ||
      (message.type === 'workspace' && message.workspaceId === workspaceId))
  bus.subscribe((message) => {
    if (message !== null && message.type !== 'token' && message.type !== 'workspace') return // not about tokens
    if (loading.size > 0) {
      heard.push(message)
      // a lookup older than what is kept counts as overlapped
      if (heard.length > MAX_HEARD) { heardFrom += heard.length - MAX_HEARD; heard = heard.slice(-MAX_HEARD) }
    }
    if (message === null) return cache.clear()
    if (message.type === 'token') return void cache.delete(message.hash)
    for (const [hash, entry] of cache) if (entry.workspaceId === message.workspaceId) cache.delete(hash)
  })

  return {
    async mint (workspaceId, input, audit) {
      const name = checkName(input.name ?? '')
      const requested = input.scopes ?? []
      const unknown = requested.filter((scope) => !scopes.has(scope))
      if (unknown.length > 0) {
        throw badRequest(`unknown scopes: ${unknown.join(', ')}; valid scopes are: ${[...scopes].sort().join(', ')}`,
          { param: 'scopes' })
      }
      const expiresAt = parseExpiry(input.expiresAt)
      const mistralKeyName = input.mistralKey ?? null
      if (mistralKeyName !== null && !isKeyName(mistralKeyName)) throw noKeyNamed(mistralKeyName)
      const { token, prefix, hash } = generateWorkspaceToken()
      const row = await db.transaction(async (tx) => {
        // an unbound token relies on `default` if there is one (deleting it is then refused); it may be minted without
        const keyThere = await lockKeyForMint(tx, workspaceId, mistralKeyName ?? DEFAULT_KEY)
        if (mistralKeyName !== null && !keyThere) {
          throw noKeyNamed(mistralKeyName)
        }
        const [inserted] = await tx.insert(workspaceTokens)
          .values({ workspaceId, name, prefix, hash, scopes: [...new Set(requested)], mistralKeyName, expiresAt })
          .returning()
        await audit(tx, view(inserted))
        return inserted
      })
      return { token, view: view(row) }
    },
    async list (workspaceId) {
      const rows = await db.select().from(workspaceTokens).where(eq(workspaceTokens.workspaceId, workspaceId))
        .orderBy(desc(workspaceTokens.createdAt))
      return rows.map(view)
    },
    async find (workspaceId, tokenId) {
      if (!UUID.test(tokenId)) return undefined
      const [row] = await db.select().from(workspaceTokens)
        .where(and(eq(workspaceTokens.id, tokenId), eq(workspaceTokens.workspaceId, workspaceId)))
      return row ? view(row) : undefined
    },
    async update (workspaceId, tokenId, patch, read, audit) {
      if (!UUID.test(tokenId)) throw notFound('No such token')
      const values: Partial<WorkspaceToken> = {}
      if (patch.limits !== undefined) values.limits = patch.limits as Record<string, unknown>
      if (patch.caps !== undefined) values.caps = patch.caps as Record<string, unknown>
      const mine = and(eq(workspaceTokens.id, tokenId), eq(workspaceTokens.workspaceId, workspaceId))
      const unchanged = and(eq(workspaceTokens.limits, read.limits as Record<string, unknown>),
        eq(workspaceTokens.caps, read.caps as Record<string, unknown>))
      const setting = Object.keys(values).length > 0
      const row = await db.transaction(async (tx) => {
        // nothing to set (a PATCH of {}): the token as it stands, and no SET clause, which SQL cannot have empty
        const [found] = setting
          ? await tx.update(workspaceTokens).set(values).where(and(mine, unchanged)).returning()
          : await tx.select().from(workspaceTokens).where(and(mine, unchanged))
        if (found) await audit(tx, view(found))
        return found
      })
      if (!row) return undefined
      if (setting) await bus.publish({ type: 'token', hash: row.hash.toString('hex') })
      return view(row)
    },
    async revoke (workspaceId, tokenId, audit) {
      if (!UUID.test(tokenId)) throw notFound('No such token')
      const mine = and(eq(workspaceTokens.id, tokenId), eq(workspaceTokens.workspaceId, workspaceId))
      const row = await db.transaction(async (tx) => {
        const [revoked] = await tx.update(workspaceTokens).set({ revokedAt: sql`coalesce(revoked_at, now())` })
          .where(mine).returning()
        if (!revoked) throw notFound('No such token')
        await audit(tx, view(revoked))
        return revoked
      })
      await bus.publish({ type: 'token', hash: row.hash.toString('hex') })
      return view(row)
    },
    forgetWorkspace (workspaceId) {
      return bus.publish({ type: 'workspace', workspaceId })
    },
    async authenticate (token) {
      let key = digests.get(token)
      const known = key !== undefined
      if (key === undefined) {
        const hash = hashWorkspaceToken(token)
        if (!hash) return undefined
        key = hash.toString('hex')
      }
      const now = Date.now()
      let entry = cache.get(key)
      if (!entry || entry.until <= now) {
        // one lookup per token at a time: a thousand streams opening with the same token make one query, not a
        // thousand that would drain the connection pool
        let pending = loading.get(key)
        if (!pending) {
          const readAt = heardFrom + heard.length
          const stale = entry
          pending = load(Buffer.from(key, 'hex'), now).then((loaded) => {
            if (cache.size >= CACHE_MAX_ENTRIES) cache.clear()
            if (!overlapped(readAt, key, loaded.workspaceId)) cache.set(key, loaded)
            return loaded
          }, (err: unknown) => {
            // a token's expiry is set when it is minted and never moves: one known to have passed needs no database
            if (stale && stale.expiresAt <= now) {
              const expired = { ...stale, context: undefined, until: now + cacheTtlMs }
              cache.set(key, expired)
              return expired
            }
            // PostgreSQL unreachable: a token this replica knew keeps what it last read (a revocation still arrives
            // over the bus and drops it), so a database outage does not stop the proxy; asked again in a few seconds,
            // or at its expiry. Kept unless this token's own entry was dropped meanwhile: a change to any other token
            // or workspace must not turn the outage into errors for this one
            if (!stale || cache.get(key) !== stale) {
              const failure = driverError(err)
              const at = Date.now()
              if (at - failureLoggedAt >= STALE_RETRY_MS) {
                failureLoggedAt = at
                log.error({ err: failure }, 'token lookup failed: tokens this replica cannot serve from its cache get 503')
              }
              throw authenticationUnavailable(failure, STALE_RETRY_MS)
            }
            const kept = { ...stale, until: Math.min(now + STALE_RETRY_MS, stale.expiresAt) }
            cache.set(key, kept)
            return kept
          }).finally(() => {
            loading.delete(key)
            // nothing in flight: what was heard concerns no lookup any more
            if (loading.size === 0) { heardFrom += heard.length; heard = [] }
          })
          loading.set(key, pending)
        }
        entry = await pending
      }
      if (entry.context) {
        touch(entry.context.token.id, now)
        // only tokens that authenticate, copied out of the header they were sliced from (it may be 16 kB long)
        if (!known) {
          if (digests.size >= CACHE_MAX_ENTRIES) digests.clear()
          digests.set(Buffer.from(token, 'latin1').toString('latin1'), key)
        }
      }
      return entry.context
    }
  }

  async function load (hash: Buffer, now: number): Promise<CacheEntry> {
    const [row] = await db.select({ token: workspaceTokens, workspace: workspaces })
      .from(workspaceTokens)
      .innerJoin(workspaces, eq(workspaces.id, workspaceTokens.workspaceId))
      .where(and(eq(workspaceTokens.hash, hash), isNull(workspaceTokens.revokedAt), isNull(workspaces.deletedAt)))
      .limit(1)
    const expiresAt = row?.token.expiresAt?.getTime() ?? Infinity
    if (!row || expiresAt <= now) {
      return { context: undefined, workspaceId: row?.workspace.id, expiresAt, until: now + cacheTtlMs }
    }
    const { token, workspace } = row
    return {
      context: {
        workspace: {
          id: workspace.id,
          slug: workspace.slug,
          status: workspace.status,
          allowOrganizationRoutes: workspace.allowOrganizationRoutes,
          timezone: workspace.timezone,
          currency: workspace.currency,
          markupBps: workspace.markupBps,
          limits: workspace.limits as WorkspaceLimits,
          caps: workspace.caps as SpendCaps,
          cooldown: workspace.cooldown as CooldownPolicy
        },
        token: {
          id: token.id,
          name: token.name,
          prefix: token.prefix,
          scopes: token.scopes,
          mistralKeyName: token.mistralKeyName,
          limits: token.limits as RateLimits,
          caps: token.caps as SpendCaps
        }
      },
      workspaceId: workspace.id,
      expiresAt,
      // an expiring token leaves the cache the moment it expires
      until: Math.min(now + cacheTtlMs, expiresAt)
    }
  }

  /** last_used_at is for humans: written at most once a minute per token, never awaited by a request. */
  function touch (tokenId: string, now: number) {
    if (now - (lastUsedWritten.get(tokenId) ?? 0) < LAST_USED_EVERY_MS) return
    lastUsedWritten.set(tokenId, now)
    db.update(workspaceTokens).set({ lastUsedAt: sql`now()` }).where(eq(workspaceTokens.id, tokenId))
      .catch(() => lastUsedWritten.delete(tokenId))
  }
}

/**
 * What the driver said, without the query builder's wrapping: its message quotes the query and its parameters (a
 * token's hash). The driver's messages (its causes', and each address tried by a connect that failed on all of them)
 * say what failed: a refused connection, a timeout.
 */
function driverError (err: unknown): { code?: string, message: string } {
  const driver = err instanceof DrizzleQueryError ? err.cause : err
  if (!(driver instanceof Error)) return { message: 'the query failed' }
  const messages = [driver.message]
  for (let cause = driver.cause; cause instanceof Error; cause = cause.cause) messages.push(cause.message)
  if (driver instanceof AggregateError) {
    for (const each of driver.errors) if (each instanceof Error) messages.push(each.message)
  }
  return { code: (driver as NodeJS.ErrnoException).code, message: messages.filter(Boolean).join('; ') }
}

function noKeyNamed (name: string) {
  return badRequest(`No Mistral key named '${name}' in this workspace`, { param: 'mistralKey' })
}

function parseExpiry (value: string | null | undefined): Date | null {
  if (value === undefined || value === null) return null
  const date = new Date(value)
  if (Number.isNaN(date.getTime())) throw badRequest('expiresAt must be an ISO 8601 date-time', { param: 'expiresAt' })
  if (date.getTime() <= Date.now()) throw badRequest('expiresAt must be in the future', { param: 'expiresAt' })
  return date
}

function view (row: WorkspaceToken): TokenView {
  const { hash: _hash, workspaceId: _workspaceId, ...rest } = row
  return rest
}
