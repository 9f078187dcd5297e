import { Type, type Static } from '@sinclair/typebox'
import { DEFAULT_KEY } from '../tenancy/mistral-keys.js'
import { MAX_MARKUP_BPS, MIN_MARKUP_BPS } from '../tenancy/workspaces.js'

// The admin API's contract, also served as OpenAPI at /docs; responses are serialised through these schemas,
// so a field that is not listed here (a hash, a ciphertext) can never leave the gateway.

export const ErrorBody = Type.Object({
  object: Type.Literal('error'),
  type: Type.String(),
  code: Type.String(),
  message: Type.String(),
  param: Type.Union([Type.String(), Type.Null()]),
  request_id: Type.String(),
  error: Type.Object({ type: Type.String(), code: Type.String(), message: Type.String(), param: Type.Any() })
}, { $id: 'Error' })

const Timestamp = Type.String({ format: 'date-time' })
const NullableTimestamp = Type.Union([Timestamp, Type.Null()])

const Count = Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])
export const RateLimitsBody = Type.Object({
  rpm: Type.Optional(Count),
  rpd: Type.Optional(Count),
  tpm: Type.Optional(Count),
  concurrency: Type.Optional(Count)
}, { additionalProperties: false, description: 'requests per minute and per day, tokens per minute, calls in flight; null removes' })

export const WorkspaceLimitsBody = Type.Object({
  ...RateLimitsBody.properties,
  models: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Union([RateLimitsBody, Type.Null()])), Type.Null()], {
    description: 'per-model limits, keyed by model id (aliases and case variants count as the same model)'
  }))
}, { additionalProperties: false })

const Money = Type.Union([Type.String({ pattern: '^\\d+(\\.\\d{1,6})?$', examples: ['25.00'] }), Type.Null()])
export const SpendCapsBody = Type.Object({
  daily: Type.Optional(Money),
  monthly: Type.Optional(Money),
  lifetime: Type.Optional(Money),
  thresholds: Type.Optional(Type.Union([Type.Array(Type.Integer({ minimum: 1, maximum: 100 })), Type.Null()])),
  clampMaxTokens: Type.Optional(Type.Union([Type.Boolean(), Type.Null()]))
}, { additionalProperties: false, description: 'hard caps in the workspace currency, calendar periods in its time zone; null removes' })

const CapsView = Type.Object({
  daily: Type.Union([Type.String(), Type.Null()]),
  monthly: Type.Union([Type.String(), Type.Null()]),
  lifetime: Type.Union([Type.String(), Type.Null()]),
  thresholds: Type.Array(Type.Integer()),
  clampMaxTokens: Type.Boolean()
})
const LimitsView = Type.Object({
  rpm: Type.Optional(Type.Integer()),
  rpd: Type.Optional(Type.Integer()),
  tpm: Type.Optional(Type.Integer()),
  concurrency: Type.Optional(Type.Integer()),
  models: Type.Optional(Type.Record(Type.String(), Type.Object({
    rpm: Type.Optional(Type.Integer()),
    rpd: Type.Optional(Type.Integer()),
    tpm: Type.Optional(Type.Integer()),
    concurrency: Type.Optional(Type.Integer())
  })))
})

const Cooldown = Type.Object({
  order: Type.Optional(Type.Array(Type.String({ examples: ['failover', 'hold'] }), {
    description: "what a call does while its Mistral key cools down after a 429, tried in this order: 'failover' " +
      "(the workspace's next key the token may use) and 'hold' (wait if the cooldown ends within holdMs); one not " +
      'listed is not used, and after them the client gets the 429. Default ["failover", "hold"]; [] answers at once'
  })),
  holdMs: Type.Optional(Type.Integer({
    description: 'the longest hold, from 0 to UPSTREAM_RETRY_MAX_WAIT_MS; default UPSTREAM_COOLDOWN_HOLD_MS'
  }))
}, { additionalProperties: false, description: 'a field left out takes the default; {} is the default' })

export const Workspace = Type.Object({
  id: Type.String({ format: 'uuid' }),
  slug: Type.String(),
  name: Type.String(),
  status: Type.Union([Type.Literal('active'), Type.Literal('suspended')]),
  timezone: Type.String(),
  currency: Type.String(),
  allowOrganizationRoutes: Type.Boolean(),
  limits: LimitsView,
  caps: CapsView,
  markupBps: Type.Integer({ description: 'added to list prices, in basis points (2000 = +20 %, -1500 = -15 %)' }),
  cooldown: Cooldown,
  createdAt: Timestamp,
  updatedAt: Timestamp
}, { $id: 'Workspace' })

export const WorkspaceCreate = Type.Object({
  slug: Type.String({ description: 'lower-case a-z, 0-9 and inner hyphens, 1-63 characters', examples: ['acme'] }),
  name: Type.String({ examples: ['ACME Corp'] }),
  timezone: Type.Optional(Type.String({
    description: 'IANA time zone name of its budget periods (Europe/Paris, America/New_York, UTC; not an abbreviation)',
    default: 'UTC'
  })),
  currency: Type.Optional(Type.String({ description: 'ISO 4217 code of its prices and caps', default: 'USD' }))
}, { additionalProperties: false })

