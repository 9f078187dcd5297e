import t from 'tap'
import generated from '../../src/proxy/operations.generated.json' with { type: 'json' }
import { classify, createOperationTable, operationTable, type Operation } from '../../src/proxy/operations.js'
import { buildOperationTable, readSpec, specPath } from '../../scripts/operation-table.js'

const spec = await readSpec(specPath())
const METHODS = ['get', 'post', 'put', 'patch', 'delete']

interface SpecParameter {
  name: string
  in: string
  schema?: { enum?: string[] }
}

interface SpecOperation {
  operationId: string
  parameters?: SpecParameter[]
}

function specOperations () {
  return Object.entries(spec.paths).flatMap(([template, item]) => METHODS.filter((method) => method in item)
    .map((method) => ({ template, method: method.toUpperCase(), operation: item[method] as SpecOperation })))
}

// an enum's first value where there is one: `{consumer_scope}` then collides with the literal `user/credentials`
function sampleValue (name: string, operation: SpecOperation): string {
  const parameter = operation.parameters?.find((p) => p.in === 'path' && p.name === name)
  return parameter?.schema?.enum?.[0] ?? `${name}_1`
}

t.test('the committed table is what the generator builds from the spec', async (t) => {
  t.strictSame(generated, buildOperationTable(spec),
    'src/proxy/operations.generated.json is stale: run `npm run generate:operations` and commit the result')
})

t.test('every operation of the spec classifies to its own entry', async (t) => {
  for (const { template, method, operation } of specOperations()) {
    const path = template.split('#')[0]
    const params: Record<string, string> = {}
    const pathname = path.replace(/\{([^}]+)\}/g, (_, name: string) => (params[name] = sampleValue(name, operation)))
    const found = operationTable.match(method, pathname)
    t.equal(found?.operation.method, method, `${method} ${pathname}: method`)
    t.equal(found?.operation.path, path, `${method} ${pathname}: route`)
    t.strictSame(found?.params, params, `${method} ${pathname}: params`)
    // a `#stream` twin folds into the plain route, whose id the table keeps
    if (!template.includes('#stream')) t.equal(found?.operation.id, operation.operationId, `${method} ${pathname}: id`)
  }
})

t.test('counts', async (t) => {
  const fromSpec = specOperations()
  const distinct = new Set(fromSpec.map(({ template, method }) => `${method} ${template.split('#')[0]}`))
  t.equal(Object.keys(spec.paths).length, 209, 'path keys in the spec')
  t.equal(fromSpec.length, 288, 'operations in the spec')
  t.equal(distinct.size, 284, '(method, path) pairs once fragments are folded')
  const { operations } = operationTable
  t.equal(operations.length, distinct.size + 5, 'the folded pairs plus the 5 retired fine-tuning job routes')
  t.equal(operations.filter((operation) => operation.retired).length, 5, 'retired')
  t.equal(operations.filter((operation) => operation.metered !== null).length, 14, 'metered')
  t.equal(operations.filter((operation) => operation.streamable).length, 12, 'streamable (MISTRAL-NOTES §0)')
  t.equal(operations.filter((operation) => operation.organization).length, 78, 'organization-wide')
  t.equal(operations.filter((operation) => operation.area === 'admin').length, 47, 'admin')
  const bySecurity = (scheme: string) => operations.filter((operation) => operation.security === scheme)
  t.strictSame(bySecurity('AdminApiKey').map((operation) => operation.area), Array(47).fill('admin'),
    'an admin key for every /v1/admin route')
  t.strictSame(bySecurity('DashboardUserContextAuth').map((operation) => operation.path),
    ['/v1/users/me', '/v1/users/me/organizations', '/v1/users/me/workspaces'], 'x-api-key for the user context')
  t.equal(bySecurity('ApiKey').length, operations.length - 50, 'the workspace key as a bearer for the rest')
  t.strictSame([...operationTable.areas].sort(), ['admin', 'agents', 'audio', 'batch', 'chat', 'classifications',
    'connectors', 'conversations', 'embeddings', 'files', 'fim', 'fine_tuning', 'libraries', 'models', 'moderations',
    'observability', 'ocr', 'prompts', 'rag', 'skills', 'users', 'workflows'])
})

