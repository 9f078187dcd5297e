import generated from './operations.generated.json' with { type: 'json' }

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'

// one family per way Mistral reports what a call consumed (MISTRAL-NOTES §2.2)
export type MeteredFamily = 'chat' | 'fim' | 'agents_completion' | 'embeddings' | 'moderation' | 'classification' |
  'ocr' | 'transcription' | 'speech' | 'conversation'

/**
 * How Mistral authenticates a route (mistral-openapi.yaml `securitySchemes`): `ApiKey`, the workspace's key as a
 * bearer; `AdminApiKey`, an admin key as a bearer, which a workspace key is not; `DashboardUserContextAuth`, the key
 * in `x-api-key`.
 */
export type SecurityScheme = 'ApiKey' | 'AdminApiKey' | 'DashboardUserContextAuth'

/** A Mistral route as the gateway sees it, generated from the spec by `npm run generate:operations`. */
export interface Operation {
  /** the spec's operationId; a `#stream` twin folds into the id of the route without the fragment */
  id: string
  method: HttpMethod
  /** the spec's path template without fragment, e.g. `/v1/agents/{agent_id}` */
  path: string
  /** first segment after `/v1` or `/v2` (`chat`, `agents`, `admin`...): token scopes are named after it */
  area: string
  /** the scheme Mistral authenticates it by: where the key goes, and what Mistral's 401 says of it */
  security: SecurityScheme
  metered: MeteredFamily | null
  /** can answer `text/event-stream` */
  streamable: boolean
  /** acts on the operator's whole Mistral organisation: denied to tenants unless allowed */
  organization: boolean
  /** gone from the spec; forwarded so that Mistral's 410 reaches the client */
  retired: boolean
  /** the request body media types the spec accepts, sorted; empty when the call takes no body */
  requestContentTypes: readonly string[]
}

export interface OperationMatch {
  operation: Operation
  /** path parameters by name, as sent: still percent-encoded, never decoded */
  params: Readonly<Record<string, string>>
}

/** Classifies a request line against Mistral's routes; runs on every proxied call. */
export interface OperationTable {
  readonly operations: readonly Operation[]
  /** every `area`: the scope names a workspace token may carry */
  readonly areas: ReadonlySet<string>
  classify (method: string, pathname: string): Operation | undefined
  match (method: string, pathname: string): OperationMatch | undefined
}

interface Leaf {
  operation: Operation
  names: string[]
}

interface TrieNode {
  literals: Map<string, TrieNode>
  param: TrieNode | undefined
  leaf: Leaf | undefined
}

interface MethodRoutes {
  statics: Map<string, OperationMatch>
  root: TrieNode
}

const NO_PARAMS: Readonly<Record<string, string>> = Object.freeze({})
const SLASH = 47

export function createOperationTable (entries: readonly Operation[]): OperationTable {
  const operations = entries.map(freezeOperation)
  const byMethod = new Map<string, MethodRoutes>()
  for (const operation of operations) {
    let routes = byMethod.get(operation.method)
    if (routes === undefined) {
      routes = { statics: new Map(), root: createNode() }
      byMethod.set(operation.method, routes)
    }
    if (operation.path.includes('{')) insert(routes.root, operation)
    else addStatic(routes.statics, operation)
  }

  // Method names are case-sensitive (RFC 9110 §9.1) and Node hands them over upper case. HEAD is not in the spec.
  function match (method: string, pathname: string): OperationMatch | undefined {
    const routes = byMethod.get(method)
    if (routes === undefined) return undefined
    const found = routes.statics.get(pathname)
    if (found !== undefined) return found
    if (pathname.charCodeAt(0) !== SLASH) return undefined
    const values: string[] = []
    const leaf = walk(routes.root, pathname, 1, values)
    if (leaf === undefined) return undefined
    const params: Record<string, string> = {}
    for (let i = 0; i < leaf.names.length; i++) params[leaf.names[i]] = values[i]
    return { operation: leaf.operation, params }
  }

  return {
    operations,
    areas: new Set(operations.map((operation) => operation.area)),
    classify: (method, pathname) => match(method, pathname)?.operation,
    match
  }
}

// entries are shared by every request: a handler that mutates one would change it for all tenants
function freezeOperation (operation: Operation): Operation {
  return Object.freeze({ ...operation, requestContentTypes: Object.freeze([...operation.requestContentTypes]) })
}

function createNode (): TrieNode {
  return { literals: new Map(), param: undefined, leaf: undefined }
}

function addStatic (statics: Map<string, OperationMatch>, operation: Operation): void {
  if (statics.has(operation.path)) throw new Error(`duplicate operation ${operation.method} ${operation.path}`)
  statics.set(operation.path, Object.freeze({ operation, params: NO_PARAMS }))
}

function insert (root: TrieNode, operation: Operation): void {
  const names: string[] = []
  let node = root
  for (const segment of operation.path.slice(1).split('/')) {
    const name = /^\{([^{}]+)\}$/.exec(segment)?.[1]
    if (name !== undefined) {
      names.push(name)
      node.param ??= createNode()
      node = node.param
    } else if (segment.includes('{') || segment.includes('}')) {
      throw new Error(`${operation.path}: a parameter must be a whole segment`)
    } else {
      let next = node.literals.get(segment)
      if (next === undefined) node.literals.set(segment, next = createNode())
      node = next
    }
  }
  // `/x/{a}` and `/x/{b}` would be the same route under two names: the spec would be ambiguous
  if (node.leaf !== undefined) {
    throw new Error(`${operation.method} ${operation.path} clashes with ${node.leaf.operation.path}`)
  }
  node.leaf = { operation, names }
}

// A literal segment is tried before a parameter at the same depth (`/v1/agents/pages` before `{agent_id}`), and
// the walk backs off when the literal branch dead-ends: `/v1/connectors/c/organization/activate` must fall back
// from the `organization/credentials` branch to `{consumer_scope}/activate`.
function walk (node: TrieNode, pathname: string, start: number, values: string[]): Leaf | undefined {
  if (start > pathname.length) return node.leaf
  let end = pathname.indexOf('/', start)
  if (end === -1) end = pathname.length
  const segment = pathname.slice(start, end)
  const literal = node.literals.get(segment)
  if (literal !== undefined) {
    const leaf = walk(literal, pathname, end + 1, values)
    if (leaf !== undefined) return leaf
  }
  // an empty segment (trailing or doubled slash) is no id: Mistral answers 404 to those too
  if (node.param === undefined || segment === '') return undefined
  values.push(segment)
  const leaf = walk(node.param, pathname, end + 1, values)
  if (leaf === undefined) values.pop()
  return leaf
}

export const operationTable = createOperationTable(generated as Operation[])
export const classify = operationTable.classify
export const operationAreas = operationTable.areas
