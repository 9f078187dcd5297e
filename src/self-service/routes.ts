import type { FastifyInstance } from 'fastify'
import { Type } from '@sinclair/typebox'
import { UsageQueryString as UsageQuerySchema, UsageView } from '../admin/usage-schemas.js'
import { sendReport } from '../admin/usage-routes.js'
import { badRequest, invalidToken, workspaceSuspended } from '../errors.js'
import { describeLimits } from '../limits/describe-limits.js'
import type { TenantContext } from '../tenancy/tokens.js'
import { parseUsageQuery, type UsageQueryString } from '../usage/usage-query.js'
import { usageCsv, usageReport } from '../usage/usage-report.js'

const NullableString = Type.Union([Type.String(), Type.Null()])
const Me = Type.Object({
  workspace: Type.Object({
    id: Type.String(),
    slug: Type.String(),
    name: Type.String(),
    status: Type.String(),
    timezone: Type.String(),
    currency: Type.String()
  }),
  token: Type.Object({
    id: Type.String(),
    name: Type.String(),
    prefix: Type.String(),
    scopes: Type.Array(Type.String()),
    mistralKeyName: NullableString,
    expiresAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
  }),
  limits: Type.Object({
    workspace: Type.Unknown(),
    models: Type.Record(Type.String(), Type.Unknown()),
    token: Type.Union([Type.Unknown(), Type.Null()])
  })
})

/**
 * `/tramontane/v1`: what a client may read about itself with its workspace token — who it is, its limits and caps
 * with what is left, its usage. Authenticated as `/v1` is (the same 401 for any bad token; the admin token is not a
 * workspace token), and scoped by the token alone: no route takes a workspace, so no other workspace is reachable.
 */
export async function selfServiceRoutes (app: FastifyInstance) {
  app.decorateRequest('tenant', null)
  app.addHook('onRequest', async (request) => {
    refuseTokenInQuery(request.query as Record<string, unknown>)
    const tenant = await app.tenancy.tokens.authenticate(bearer(request.headers.authorization))
    if (!tenant) throw invalidToken()
    if (tenant.workspace.status !== 'active') {
      throw workspaceSuspended(`Workspace '${tenant.workspace.slug}' is suspended`)
    }
    request.tenant = tenant
  })

  app.get('/me', { schema: { hide: true, response: { 200: Me } } }, async (request) => {
    const { workspace, token } = request.tenant as TenantContext
    const [row, view] = await Promise.all([
      app.tenancy.workspaces.find(workspace.id),
      app.tenancy.tokens.find(workspace.id, token.id)
    ])
    // the token's own limits and caps only: other tokens of the workspace are not this client app's business
    const limits = await describeLimits(app.admission, workspace, [token])
    return {
      workspace: {
        id: workspace.id,
        slug: workspace.slug,
        name: row?.name ?? workspace.slug,
        status: workspace.status,
        timezone: workspace.timezone,
        currency: workspace.currency
      },
      token: {
        id: token.id,
        name: token.name,
        prefix: token.prefix,
        scopes: [...token.scopes],
        mistralKeyName: token.mistralKeyName,
        expiresAt: view?.expiresAt?.toISOString() ?? null
      },
      limits: { workspace: limits.workspace, models: limits.models, token: limits.tokens[token.id] ?? null }
    }
  })

  app.get('/usage', {
    schema: { hide: true, querystring: UsageQuerySchema, response: { 200: UsageView } }
  }, async (request, reply) => {
    const { workspace, token } = request.tenant as TenantContext
    const query = parseUsageQuery(request.query as UsageQueryString, request.headers.accept)
    // the token's own calls only: as on /me, the workspace's other tokens, their names and what they spent are not
    // this client app's business. No parameter widens it (a `token` one is refused, in the onRequest hook)
    const tokenNames = async () => new Map([[token.id, token.name]])
    const report = await usageReport(app.database.db, workspace, query, tokenNames, { tokenId: token.id })
    return sendReport(reply, query.format, report, usageCsv, `usage-${workspace.slug}`)
  })
}

// a token in a URL reaches every proxy's and server's access log, and browser history, on its way (RFC 6750 §2.3)
const TOKEN_PARAMS = ['token', 'access_token']

/**
 * Refuses a query naming a token, whatever it holds and before any lookup: a client that put its workspace token
 * there is told where it belongs, rather than given a 401 or an answer that hides the leak. The value is never echoed.
 */
function refuseTokenInQuery (query: Record<string, unknown>) {
  const param = TOKEN_PARAMS.find((name) => Object.hasOwn(query, name))
  if (param === undefined) return
  throw badRequest(`'${param}' is not a query parameter here: send the workspace token in the Authorization header ` +
    '(Bearer), never in a URL, which proxies and servers log; these routes answer for the calling token only',
  { param })
}

function bearer (header: string | undefined): string {
  if (!header || header.length < 8) return ''
  return header.slice(0, 7).toLowerCase() === 'bearer ' ? header.slice(7).trim() : ''
}