t.test('anything Mistral does not serve is unknown', async (t) => {
  const unknown = [
    ['GET', '/v1/nope'],
    ['POST', '/v1/chat/completions/'],
    ['POST', '/v1/chat/completions/extra'],
    ['POST', '/v3/chat/completions'],
    ['POST', '/chat/completions'],
    ['POST', 'v1/chat/completions'],
    ['GET', '/v1/chat/completions'],
    ['HEAD', '/v1/models'],
    ['OPTIONS', '/v1/models'],
    ['get', '/v1/models'],
    ['GET', '/v1/models/'],
    ['GET', '/v1/agents/'],
    ['GET', '/v1/agents//versions'],
    ['GET', '/v1/agents/ag_1/'],
    ['GET', '/v1/agents/ag_1/versions/'],
    ['GET', '/v1/agents/ag_1/versions/2/extra'],
    ['GET', ''],
    ['GET', '/'],
    ['GET', '/v1']
  ]
  for (const [method, pathname] of unknown) t.equal(classify(method, pathname), undefined, `${method} ${pathname}`)
})

t.test('flags', async (t) => {
  const chat = classify('POST', '/v1/chat/completions')
  t.equal(chat?.metered, 'chat')
  t.equal(chat?.streamable, true)
  t.equal(chat?.area, 'chat')
  t.equal(chat?.organization, false)
  t.equal(chat?.security, 'ApiKey')
  t.strictSame(chat?.requestContentTypes, ['application/json'])

  const restart = classify('POST', '/v1/conversations/conv_1/restart')
  t.equal(restart?.id, 'agents_api_v1_conversations_restart')
  t.equal(restart?.metered, 'conversation')
  t.equal(restart?.streamable, true, 'through its #stream twin')
  t.equal(classify('GET', '/v1/conversations/conv_1')?.metered, null, 'reading a conversation costs nothing')

  t.equal(classify('POST', '/v1/agents/completions')?.streamable, true, 'streams although the spec declares no SSE')
  t.equal(classify('POST', '/v1/chat/moderations')?.metered, 'moderation')
  t.equal(classify('POST', '/v1/chat/classifications')?.metered, 'classification')
  t.equal(classify('POST', '/v1/audio/transcriptions')?.streamable, true)
  t.equal(classify('POST', '/v1/batch/jobs')?.metered, null, 'billed later, from the output file')

  const admin = classify('PATCH', '/v1/admin/workspaces/ws_1/users')
  t.equal(admin?.organization, true)
  t.equal(admin?.area, 'admin')
  t.equal(classify('GET', '/v1/admin/workspaces/ws_1/users'), undefined, 'only PATCH is served there')
  t.equal(classify('GET', '/v1/users/me')?.organization, true)
  t.equal(classify('POST', '/v1/workflows/deployments/dep/restart')?.organization, true)
  t.equal(classify('DELETE', '/v1/connectors/c_1/user/credentials/main')?.organization, true)
  t.equal(classify('GET', '/v1/rag/deployments')?.organization, true)
  t.equal(classify('GET', '/v1/workflows/runs')?.organization, false)
  t.equal(classify('GET', '/v1/connectors/c_1/tools')?.organization, false)

  for (const [method, pathname] of [['GET', '/v1/fine_tuning/jobs'], ['POST', '/v1/fine_tuning/jobs'],
    ['GET', '/v1/fine_tuning/jobs/job_1'], ['POST', '/v1/fine_tuning/jobs/job_1/cancel'],
    ['POST', '/v1/fine_tuning/jobs/job_1/start']]) {
    const retired = classify(method, pathname)
    t.equal(retired?.retired, true, `${method} ${pathname} retired`)
    t.equal(retired?.area, 'fine_tuning')
  }
  t.equal(classify('PATCH', '/v1/fine_tuning/models/ft_1')?.retired, false)

  t.strictSame(classify('POST', '/v1/files')?.requestContentTypes, ['multipart/form-data'])
  t.strictSame(classify('POST', '/v1/libraries/lib_1/documents')?.requestContentTypes, ['multipart/form-data'])
  t.strictSame(classify('GET', '/v1/files')?.requestContentTypes, [])
  t.equal(classify('GET', '/v2/prompts/p_1/versions/3')?.area, 'prompts')
})

