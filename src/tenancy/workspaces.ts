import { and, asc, eq, isNull, sql } from 'drizzle-orm'
import type { AuditHook } from '../audit/audit-log.js'
import type { Database } from '../db/client.js'
import { workspaces, type Workspace } from '../db/schema.js'
import { sqlState } from '../db/sql-state.js'
import { badRequest, conflict } from '../errors.js'
import type { SpendCaps, WorkspaceLimits } from '../limits/policy.js'

const SLUG = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const CURRENCY = /^[A-Z]{3}$/

/** The bounds of a workspace's markup in basis points: -10000 makes its calls free, 1000000 is +10,000 %. */
export const MIN_MARKUP_BPS = -10_000
export const MAX_MARKUP_BPS = 1_000_000

/** What a call may do while its Mistral key cools down, tried in this order; after them the client gets the 429. */
export type CooldownStrategy = 'failover' | 'hold'
export const COOLDOWN_STRATEGIES: readonly CooldownStrategy[] = ['failover', 'hold']

/** A workspace's choice; a field left out takes the gateway's default: failover, then a hold of
 * UPSTREAM_COOLDOWN_HOLD_MS. */
export interface CooldownPolicy {
  order?: CooldownStrategy[]
  holdMs?: number
}

export interface WorkspaceInput {
  slug: string
  name: string
  timezone?: string
  currency?: string
}

export interface WorkspacePatch {
  name?: string
  timezone?: string
  currency?: string
  status?: 'active' | 'suspended'
  allowOrganizationRoutes?: boolean
  limits?: WorkspaceLimits
  caps?: SpendCaps
  markupBps?: number
  /** replaces the whole setting; {} goes back to the default */
  cooldown?: CooldownPolicy
}

/** Each change writes its audit row with `audit`, in its own transaction. */
export interface WorkspaceStore {
  create (input: WorkspaceInput, audit: AuditHook<Workspace>): Promise<Workspace>
  list (): Promise<Workspace[]>
  /** A live workspace by id or slug. */
  /**
   * A live workspace by slug or id; `deleted`: also a deleted one, by id only (its ledger stays, and its slug may be a
   * new workspace's by now).
   */
  find (ref: string, options?: { deleted?: boolean }): Promise<Workspace | undefined>
  /**
   * Undefined when the workspace is gone, or when its limits or caps are no longer those `read` holds: another change
   * came between the read a merge was made from and this write, which would undo it.
   */
  update (id: string, patch: WorkspacePatch, read: Pick<Workspace, 'limits' | 'caps'>, audit: AuditHook<Workspace>):
  Promise<Workspace | undefined>
  remove (id: string, audit: AuditHook<void>): Promise<void>
}

/** `maxHoldMs`: a hold is one of the waits UPSTREAM_RETRY_MAX_WAIT_MS bounds, so no longer than it. */
export function createWorkspaceStore ({ db, maxHoldMs }: { db: Database, maxHoldMs: number }): WorkspaceStore {
  const live = isNull(workspaces.deletedAt)
  return {
    async create (input, audit) {
      checkSlug(input.slug)
      const row = {
        slug: input.slug,
        name: checkName(input.name),
        timezone: await checkTimezone(db, input.timezone ?? 'UTC'),
        currency: checkCurrency(input.currency ?? 'USD')
      }
      return db.transaction(async (tx) => {
        const [created] = await tx.insert(workspaces).values(row).onConflictDoNothing().returning()
        if (!created) throw conflict(`Workspace slug '${input.slug}' is taken`, { param: 'slug' })
        await audit(tx, created)
        return created
      })
    },
    list () {
      return db.select().from(workspaces).where(live).orderBy(asc(workspaces.createdAt))
    },
    async find (ref, { deleted = false } = {}) {
      const byId = UUID.test(ref)
      // a reference that can be neither is no workspace's (and one with a NUL would fail the query)
      if (!byId && !SLUG.test(ref)) return undefined
      const match = byId ? eq(workspaces.id, ref) : eq(workspaces.slug, ref)
      const [row] = await db.select().from(workspaces).where(byId && deleted ? match : and(match, live)).limit(1)
      return row
    },
    async update (id, patch, read, audit) {
      const values: Partial<Workspace> = {}
      if (patch.name !== undefined) values.name = checkName(patch.name)
      if (patch.timezone !== undefined) values.timezone = await checkTimezone(db, patch.timezone)
      if (patch.currency !== undefined) values.currency = checkCurrency(patch.currency)
      if (patch.status !== undefined) values.status = patch.status
      if (patch.allowOrganizationRoutes !== undefined) values.allowOrganizationRoutes = patch.allowOrganizationRoutes
      if (patch.limits !== undefined) values.limits = patch.limits as Record<string, unknown>
      if (patch.caps !== undefined) values.caps = patch.caps as Record<string, unknown>
      if (patch.markupBps !== undefined) values.markupBps = checkMarkup(patch.markupBps)
      if (patch.cooldown !== undefined) {
        values.cooldown = checkCooldown(patch.cooldown, maxHoldMs) as Record<string, unknown>
      }
      const unchanged = and(eq(workspaces.limits, read.limits), eq(workspaces.caps, read.caps))
      return db.transaction(async (tx) => {
        const [row] = await tx.update(workspaces).set({ ...values, updatedAt: sql`now()` })
          .where(and(eq(workspaces.id, id), live, unchanged)).returning()
        if (row) await audit(tx, row)
        return row
      })
    },
    async remove (id, audit) {
      await db.transaction(async (tx) => {
        await tx.update(workspaces).set({ deletedAt: sql`now()`, updatedAt: sql`now()` })
          .where(and(eq(workspaces.id, id), live))
        await audit(tx)
      })
    }
  }
}

