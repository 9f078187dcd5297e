import { sql } from 'drizzle-orm'
import {
  bigint, bigserial, boolean, check, customType, date, index, integer, jsonb, pgTable, text, timestamp, unique, uniqueIndex,
  uuid
} from 'drizzle-orm/pg-core'

const bytea = customType<{ data: Buffer, driverData: Buffer | Uint8Array }>({
  dataType: () => 'bytea',
  fromDriver: (value) => Buffer.isBuffer(value) ? value : Buffer.from(value)
})

const createdAt = () => timestamp('created_at', { withTimezone: true }).notNull().defaultNow()

export const workspaces = pgTable('workspaces', {
  id: uuid('id').primaryKey().defaultRandom(),
  slug: text('slug').notNull(),
  name: text('name').notNull(),
  status: text('status', { enum: ['active', 'suspended'] }).notNull().default('active'),
  timezone: text('timezone').notNull().default('UTC'),
  currency: text('currency').notNull().default('USD'),
  // routes that act on the whole Mistral organisation (/v1/admin, /v1/users, ...) are refused unless set
  allowOrganizationRoutes: boolean('allow_organization_routes').notNull().default(false),
  limits: jsonb('limits').$type<Record<string, unknown>>().notNull().default({}),
  caps: jsonb('caps').$type<Record<string, unknown>>().notNull().default({}),
  markupBps: integer('markup_bps').notNull().default(0),
  // what a call does while its Mistral key cools down: { order?, holdMs? }; {} is the gateway's default
  cooldown: jsonb('cooldown').$type<Record<string, unknown>>().notNull().default({}),
  createdAt: createdAt(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  // soft delete: the ledger keeps pointing at the workspace it billed
  deletedAt: timestamp('deleted_at', { withTimezone: true })
}, (t) => [uniqueIndex('workspaces_slug_live_idx').on(t.slug).where(sql`${t.deletedAt} is null`)])

export const mistralKeys = pgTable('mistral_keys', {
  id: uuid('id').primaryKey().defaultRandom(),
  workspaceId: uuid('workspace_id').notNull().references(() => workspaces.id, { onDelete: 'cascade' }),
  name: text('name').notNull(),
  // AES-256-GCM under a per-key data key; additional data binds it to workspace and key id
  ciphertext: bytea('ciphertext').notNull(),
  iv: bytea('iv').notNull(),
  tag: bytea('tag').notNull(),
  // the data key, itself AES-256-GCM under the master key named by master_key_id
  wrappedDataKey: bytea('wrapped_data_key').notNull(),
  masterKeyId: text('master_key_id').notNull(),
  last4: text('last4').notNull(),
  status: text('status', { enum: ['active', 'invalid'] }).notNull().default('active'),
  createdAt: createdAt(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow()
}, (t) => [uniqueIndex('mistral_keys_workspace_name_idx').on(t.workspaceId, t.name)])

export const workspaceTokens = pgTable('workspace_tokens', {
  id: uuid('id').primaryKey().defaultRandom(),
  workspaceId: uuid('workspace_id').notNull().references(() => workspaces.id, { onDelete: 'cascade' }),
  name: text('name').notNull(),
  // 'tmt_Ab3xYz9' for humans and logs; never the full token
  prefix: text('prefix').notNull(),
  // sha256: tokens carry 256 random bits, there is nothing to brute-force
  hash: bytea('hash').notNull().unique(),
  scopes: text('scopes').array().notNull().default(sql`'{}'::text[]`),
  mistralKeyName: text('mistral_key_name'),
  limits: jsonb('limits').$type<Record<string, unknown>>().notNull().default({}),
  caps: jsonb('caps').$type<Record<string, unknown>>().notNull().default({}),
  expiresAt: timestamp('expires_at', { withTimezone: true }),
  revokedAt: timestamp('revoked_at', { withTimezone: true }),
  lastUsedAt: timestamp('last_used_at', { withTimezone: true }),
  createdAt: createdAt()
}, (t) => [index('workspace_tokens_workspace_id_idx').on(t.workspaceId)])

export const usageRecords = pgTable('usage_records', {
  requestId: text('request_id').primaryKey(),
  workspaceId: uuid('workspace_id').notNull(),
  tokenId: uuid('token_id'),
  keyName: text('key_name').notNull(),
  operation: text('operation').notNull(),
  model: text('model'),
  // counts of a whole batch job are one record: past an integer's 2^31 for a large one
  promptTokens: bigint('prompt_tokens', { mode: 'number' }).notNull().default(0),
  cachedTokens: bigint('cached_tokens', { mode: 'number' }).notNull().default(0),
  completionTokens: bigint('completion_tokens', { mode: 'number' }).notNull().default(0),
  totalTokens: bigint('total_tokens', { mode: 'number' }).notNull().default(0),
  pages: bigint('pages', { mode: 'number' }).notNull().default(0),
  audioSeconds: bigint('audio_seconds', { mode: 'number' }).notNull().default(0),
  characters: bigint('characters', { mode: 'number' }).notNull().default(0),
  listCostMicros: bigint('list_cost_micros', { mode: 'number' }).notNull().default(0),
  billedCostMicros: bigint('billed_cost_micros', { mode: 'number' }).notNull().default(0),
  estimated: boolean('estimated').notNull().default(false),
  streamed: boolean('streamed').notNull().default(false),
  status: integer('status').notNull(),
  upstreamStatus: integer('upstream_status'),
  latencyMs: integer('latency_ms').notNull(),
  ttftMs: integer('ttft_ms'),
  // the price book's canonical id of the price applied (the model as requested is `model`)
  pricedModel: text('priced_model'),
  // `standard` or `priority`, as Mistral reported it (priority is billed at a multiple)
  serviceTier: text('service_tier'),
  // conversations: tokens spent by connectors (web search, code interpreter, ...)
  connectorTokens: bigint('connector_tokens', { mode: 'number' }).notNull().default(0),
  createdAt: createdAt()
}, (t) => [index('usage_records_workspace_created_idx').on(t.workspaceId, t.createdAt)])

// One row per workspace, calendar day (in the workspace's time zone), token, priced model and operation. Kept by a
// trigger on usage_records (migrations/0004), so a record counts here exactly when it is inserted, once.
export const usageDaily = pgTable('usage_daily', {
  workspaceId: uuid('workspace_id').notNull(),
  day: date('day', { mode: 'string' }).notNull(),
  tokenId: uuid('token_id'),
  model: text('model').notNull(),
  operation: text('operation').notNull(),
  calls: bigint('calls', { mode: 'number' }).notNull().default(0),
  estimatedCalls: bigint('estimated_calls', { mode: 'number' }).notNull().default(0),
  promptTokens: bigint('prompt_tokens', { mode: 'number' }).notNull().default(0),
  cachedTokens: bigint('cached_tokens', { mode: 'number' }).notNull().default(0),
  completionTokens: bigint('completion_tokens', { mode: 'number' }).notNull().default(0),
  totalTokens: bigint('total_tokens', { mode: 'number' }).notNull().default(0),
  connectorTokens: bigint('connector_tokens', { mode: 'number' }).notNull().default(0),
  pages: bigint('pages', { mode: 'number' }).notNull().default(0),
  audioSeconds: bigint('audio_seconds', { mode: 'number' }).notNull().default(0),
  characters: bigint('characters', { mode: 'number' }).notNull().default(0),
  listCostMicros: bigint('list_cost_micros', { mode: 'number' }).notNull().default(0),
  billedCostMicros: bigint('billed_cost_micros', { mode: 'number' }).notNull().default(0)
}, (t) => [
  unique('usage_daily_key').on(t.workspaceId, t.day, t.tokenId, t.model, t.operation).nullsNotDistinct()
])

// Batch jobs created through the gateway: billed once, when the job is over, from its output (MISTRAL-NOTES §2.6)
export const watchedJobs = pgTable('watched_jobs', {
  jobId: text('job_id').primaryKey(),
  workspaceId: uuid('workspace_id').notNull(),
  tokenId: uuid('token_id'),
  keyName: text('key_name').notNull(),
  // the request id of the call that created the job
  requestId: text('request_id').notNull(),
  endpoint: text('endpoint'),
  model: text('model'),
  // pending until the job ends; then recorded (its usage record is written) or failed (nothing to bill)
  status: text('status', { enum: ['pending', 'recorded', 'failed'] }).notNull().default('pending'),
  upstreamStatus: text('upstream_status'),
  checkedAt: timestamp('checked_at', { withTimezone: true }),
  completedAt: timestamp('completed_at', { withTimezone: true }),
  // a recorded job's cost reached the spend counters (or had none to reach): until then any replica's poll charges it
  chargedAt: timestamp('charged_at', { withTimezone: true }),
  // the job's output file once Mistral names it: its deletion through the gateway bills a pending job first
  outputFile: text('output_file'),
  createdAt: createdAt()
}, (t) => [
  index('watched_jobs_status_idx').on(t.status, t.checkedAt),
  index('watched_jobs_uncharged_idx').on(t.checkedAt).where(sql`${t.status} = 'recorded' and ${t.chargedAt} is null`),
  // whatever the watch's status: a deletion of a billed job's output then goes at once, with no read of Mistral
  index('watched_jobs_output_idx').on(t.outputFile).where(sql`${t.outputFile} is not null`),
  // a file deletion's look for the workspace's jobs whose output is not known yet (batch-output-owner.ts)
  index('watched_jobs_unknown_output_idx').on(t.workspaceId)
    .where(sql`${t.status} = 'pending' and ${t.outputFile} is null`)
])

export const auditLog = pgTable('audit_log', {
  id: bigserial('id', { mode: 'number' }).primaryKey(),
  actor: text('actor').notNull(),
  action: text('action').notNull(),
  targetType: text('target_type').notNull(),
  targetId: text('target_id'),
  workspaceId: uuid('workspace_id'),
  // facts about the change (names, fields touched); never a secret
  details: jsonb('details').$type<Record<string, unknown>>().notNull().default({}),
  createdAt: createdAt()
}, (t) => [index('audit_log_created_idx').on(t.createdAt)])

// operator overrides of the shipped price table (src/pricing/default-prices.ts); prices are integer micro-units of
// `currency` per unit (per million tokens, per minute, per 1000 pages, per million characters), never floats
const micros = (name: string) => bigint(name, { mode: 'number' }).notNull().default(0)

export const modelPrices = pgTable('model_prices', {
  id: uuid('id').primaryKey().defaultRandom(),
  // canonical id, lower case; '*' is the fallback for models the book does not know
  model: text('model').notNull(),
  currency: text('currency').notNull(),
  family: text('family', { enum: ['chat', 'embeddings', 'moderation', 'ocr', 'transcription', 'speech'] }).notNull(),
  inputPerMTok: micros('input_per_mtok'),
  outputPerMTok: micros('output_per_mtok'),
  // null: 10 % of input, the rule for Mistral's own models
  cachedInputPerMTok: bigint('cached_input_per_mtok', { mode: 'number' }),
  audioPerMinute: micros('audio_per_minute'),
  pagesPer1000: micros('pages_per_1000'),
  annotatedPagesPer1000: micros('annotated_pages_per_1000'),
  charactersPerM: micros('characters_per_m'),
  // null: the shipped table's ceiling for the model, else the default
  outputCeiling: integer('output_ceiling'),
  // more API ids at this price, on top of the shipped table's aliases
  aliases: text('aliases').array().notNull().default(sql`'{}'::text[]`),
  createdAt: createdAt(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow()
}, (t) => [
  uniqueIndex('model_prices_model_currency_family_idx').on(t.model, t.currency, t.family),
  // least() skips nulls: a null cached price is the 10 % rule, not a violation
  check('model_prices_non_negative', sql`least(${sql.join([t.inputPerMTok, t.outputPerMTok, t.cachedInputPerMTok,
    t.audioPerMinute, t.pagesPer1000, t.annotatedPagesPer1000, t.charactersPerM], sql`, `)}) >= 0`)
])

export type Workspace = typeof workspaces.$inferSelect
export type MistralKeyRow = typeof mistralKeys.$inferSelect
export type WorkspaceToken = typeof workspaceTokens.$inferSelect
export type UsageRecord = typeof usageRecords.$inferInsert
export type AuditEntry = typeof auditLog.$inferSelect
export type ModelPriceRow = typeof modelPrices.$inferSelect
export type UsageDaily = typeof usageDaily.$inferSelect
export type WatchedJob = typeof watchedJobs.$inferSelect