t.test('a literal segment beats a parameter, and the walk backs off from a dead end', async (t) => {
  t.equal(classify('GET', '/v1/agents/pages')?.path, '/v1/agents/pages')
  t.strictSame(operationTable.match('GET', '/v1/agents/ag_1'),
    { operation: classify('GET', '/v1/agents/ag_1'), params: { agent_id: 'ag_1' } })
  t.equal(classify('GET', '/v1/agents/ag_1')?.path, '/v1/agents/{agent_id}')
  t.strictSame(operationTable.match('GET', '/v1/agents/pages')?.params, {})

  const activate = operationTable.match('POST', '/v1/connectors/c_1/organization/activate')
  t.equal(activate?.operation.path, '/v1/connectors/{connector_id}/{consumer_scope}/activate')
  t.strictSame(activate?.params, { connector_id: 'c_1', consumer_scope: 'organization' })
  t.equal(classify('POST', '/v1/connectors/c_1/organization/credentials')?.path,
    '/v1/connectors/{connector_id_or_name}/organization/credentials')

  // the same position carries a different name per route: names come from the route that matched
  t.strictSame(operationTable.match('GET', '/v1/connectors/c_1')?.params, { connector_id_or_name: 'c_1' })
  t.strictSame(operationTable.match('DELETE', '/v1/connectors/c_1')?.params, { connector_id: 'c_1' })
  t.equal(classify('POST', '/v1/workflows/executions/terminate')?.path, '/v1/workflows/executions/terminate')
  t.equal(classify('POST', '/v1/workflows/executions/ex_1/terminate')?.path,
    '/v1/workflows/executions/{execution_id}/terminate')
})

t.test('percent-encoded segments are opaque', async (t) => {
  const found = operationTable.match('GET', '/v1/models/ft%3Aopen-mistral-7b%2Fx')
  t.equal(found?.operation.path, '/v1/models/{model_id}')
  t.strictSame(found?.params, { model_id: 'ft%3Aopen-mistral-7b%2Fx' })
  t.equal(classify('GET', '/v1/agents/%70ages')?.path, '/v1/agents/{agent_id}', 'not decoded into `pages`')
})

t.test('entries are frozen: one handler cannot change them for every tenant', async (t) => {
  const chat = classify('POST', '/v1/chat/completions') as Operation
  t.ok(Object.isFrozen(chat))
  t.ok(Object.isFrozen(chat.requestContentTypes))
})

t.test('a route the proxy cannot authenticate is refused', async (t) => {
  const withSecurity = (security: unknown) => ({
    paths: { '/v1/x': { get: { operationId: 'x', security } } },
    security: [{ ApiKey: [] }]
  }) as unknown as Parameters<typeof buildOperationTable>[0]
  for (const security of [[{ OAuth: [] }], [{ ApiKey: [] }, { AdminApiKey: [] }], []]) {
    t.throws(() => buildOperationTable(withSecurity(security)), /security .* is not one scheme the proxy knows/,
      JSON.stringify(security))
  }
})

t.test('an ambiguous table is refused', async (t) => {
  const base: Operation = {
    id: 'a',
    method: 'GET',
    path: '/v1/things/{thing_id}',
    area: 'things',
    security: 'ApiKey',
    metered: null,
    streamable: false,
    organization: false,
    retired: false,
    requestContentTypes: []
  }
  t.throws(() => createOperationTable([base, { ...base, id: 'b', path: '/v1/things/{other_id}' }]), /clashes/)
  t.throws(() => createOperationTable([{ ...base, path: '/v1/x' }, { ...base, path: '/v1/x' }]), /duplicate/)
  t.throws(() => createOperationTable([{ ...base, path: '/v1/files/{id}.json' }]), /whole segment/)
  t.equal(createOperationTable([base, { ...base, method: 'DELETE', path: '/v1/things/{other_id}' }])
    .classify('DELETE', '/v1/things/t')?.path, '/v1/things/{other_id}', 'another method is another trie')
})