export const WorkspacePatch = Type.Object({
  name: Type.Optional(Type.String()),
  timezone: Type.Optional(Type.String()),
  currency: Type.Optional(Type.String()),
  status: Type.Optional(Type.Union([Type.Literal('active'), Type.Literal('suspended')])),
  allowOrganizationRoutes: Type.Optional(Type.Boolean({
    description: 'let this workspace call routes that act on the whole Mistral organisation (/v1/admin, /v1/users)'
  })),
  limits: Type.Optional(WorkspaceLimitsBody),
  caps: Type.Optional(SpendCapsBody),
  markupBps: Type.Optional(Type.Integer({
    minimum: MIN_MARKUP_BPS,
    maximum: MAX_MARKUP_BPS,
    description: `basis points added to list prices, from ${MIN_MARKUP_BPS} (free) to ${MAX_MARKUP_BPS} (+10,000 %)`
  })),
  cooldown: Type.Optional(Type.Object(Cooldown.properties, {
    additionalProperties: false,
    description: 'replaces the whole setting; {} goes back to the default (docs/resilience.md)'
  }))
}, { additionalProperties: false })

export const TokenPatch = Type.Object({
  limits: Type.Optional(RateLimitsBody),
  caps: Type.Optional(SpendCapsBody)
}, { additionalProperties: false })

export const MistralKey = Type.Object({
  id: Type.String({ format: 'uuid' }),
  name: Type.String(),
  last4: Type.String({ description: 'the last four characters, to tell keys apart; the key itself is never shown' }),
  status: Type.Union([Type.Literal('active'), Type.Literal('invalid')]),
  masterKeyId: Type.String(),
  createdAt: Timestamp,
  updatedAt: Timestamp,
  quota: Type.Optional(Type.Union([Type.Object({
    observedAt: Timestamp,
    headers: Type.Record(Type.String(), Type.String(), { description: "Mistral's x-ratelimit-* headers" })
  }), Type.Null()], { description: 'the remaining quota Mistral reported on its last successful call' })),
  cooldown: Type.Optional(Type.Union([Type.Object({
    reason: Type.String({ description: 'rate_limited, spend_limit or breaker_open' }),
    until: Timestamp
  }), Type.Null()], { description: 'calls stay away from this key until then' }))
}, { $id: 'MistralKey' })

export const MistralKeyCreate = Type.Object({
  name: Type.Optional(Type.String({
    default: DEFAULT_KEY,
    description: `lower-case a-z, 0-9, _ and -, 1-63 characters; left out, '${DEFAULT_KEY}' (the key of tokens bound ` +
      'to none)',
    examples: [DEFAULT_KEY, 'production']
  })),
  key: Type.String({ description: 'the Mistral API key; stored AES-256-GCM encrypted' })
}, { additionalProperties: false })

export const MistralKeyReplace = Type.Object({ key: Type.String() }, { additionalProperties: false })

export const Token = Type.Object({
  id: Type.String({ format: 'uuid' }),
  name: Type.String(),
  prefix: Type.String({ description: 'the first characters, for humans and logs' }),
  scopes: Type.Array(Type.String(), { description: 'API areas it may call (empty: all)' }),
  mistralKeyName: Type.Union([Type.String(), Type.Null()]),
  limits: LimitsView,
  caps: CapsView,
  expiresAt: NullableTimestamp,
  revokedAt: NullableTimestamp,
  lastUsedAt: NullableTimestamp,
  createdAt: Timestamp
}, { $id: 'Token' })

export const TokenCreate = Type.Object({
  name: Type.String({ examples: ['website chatbot'] }),
  mistralKey: Type.Optional(Type.Union([Type.String(), Type.Null()], {
    description: 'bind the token to this named Mistral key; unbound tokens pick one with x-tramontane-key'
  })),
  expiresAt: Type.Optional(Type.Union([Timestamp, Type.Null()])),
  scopes: Type.Optional(Type.Array(Type.String(), { description: 'API areas such as chat, embeddings, files' }))
}, { additionalProperties: false })

export const MintedToken = Type.Intersect([Token, Type.Object({
  token: Type.String({ description: 'the secret: shown in this response only' })
})])

export const AuditEntry = Type.Object({
  id: Type.Integer(),
  actor: Type.String(),
  action: Type.String(),
  targetType: Type.String(),
  targetId: Type.Union([Type.String(), Type.Null()]),
  workspaceId: Type.Union([Type.String(), Type.Null()]),
  details: Type.Record(Type.String(), Type.Unknown()),
  createdAt: Timestamp
})

export const WorkspaceParams = Type.Object({ ws: Type.String({ description: 'workspace id or slug' }) })
export type WorkspaceCreateBody = Static<typeof WorkspaceCreate>
export type WorkspacePatchBody = Static<typeof WorkspacePatch>
export type TokenCreateBody = Static<typeof TokenCreate>
export type TokenPatchBody = Static<typeof TokenPatch>
