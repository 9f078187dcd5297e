import { readFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import type { HttpMethod, MeteredFamily, Operation, SecurityScheme } from '../src/proxy/operations.js'

interface Reference {
  $ref: string
}

interface Content {
  content?: Record<string, unknown>
}

/** OpenAPI's security requirement: one object per alternative, each naming the schemes it needs at once. */
type SecurityRequirements = Array<Record<string, unknown>>

interface SpecOperation {
  operationId?: string
  security?: SecurityRequirements
  requestBody?: Content | Reference
  responses?: Record<string, Content | Reference>
}

/** The parts of an OpenAPI 3.1 document the operation table is built from. */
export interface OpenApiDocument {
  paths: Record<string, Record<string, unknown>>
  /** the default of the operations that name none */
  security?: SecurityRequirements
}

const repoRoot = fileURLToPath(new URL('..', import.meta.url))

export const generatedPath = resolve(repoRoot, 'src/proxy/operations.generated.json')

const METHODS: Record<string, HttpMethod> = { get: 'GET', post: 'POST', put: 'PUT', patch: 'PATCH', delete: 'DELETE' }
// an operation under one of these would need a wider HttpMethod and a look at how the proxy forwards it
const UNSUPPORTED_METHODS = new Set(['head', 'options', 'trace'])
const METHOD_ORDER = Object.values(METHODS)
// the schemes the proxy knows how to send a workspace key for (src/proxy/headers.ts); another needs a look first
const SECURITY_SCHEMES: ReadonlySet<string> =
  new Set<SecurityScheme>(['ApiKey', 'AdminApiKey', 'DashboardUserContextAuth'])

// MISTRAL-NOTES §2.2: the calls that consume tokens, pages, audio seconds or characters
const METERED: Record<string, MeteredFamily> = {
  'POST /v1/chat/completions': 'chat',
  'POST /v1/fim/completions': 'fim',
  'POST /v1/agents/completions': 'agents_completion',
  'POST /v1/embeddings': 'embeddings',
  'POST /v1/moderations': 'moderation',
  'POST /v1/chat/moderations': 'moderation',
  'POST /v1/classifications': 'classification',
  'POST /v1/chat/classifications': 'classification',
  'POST /v1/ocr': 'ocr',
  'POST /v1/audio/transcriptions': 'transcription',
  'POST /v1/audio/speech': 'speech',
  'POST /v1/conversations': 'conversation',
  'POST /v1/conversations/{conversation_id}': 'conversation',
  'POST /v1/conversations/{conversation_id}/restart': 'conversation'
}

// The spec declares no SSE answer here, yet `"stream": true` streams like chat (SDK `agentsStream`, MISTRAL-NOTES §0)
const UNDECLARED_STREAMS = new Set(['POST /v1/agents/completions'])

// MISTRAL-NOTES §2.7: these act on the operator's whole organisation, whichever tenant calls them
const ORGANIZATION_PREFIXES = ['/v1/admin', '/v1/users', '/v1/workflows/deployments', '/v1/rag']
const CONNECTOR_CREDENTIALS = /^\/v1\/connectors\/[^/]+\/[^/]+\/credentials(\/|$)/

// MISTRAL-NOTES §2.3: gone from the spec, answered 410 Gone (mistralai/client-ts b14b3b9); ids from the older spec
const RETIRED: Array<[HttpMethod, string, string, string[]]> = [
  ['GET', '/v1/fine_tuning/jobs', 'jobs_api_routes_fine_tuning_get_fine_tuning_jobs', []],
  ['POST', '/v1/fine_tuning/jobs', 'jobs_api_routes_fine_tuning_create_fine_tuning_job', ['application/json']],
  ['GET', '/v1/fine_tuning/jobs/{job_id}', 'jobs_api_routes_fine_tuning_get_fine_tuning_job', []],
  ['POST', '/v1/fine_tuning/jobs/{job_id}/cancel', 'jobs_api_routes_fine_tuning_cancel_fine_tuning_job', []],
  ['POST', '/v1/fine_tuning/jobs/{job_id}/start', 'jobs_api_routes_fine_tuning_start_fine_tuning_job', []]
]

/** `MISTRAL_OPENAPI` if set, else the shared copy beside the repo; relative paths start at the repo root. */
export function specPath (env: Record<string, string | undefined> = process.env): string {
  return resolve(repoRoot, env.MISTRAL_OPENAPI ?? '../shared/mistral-openapi.yaml')
}

export async function readSpec (file: string): Promise<OpenApiDocument> {
  const spec = parse(await readFile(file, 'utf8')) as Partial<OpenApiDocument> | null
  if (typeof spec?.paths !== 'object' || spec.paths === null) throw new Error(`${file}: not an OpenAPI document`)
  return spec as OpenApiDocument
}

/** One entry per (method, path) that Mistral serves, sorted by path then method. */
export function buildOperationTable (spec: OpenApiDocument): Operation[] {
  const byRoute = new Map<string, Operation>()
  for (const [template, item] of Object.entries(spec.paths)) {
    const [path, fragment] = template.split('#') // `#stream`, `#id`: documentation only, never on the wire
    for (const [key, value] of Object.entries(item)) {
      const method = methodOf(template, key)
      if (method === undefined) continue
      const operation = describe(spec, method, path, value as SpecOperation)
      const route = `${method} ${path}`
      const twin = byRoute.get(route)
      byRoute.set(route, twin === undefined ? operation : merge(twin, operation, fragment !== undefined))
    }
  }
  for (const [method, path, id, requestContentTypes] of RETIRED) {
    const route = `${method} ${path}`
    if (byRoute.has(route)) throw new Error(`${route} is back in the spec: drop it from RETIRED`)
    byRoute.set(route, { ...entry(id, method, path), retired: true, requestContentTypes })
  }
  for (const route of [...Object.keys(METERED), ...UNDECLARED_STREAMS]) {
    if (!byRoute.has(route)) throw new Error(`${route} is no longer in the spec: update scripts/operation-table.ts`)
  }
  return [...byRoute.values()].sort(byPathThenMethod)
}

export function formatOperationTable (operations: Operation[]): string {
  return JSON.stringify(operations, null, 2) + '\n'
}

function methodOf (template: string, key: string): HttpMethod | undefined {
  if (UNSUPPORTED_METHODS.has(key)) throw new Error(`${key.toUpperCase()} ${template}: method not supported`)
  return METHODS[key] // undefined for `parameters`, `summary` and the other path-item fields
}

function describe (spec: OpenApiDocument, method: HttpMethod, path: string, operation: SpecOperation): Operation {
  if (typeof operation.operationId !== 'string') throw new Error(`${method} ${path}: no operationId`)
  const route = `${method} ${path}`
  const body = operation.requestBody === undefined ? {} : deref<Content>(spec, operation.requestBody)
  const answersSse = Object.values(operation.responses ?? {})
    .some((response) => 'text/event-stream' in (deref<Content>(spec, response).content ?? {}))
  return {
    ...entry(operation.operationId, method, path),
    security: securityOf(route, operation.security ?? spec.security),
    metered: METERED[route] ?? null,
    streamable: answersSse || UNDECLARED_STREAMS.has(route),
    requestContentTypes: Object.keys(body.content ?? {}).sort()
  }
}

// every field in one place so that each JSON entry lists its keys in the same order
function entry (id: string, method: HttpMethod, path: string): Operation {
  const [, version, area] = path.split('/')
  if ((version !== 'v1' && version !== 'v2') || !area) throw new Error(`${method} ${path}: not under /v1 or /v2`)
  return {
    id,
    method,
    path,
    area,
    security: 'ApiKey',
    metered: null,
    streamable: false,
    organization: ORGANIZATION_PREFIXES.some((prefix) => path === prefix || path.startsWith(prefix + '/')) ||
      CONNECTOR_CREDENTIALS.test(path),
    retired: false,
    requestContentTypes: []
  }
}

/** The one scheme an operation is authenticated by: the proxy sends one credential, so alternatives are refused. */
function securityOf (route: string, requirements: SecurityRequirements | undefined): SecurityScheme {
  const schemes = (requirements ?? []).flatMap((requirement) => Object.keys(requirement))
  if (schemes.length !== 1 || !SECURITY_SCHEMES.has(schemes[0])) {
    throw new Error(`${route}: security ${JSON.stringify(requirements)} is not one scheme the proxy knows`)
  }
  return schemes[0] as SecurityScheme
}

// `POST /v1/conversations` and `POST /v1/conversations#stream` are one route on the wire
function merge (first: Operation, second: Operation, secondIsFragment: boolean): Operation {
  if (first.security !== second.security) throw new Error(`${first.method} ${first.path}: two security schemes`)
  return {
    ...(secondIsFragment ? first : second), // the id without fragment is the one Mistral's docs and SDKs name
    metered: first.metered ?? second.metered,
    streamable: first.streamable || second.streamable,
    organization: first.organization || second.organization,
    retired: first.retired || second.retired,
    requestContentTypes: [...new Set([...first.requestContentTypes, ...second.requestContentTypes])].sort()
  }
}

function deref<T> (spec: OpenApiDocument, value: T | Reference): T {
  if (typeof value !== 'object' || value === null || !('$ref' in value)) return value
  const target = value.$ref.replace(/^#\//, '').split('/')
    .reduce<unknown>((node, key) => (node as Record<string, unknown> | undefined)?.[key], spec)
  if (target === undefined) throw new Error(`unresolved $ref ${value.$ref}`)
  return deref(spec, target as T | Reference)
}

function byPathThenMethod (a: Operation, b: Operation): number {
  if (a.path !== b.path) return a.path < b.path ? -1 : 1
  return METHOD_ORDER.indexOf(a.method) - METHOD_ORDER.indexOf(b.method)
}
