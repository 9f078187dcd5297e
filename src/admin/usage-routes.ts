import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { Type } from '@sinclair/typebox'
import type { Workspace } from '../db/schema.js'
import { notFound } from '../errors.js'
import { operatorSummary, operatorSummaryCsv } from '../usage/operator-summary.js'
import { monthlyStatement, statementCsv } from '../usage/statement.js'
import { parseFormat, parseMonth, parseUsageQuery, type UsageQueryString } from '../usage/usage-query.js'
import { usageCsv, usageReport } from '../usage/usage-report.js'
import { requireAdminToken } from './admin-auth.js'
import {
  FormatQuery, OperatorSummary, OperatorSummaryQuery, Statement, StatementParams, UsageQueryString as UsageQuerySchema,
  UsageView
} from './usage-schemas.js'

const errors = { 400: Type.Ref('Error'), 401: Type.Ref('Error'), 404: Type.Ref('Error') }
const security = [{ adminToken: [] }]
const tags = ['usage']

/** Sends CSV as a download named `filename`, or leaves JSON to the route's schema. */
export function sendReport<T> (reply: FastifyReply, format: 'json' | 'csv', body: T, csv: (body: T) => string,
  filename: string) {
  if (format === 'json') return body
  return reply.type('text/csv; charset=utf-8')
    .header('content-disposition', `attachment; filename="${filename}.csv"`)
    .send(csv(body))
}

/** `/admin/v1`: what the ledger says, for billing. Read from the daily rollups wherever whole days allow. */
export async function usageRoutes (app: FastifyInstance,
  { adminToken, longestCallMs }: { adminToken: string, longestCallMs: number }) {
  requireAdminToken(app, adminToken)
  const { db } = app.database

  async function workspaceOf (request: FastifyRequest): Promise<Workspace> {
    const { ws } = request.params as { ws: string }
    // a deleted workspace's ledger stays, and is read by the workspace's id
    const workspace = await app.tenancy.workspaces.find(ws, { deleted: true })
    if (!workspace) throw notFound(`No workspace '${ws}'`)
    return workspace
  }

  app.get('/workspaces/:ws/usage', {
    schema: {
      tags,
      summary: 'Usage of a workspace: totals and newest records, or grouped by day, model, operation or token ' +
        '(a deleted workspace\'s by its id)',
      security,
      params: Type.Object({ ws: Type.String({ description: 'workspace id or slug' }) }),
      querystring: UsageQuerySchema,
      response: { 200: UsageView, ...errors }
    }
  }, async (request, reply) => {
    const workspace = await workspaceOf(request)
    const query = parseUsageQuery(request.query as UsageQueryString, request.headers.accept)
    const tokenNames = async () =>
      new Map((await app.tenancy.tokens.list(workspace.id)).map((token) => [token.id, token.name]))
    const report = await usageReport(db, workspace, query, tokenNames)
    return sendReport(reply, query.format, report, usageCsv, `usage-${workspace.slug}`)
  })

  app.get('/workspaces/:ws/statements/:month', {
    schema: {
      tags,
      summary: 'Monthly statement: lines per model and operation, list cost, markup, billed total (a deleted ' +
        'workspace\'s by its id)',
      security,
      params: StatementParams,
      querystring: FormatQuery,
      response: { 200: Statement, ...errors }
    }
  }, async (request, reply) => {
    const month = parseMonth((request.params as { month: string }).month)
    const format = parseFormat((request.query as { format?: string }).format, request.headers.accept)
    const workspace = await workspaceOf(request)
    const statement = await monthlyStatement(db, workspace, month, { longestCallMs })
    return sendReport(reply, format, statement, statementCsv, `statement-${workspace.slug}-${month.id}`)
  })

  app.get('/usage', {
    schema: {
      tags,
      summary: 'Every workspace\'s totals for a month, for the operator',
      security,
      querystring: OperatorSummaryQuery,
      response: { 200: OperatorSummary, ...errors }
    }
  }, async (request, reply) => {
    const query = request.query as { month?: string, format?: string }
    const month = parseMonth(query.month ?? new Date().toISOString().slice(0, 7))
    const format = parseFormat(query.format, request.headers.accept)
    const summary = await operatorSummary(db, month)
    return sendReport(reply, format, summary, operatorSummaryCsv, `usage-${month.id}`)
  })
}
