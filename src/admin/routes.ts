import type { FastifyInstance, FastifyRequest } from 'fastify'
import { Type } from '@sinclair/typebox'
import { changesOf } from '../audit/changes.js'
import type { Database } from '../db/client.js'
import type { Workspace as WorkspaceRow } from '../db/schema.js'
import { badRequest, conflict, notFound } from '../errors.js'
import { acceptJsonBodies } from '../json-body.js'
import { describeLimits } from '../limits/describe-limits.js'
import type { RateLimits, SpendCaps, WorkspaceLimits } from '../limits/policy.js'
import { capsView, mergeRateLimits, mergeSpendCaps, mergeWorkspaceLimits } from '../limits/policy-input.js'
import { PRICE_FAMILIES } from '../pricing/default-prices.js'
import { DEFAULT_KEY } from '../tenancy/mistral-keys.js'
import type { CooldownPolicy } from '../tenancy/workspaces.js'
import { requireAdminToken } from './admin-auth.js'
import {
  AuditEntry, MintedToken, MistralKey, MistralKeyCreate, MistralKeyReplace, Token, TokenCreate, TokenPatch,
  Workspace, WorkspaceCreate, WorkspaceParams, WorkspacePatch,
  type TokenCreateBody, type TokenPatchBody, type WorkspaceCreateBody, type WorkspacePatchBody
} from './schemas.js'

const errors = {
  400: Type.Ref('Error'), 401: Type.Ref('Error'), 404: Type.Ref('Error'), 409: Type.Ref('Error')
}
const security = [{ adminToken: [] }]

/**
 * The price book's canonical id of a model a per-model limit names: admission looks the limit up by it. A model the
 * book does not know (in the workspace's currency or in USD) is refused: its limit would never apply. A limit being
 * removed (`null`) may name any.
 */
function canonicalModel (app: FastifyInstance, model: string, currency: string, removing: boolean): string {
  for (const family of PRICE_FAMILIES) {
    for (const book of new Set([currency, 'USD'])) {
      if (app.prices.entry(model, family, book)) return app.prices.canonical(model, family)
    }
  }
  if (removing) return model
  throw badRequest(`limits.models: the price book has no model '${model}'; a per-model limit applies to the ` +
    'models it prices (GET /admin/v1/prices)', { param: `limits.models.${model}` })
}

// money leaves the gateway as decimal strings in the workspace currency
const workspaceView = (row: WorkspaceRow) => ({ ...row, caps: capsView(row.caps as SpendCaps) })
const tokenView = <T extends { caps: Record<string, unknown> }>(token: T) =>
  ({ ...token, caps: capsView(token.caps as SpendCaps) })

// how many times a PATCH merges again after another change came between its read and its write: at each round one
// of the PATCHes racing it wins, so as many as the PATCHes made at once
const MERGE_ATTEMPTS = 10

/**
 * A PATCH's limits and caps merged into what is stored: `write` holds only if they are still as `read` found them
 * (undefined otherwise: a change written between the two would be lost), and the merge is made again from a new read.
 */
async function writeMerged<R, W> (what: string, read: () => Promise<R>, write: (current: R) => Promise<W | undefined>):
Promise<{ current: R, written: W }> {
  for (let attempt = 0; attempt < MERGE_ATTEMPTS; attempt++) {
    const current = await read()
    const written = await write(current)
    if (written !== undefined) return { current, written }
  }
  throw conflict(`The ${what} kept changing while this change was merged; retry`)
}