function checkSlug (slug: string) {
  if (!SLUG.test(slug) || UUID.test(slug)) {
    throw badRequest('slug must be 1-63 characters of a-z, 0-9 and inner hyphens, and not look like a uuid',
      { param: 'slug' })
  }
}

function checkMarkup (markupBps: number) {
  // a discount can make a call free, never negative
  if (!Number.isInteger(markupBps) || markupBps < MIN_MARKUP_BPS || markupBps > MAX_MARKUP_BPS) {
    throw badRequest(`markupBps must be whole basis points from ${MIN_MARKUP_BPS} (free) to ${MAX_MARKUP_BPS} ` +
      '(+10,000 %)', { param: 'markupBps' })
  }
  return markupBps
}

function checkCooldown (cooldown: CooldownPolicy, maxHoldMs: number): CooldownPolicy {
  const checked: CooldownPolicy = {}
  if (cooldown.order !== undefined) {
    for (const [index, strategy] of cooldown.order.entries()) {
      if (!COOLDOWN_STRATEGIES.includes(strategy)) {
        const known = COOLDOWN_STRATEGIES.map((name) => `'${name}'`).join(' or ')
        throw badRequest(`cooldown.order: unknown strategy '${strategy}' (use ${known})`, { param: 'cooldown.order' })
      }
      if (cooldown.order.indexOf(strategy) !== index) {
        throw badRequest(`cooldown.order lists '${strategy}' twice`, { param: 'cooldown.order' })
      }
    }
    checked.order = [...cooldown.order]
  }
  if (cooldown.holdMs !== undefined) {
    if (!Number.isInteger(cooldown.holdMs) || cooldown.holdMs < 0 || cooldown.holdMs > maxHoldMs) {
      throw badRequest(`cooldown.holdMs must be whole milliseconds from 0 to ${maxHoldMs} (UPSTREAM_RETRY_MAX_WAIT_MS)`,
        { param: 'cooldown.holdMs' })
    }
    checked.holdMs = cooldown.holdMs
  }
  return checked
}

// C0 and C1 controls and DEL: a name is for humans, and PostgreSQL cannot store a NUL in text at all
const CONTROL = /\p{Cc}/u

/** A workspace's or a token's name, trimmed: 1-200 characters, none of them a control character. */
export function checkName (name: string): string {
  const trimmed = name.trim()
  if (trimmed.length === 0 || trimmed.length > 200 || CONTROL.test(trimmed)) {
    throw badRequest('name must be 1-200 characters, none of them a control character', { param: 'name' })
  }
  return trimmed
}

// an IANA name (Area/Location, Etc/GMT+5) or UTC, known to both: the gateway's periods follow Node's zone data and
// the ledger's rollups PostgreSQL's. Abbreviations do not agree (Node takes IST for India and BST for Bangladesh where
// PostgreSQL reads Israel and British Summer Time), and a name only Node knows (AET, US/Pacific-New) would fail every
// ledger insert holding one of the workspace's records
const IANA_NAME = /^(?:UTC|[A-Za-z]+(?:\/[A-Za-z0-9_+-]+)+)$/

async function checkTimezone (db: Database, timezone: string): Promise<string> {
  const refused = (why: string) => badRequest(`timezone '${timezone}' ${why}`, { param: 'timezone' })
  const notIana = () => refused('is not an IANA time zone name such as Europe/Paris, or UTC')
  if (!IANA_NAME.test(timezone)) throw notIana()
  let nodeName: string
  try {
    // the IANA zone decides where the workspace's calendar days and months begin
    nodeName = new Intl.DateTimeFormat('en', { timeZone: timezone }).resolvedOptions().timeZone
  } catch {
    throw notIana()
  }
  if (!await postgresKnows(db, timezone)) {
    // a link a later tzdata dropped (US/Pacific-New) that ICU still resolves: the zone it stands for may be known
    const instead = nodeName !== timezone && await postgresKnows(db, nodeName) ? `: use ${nodeName}, the same zone` : ''
    throw refused('is not in PostgreSQL\'s time zone data (pg_timezone_names), which the usage views and statements ' +
      `read${instead}`)
  }
  return timezone
}

async function postgresKnows (db: Database, timezone: string): Promise<boolean> {
  try {
    await db.execute(sql`select now() at time zone ${timezone}`)
    return true
  } catch (err) {
    // 22023, invalid_parameter_value: "time zone … not recognized"
    if (sqlState(err) === '22023') return false
    throw err
  }
}

function checkCurrency (currency: string) {
  if (!CURRENCY.test(currency)) throw badRequest('currency must be an ISO 4217 code such as USD or EUR', { param: 'currency' })
  return currency
}