/** `/admin/v1`: the operator's API. Only the admin token opens it; a workspace token never does. */
export async function adminRoutes (app: FastifyInstance, { adminToken }: { adminToken: string }) {
  acceptJsonBodies(app, 1024 * 1024)
  requireAdminToken(app, adminToken)

  const { workspaces, keys, tokens } = app.tenancy
  // a change's audit row, which the store writes in the change's own transaction: if PostgreSQL cannot take the row
  // (a failover, a dropped connection), the change does not happen either, and the operator's retry makes it once
  const audit = (tx: Database, request: FastifyRequest, action: string, targetType: string, targetId: string | null,
    workspaceId: string | null, details: Record<string, unknown> = {}) =>
    app.audit.record({
      actor: 'admin', action, targetType, targetId, workspaceId, details: { ...details, requestId: request.id }
    }, tx)

  async function workspaceOf (request: FastifyRequest): Promise<WorkspaceRow> {
    const { ws } = request.params as { ws: string }
    const workspace = await workspaces.find(ws)
    if (!workspace) throw notFound(`No workspace '${ws}'`)
    return workspace
  }

  app.post('/workspaces', {
    schema: {
      tags: ['workspaces'],
      summary: 'Create a workspace',
      security,
      body: WorkspaceCreate,
      response: { 201: Workspace, ...errors }
    }
  }, async (request, reply) => {
    const workspace = await workspaces.create(request.body as WorkspaceCreateBody, (tx, created) =>
      audit(tx, request, 'workspace.create', 'workspace', created.id, created.id,
        { slug: created.slug, name: created.name, timezone: created.timezone, currency: created.currency }))
    await app.admission.welcome(workspace.id)
    return reply.code(201).send(workspaceView(workspace))
  })

  app.get('/workspaces', {
    schema: {
      tags: ['workspaces'],
      summary: 'List workspaces',
      security,
      response: { 200: Type.Object({ data: Type.Array(Workspace) }), ...errors }
    }
  }, async () => ({ data: (await workspaces.list()).map(workspaceView) }))

  app.get('/workspaces/:ws', {
    schema: {
      tags: ['workspaces'],
      summary: 'Get a workspace',
      security,
      params: WorkspaceParams,
      response: { 200: Workspace, ...errors }
    }
  }, async (request) => workspaceView(await workspaceOf(request)))

  app.patch('/workspaces/:ws', {
    schema: {
      tags: ['workspaces'],
      summary: 'Update a workspace',
      security,
      params: WorkspaceParams,
      body: WorkspacePatch,
      response: { 200: Workspace, ...errors }
    }
  }, async (request) => {
    const patch = request.body as WorkspacePatchBody
    if (patch.limits?.models) {
      // admission looks per-model limits up by the price book's canonical id: aliases and case variants name it
      const currency = patch.currency ?? (await workspaceOf(request)).currency
      patch.limits.models = Object.fromEntries(Object.entries(patch.limits.models)
        .map(([model, limits]) => [canonicalModel(app, model, currency, limits === null), limits]))
    }
    const fields = Object.keys(patch)
    const { current: workspace, written: updated } = await writeMerged('workspace', () => workspaceOf(request),
      (current) => workspaces.update(current.id, {
        ...patch,
        cooldown: patch.cooldown as CooldownPolicy | undefined, // strategies are checked by the store, by name
        limits: patch.limits === undefined
          ? undefined
          : mergeWorkspaceLimits(current.limits as WorkspaceLimits, patch.limits),
        caps: patch.caps === undefined ? undefined : mergeSpendCaps(current.caps as SpendCaps, patch.caps)
      }, current, (tx, written) => {
        // the cooldown setting is no secret, and which order was in force explains a client's 429s later
        const cooldown = patch.cooldown === undefined ? {} : { cooldown: written.cooldown }
        return audit(tx, request, 'workspace.update', 'workspace', current.id, current.id,
          { fields, changes: changesOf(workspaceView(current), workspaceView(written), fields), ...cooldown })
      }))
    await app.tenancy.tokens.forgetWorkspace(workspace.id)
    return workspaceView(updated)
  })

  app.delete('/workspaces/:ws', {
    schema: {
      tags: ['workspaces'],
      summary: 'Delete a workspace (its tokens stop working; its ledger stays; its state in Redis goes)',
      security,
      params: WorkspaceParams,
      response: { 204: Type.Null(), ...errors }
    }
  }, async (request, reply) => {
    const workspace = await workspaceOf(request)
    const keyIds = (await keys.list(workspace.id)).map((key) => key.id)
    await workspaces.remove(workspace.id, (tx) =>
      audit(tx, request, 'workspace.delete', 'workspace', workspace.id, workspace.id, { slug: workspace.slug }))
    await app.tenancy.tokens.forgetWorkspace(workspace.id)
    for (const id of keyIds) await app.keyHealth.forget(workspace.id, id)
    // its lifetime counters and epoch would stay in Redis for good, its settled ids expire an hour later as one large
    // key: they go now. The deletion stands whether or not Redis answers
    await app.admission.forget(workspace.id)
      .catch((err: unknown) => request.log.warn({ err, workspaceId: workspace.id }, 'a deleted workspace\'s state stays in Redis'))
    return reply.code(204).send()
  })

  app.post('/workspaces/:ws/mistral-keys', {
    schema: {
      tags: ['mistral keys'],
      summary: 'Add a named Mistral key',
      security,
      params: WorkspaceParams,
      body: MistralKeyCreate,
      response: { 201: MistralKey, ...errors }
    }
  }, async (request, reply) => {
    const workspace = await workspaceOf(request)
    const { name = DEFAULT_KEY, key } = request.body as { name?: string, key: string }
    const created = await keys.add(workspace.id, name, key, (tx, added) =>
      audit(tx, request, 'mistral_key.create', 'mistral_key', added.id, workspace.id, { name }))
    return reply.code(201).send(created)
  })

  app.get('/workspaces/:ws/mistral-keys', {
    schema: {
      tags: ['mistral keys'],
      summary: 'List Mistral keys (never the keys themselves)',
      security,
      params: WorkspaceParams,
      response: { 200: Type.Object({ data: Type.Array(MistralKey) }), ...errors }
    }
  }, async (request) => {
    const workspace = await workspaceOf(request)
    const data = await Promise.all((await keys.list(workspace.id)).map(async (key) => {
      const block = app.keyHealth.blocked(key.id)
      return {
        ...key,
        // what Mistral's own rate-limit headers said last, to see when a client's Mistral tier is the bottleneck
        quota: await app.keyHealth.quota(workspace.id, key.id),
        cooldown: block ? { reason: block.reason, until: new Date(block.until).toISOString() } : null
      }
    }))
    return { data }
  })

  const KeyParams = Type.Object({ ws: Type.String(), name: Type.String() })
  app.put('/workspaces/:ws/mistral-keys/:name', {
    schema: {
      tags: ['mistral keys'],
      summary: 'Replace a Mistral key (the client rotated it); the new key gets a new id, and none of the old key\'s ' +
        'cooldowns, breaker or quota',
      security,
      params: KeyParams,
      body: MistralKeyReplace,
      response: { 200: MistralKey, ...errors }
    }
  }, async (request) => {
    const workspace = await workspaceOf(request)
    const { name } = request.params as { name: string }
    const { key, replaced } = await keys.replace(workspace.id, name, (request.body as { key: string }).key,
      // the last four characters, as the admin API shows them: which key replaced which, never the key
      (tx, { key: next, replaced }) => audit(tx, request, 'mistral_key.replace', 'mistral_key', next.id, workspace.id,
        { name, previousId: replaced.id, last4: { from: replaced.last4, to: next.last4 } }))
    await app.keyHealth.forget(workspace.id, replaced.id)
    return key
  })

  app.delete('/workspaces/:ws/mistral-keys/:name', {
    schema: {
      tags: ['mistral keys'],
      summary: 'Delete a Mistral key (409 while a live token relies on it, each of whose calls would fail: one bound ' +
        'to it or, for `default`, one bound to no key; expired and revoked tokens do not count)',
      security,
      params: KeyParams,
      response: {
        204: Type.Null({ description: 'Deleted: no live token relied on it' }),
        ...errors,
        404: Type.Ref('Error', { description: 'No workspace, or no key of that name in it' }),
        409: Type.Ref('Error', { description: 'Live tokens rely on the key; the message names them by prefix' })
      }
    }
  }, async (request, reply) => {
    const workspace = await workspaceOf(request)
    const { name } = request.params as { name: string }
    const id = await keys.remove(workspace.id, name, (tx, id) =>
      audit(tx, request, 'mistral_key.delete', 'mistral_key', id, workspace.id, { name }))
    await app.keyHealth.forget(workspace.id, id)
    return reply.code(204).send()
  })

  app.post('/workspaces/:ws/tokens', {
    schema: {
      tags: ['tokens'],
      summary: 'Mint a workspace token (the secret is in this response only)',
      security,
      params: WorkspaceParams,
      body: TokenCreate,
      response: { 201: MintedToken, ...errors }
    }
  }, async (request, reply) => {
    const workspace = await workspaceOf(request)
    // the secret is shown once, in this answer: a mint whose audit row fails leaves no token behind it
    const { token, view } = await tokens.mint(workspace.id, request.body as TokenCreateBody, (tx, minted) =>
      audit(tx, request, 'token.create', 'token', minted.id, workspace.id,
        { name: minted.name, prefix: minted.prefix }))
    return reply.code(201).send({ ...tokenView(view), token })
  })

  app.get('/workspaces/:ws/tokens', {
    schema: {
      tags: ['tokens'],
      summary: 'List workspace tokens (by prefix)',
      security,
      params: WorkspaceParams,
      response: { 200: Type.Object({ data: Type.Array(Token) }), ...errors }
    }
  }, async (request) => ({ data: (await tokens.list((await workspaceOf(request)).id)).map(tokenView) }))

  const TokenParams = Type.Object({ ws: Type.String(), id: Type.String() })
  app.patch('/workspaces/:ws/tokens/:id', {
    schema: {
      tags: ['tokens'],
      summary: 'Set a token\'s own limits and caps (on top of the workspace\'s)',
      security,
      params: TokenParams,
      body: TokenPatch,
      response: { 200: Token, ...errors }
    }
  }, async (request) => {
    const workspace = await workspaceOf(request)
    const { id } = request.params as { id: string }
    const patch = request.body as TokenPatchBody
    const fields = Object.keys(patch)
    const { written: updated } = await writeMerged('token', async () => {
      const found = await tokens.find(workspace.id, id)
      if (!found) throw notFound('No such token')
      return found
    }, (found) => tokens.update(workspace.id, id, {
      limits: patch.limits === undefined ? undefined : mergeRateLimits(found.limits as RateLimits, patch.limits),
      caps: patch.caps === undefined ? undefined : mergeSpendCaps(found.caps as SpendCaps, patch.caps)
    }, found, (tx, written) => audit(tx, request, 'token.update', 'token', id, workspace.id,
      { fields, prefix: written.prefix, changes: changesOf(tokenView(found), tokenView(written), fields) })))
    return tokenView(updated)
  })

  app.get('/workspaces/:ws/limits', {
    schema: {
      tags: ['limits'],
      summary: 'Each limit and cap with what is used, reserved and left, and when it resets',
      security,
      params: WorkspaceParams,
      response: {
        200: Type.Object({
          workspace: Type.Unknown(),
          models: Type.Record(Type.String(), Type.Unknown()),
          tokens: Type.Record(Type.String(), Type.Unknown())
        }),
        ...errors,
        503: Type.Ref('Error')
      }
    }
  }, async (request) => {
    const workspace = await workspaceOf(request)
    const live = (await tokens.list(workspace.id)).filter((token) => !token.revokedAt)
    return describeLimits(app.admission, workspace, live)
  })

  app.delete('/workspaces/:ws/tokens/:id', {
    schema: {
      tags: ['tokens'],
      summary: 'Revoke a workspace token (every replica refuses it at once)',
      security,
      params: Type.Object({ ws: Type.String(), id: Type.String() }),
      response: { 200: Token, ...errors }
    }
  }, async (request) => {
    const workspace = await workspaceOf(request)
    const revoked = await tokens.revoke(workspace.id, (request.params as { id: string }).id, (tx, token) =>
      audit(tx, request, 'token.revoke', 'token', token.id, workspace.id, { name: token.name, prefix: token.prefix }))
    return tokenView(revoked)
  })

  app.get('/audit-log', {
    schema: {
      tags: ['audit'],
      summary: 'The append-only record of every admin change',
      security,
      querystring: Type.Object({
        limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
        // ids are bigserial, read as JS numbers: beyond the largest safe integer they would not be exact
        before: Type.Optional(Type.Integer({
          maximum: Number.MAX_SAFE_INTEGER, description: 'entries older than this id (paging)'
        }))
      }),
      response: { 200: Type.Object({ data: Type.Array(AuditEntry) }), ...errors }
    }
  }, async (request) => {
    const { limit = 100, before } = request.query as { limit?: number, before?: number }
    return { data: await app.audit.list({ limit, before }) }
  })
}
