import t, { type Test } from 'tap'
import { buildTestApp, type TestApp } from '../helpers/app.js'

// Which Mistral key a call uses, which routes a token may call, and what of the client's request reaches Mistral
// (DESIGN.md, the request path: authenticate, classify, forward).

type Headers = Record<string, string>

const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'route me' }] }
const embed = { model: 'mistral-embed', input: ['route me'] }
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** One call through the gateway, with what reached the fake Mistral for it. */
async function call (s: TestApp, method: string, url: string, headers: Headers, payload?: unknown) {
  const before = s.mistral.received.length
  const res = await s.app.inject({ method: method as 'GET', url, headers, payload: payload as string | object })
  const upstream = s.mistral.received.slice(before)
  return { res, status: res.statusCode, json: safeJson(res.body), upstream, keys: upstream.map((r) => r.apiKey) }
}

type Call = Awaited<ReturnType<typeof call>>

/** The gateway's own error: both shapes, and the request id of the x-request-id header. */
function gatewayError (t: Test, got: Call, status: number, type: string, code: string, what: string) {
  t.equal(got.status, status, `${what}: ${status}`)
  const body = got.json
  t.equal(body?.object, 'error', `${what}: object`)
  t.equal(body?.type, type, `${what}: type`)
  t.equal(body?.code, code, `${what}: code`)
  t.type(body?.message, 'string', `${what}: message`)
  t.ok(body?.message.length > 0, `${what}: a message`)
  t.same(body?.error, { type, code, message: body?.message, param: body?.param }, `${what}: OpenAI's shape too`)
  t.match(got.res.headers['x-request-id'], UUID, `${what}: x-request-id`)
  t.equal(body?.request_id, got.res.headers['x-request-id'], `${what}: request_id is the x-request-id`)
  t.same(got.keys, [], `${what}: nothing reached the upstream`)
}

function safeJson (body: string): any {
  try {
    return JSON.parse(body)
  } catch {
    return undefined
  }
}

t.test('a token bound to a key uses it, and refuses any other', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace({ keys: ['default', 'production'], tokenBody: { mistralKey: 'production' } })
  const production = `${ws.mistralKey}-production`
  for (const headers of [ws.headers, { ...ws.headers, 'x-tramontane-key': 'production' }]) {
    const got = await call(s, 'POST', '/v1/chat/completions', headers, chat)
    t.equal(got.status, 200)
    t.same(got.keys, [production], 'the fake saw the production key')
  }
  for (const other of ['default', 'development']) {
    const got = await call(s, 'POST', '/v1/chat/completions', { ...ws.headers, 'x-tramontane-key': other }, chat)
    gatewayError(t, got, 400, 'invalid_request_error', 'unknown_mistral_key', `bound token asking for ${other}`)
    t.equal(got.json.param, 'x-tramontane-key')
    t.match(got.json.message, /production/, 'the message names the bound key')
  }
})

t.test('an unbound token picks a key by header, `default` otherwise', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace({ keys: ['default', 'production', 'development'] })
  const cases: Array<[string | undefined, string]> = [
    [undefined, ws.mistralKey],
    ['default', ws.mistralKey],
    ['production', `${ws.mistralKey}-production`],
    ['development', `${ws.mistralKey}-development`]
  ]
  for (const [name, key] of cases) {
    const headers = name === undefined ? ws.headers : { ...ws.headers, 'x-tramontane-key': name }
    const got = await call(s, 'GET', '/v1/models', headers)
    t.equal(got.status, 200, `key ${name}`)
    t.same(got.keys, [key], `key ${name}: the fake saw the right key`)
  }

  const unknown = await call(s, 'POST', '/v1/chat/completions', { ...ws.headers, 'x-tramontane-key': 'nope' }, chat)
  t.equal(unknown.status, 400)
  const message = 'No Mistral key named \'nope\' in this workspace'
  t.same(unknown.json, {
    object: 'error',
    type: 'invalid_request_error',
    code: 'unknown_mistral_key',
    message,
    param: 'x-tramontane-key',
    request_id: unknown.res.headers['x-request-id'],
    error: { type: 'invalid_request_error', code: 'unknown_mistral_key', message, param: 'x-tramontane-key' }
  })
  gatewayError(t, unknown, 400, 'invalid_request_error', 'unknown_mistral_key', 'unknown key name')
  // key names are exact: no case folding
  const upper = await call(s, 'GET', '/v1/models', { ...ws.headers, 'x-tramontane-key': 'Production' })
  gatewayError(t, upper, 400, 'invalid_request_error', 'unknown_mistral_key', 'key name in another case')
  // a name of any length, of the client's making: refused from the workspace's cached names, its echo cut
  const long = await call(s, 'GET', '/v1/models', { ...ws.headers, 'x-tramontane-key': 'k'.repeat(10_000) })
  gatewayError(t, long, 400, 'invalid_request_error', 'unknown_mistral_key', 'a name of 10,000 characters')
  t.ok(long.json.message.length < 200, `its message is short (${long.json.message.length} characters)`)
})

t.test('a workspace without a `default` key needs the header', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace({ keys: ['production'] })
  const missing = await call(s, 'POST', '/v1/chat/completions', ws.headers, chat)
  gatewayError(t, missing, 400, 'invalid_request_error', 'unknown_mistral_key', 'no default key')
  t.match(missing.json.message, /'default'/)
  const named = await call(s, 'POST', '/v1/chat/completions', { ...ws.headers, 'x-tramontane-key': 'production' }, chat)
  t.equal(named.status, 200)
  t.same(named.keys, [`${ws.mistralKey}-production`])
})

t.test('scopes: a token reaches only the areas it was minted for', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace({ tokenBody: { scopes: ['embeddings'] } })
  const allowed = await call(s, 'POST', '/v1/embeddings', ws.headers, embed)
  t.equal(allowed.status, 200)
  t.same(allowed.keys, [ws.mistralKey])
  t.equal(allowed.upstream[0].path, '/v1/embeddings')
  t.equal(allowed.json.object, 'list')

  for (const [method, url, payload, area] of [
    ['POST', '/v1/chat/completions', chat, 'chat'],
    ['POST', '/v1/chat/completions', { ...chat, stream: true }, 'chat'],
    ['GET', '/v1/models', undefined, 'models'],
    ['POST', '/v1/fim/completions', { model: 'codestral-latest', prompt: 'def' }, 'fim']
  ] as const) {
    const denied = await call(s, method, url, ws.headers, payload)
    gatewayError(t, denied, 403, 'permission_error', 'scope_denied', `${method} ${url}`)
    t.match(denied.json.message, area, `the message names '${area}'`)
  }

  const both = await s.admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`,
    { name: 'two', scopes: ['embeddings', 'chat'] })
  const headers = { authorization: `Bearer ${both.json.token}` }
  t.equal((await call(s, 'POST', '/v1/chat/completions', headers, chat)).status, 200)
  t.equal((await call(s, 'POST', '/v1/embeddings', headers, embed)).status, 200)
  gatewayError(t, await call(s, 'GET', '/v1/models', headers), 403, 'permission_error', 'scope_denied',
    'models with two scopes')
})

t.test('organisation routes are denied until the operator allows them', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  // each is `organization: true` in operations.generated.json, or the organisation-wide connector activation
  const organisation: Array<[string, string, unknown?]> = [
    ['GET', '/v1/users/me'],
    ['GET', '/v1/users/me/organizations'],
    ['GET', '/v1/users/me/workspaces'],
    ['GET', '/v1/admin/api-keys'],
    ['POST', '/v1/admin/api-keys', { name: 'tenant key' }],
    ['DELETE', '/v1/admin/api-keys/key_123'],
    ['GET', '/v1/admin/users'],
    ['PATCH', '/v1/admin/users/user_1', { role: 'admin' }],
    ['GET', '/v1/admin/usage?month=2025-01'],
    ['POST', '/v1/admin/spend-limit', { limit: 1 }],
    ['PATCH', '/v1/admin/workspaces/0d7d1b52-3c3e-4b0e-9a57-2e0c3f3f8a11', { name: 'x' }],
    ['GET', '/v1/rag/deployments'],
    ['GET', '/v1/workflows/deployments'],
    ['GET', '/v1/connectors/conn_1/organization/credentials'],
    ['POST', '/v1/connectors/conn_1/organization/activate'],
    ['POST', '/v1/connectors/conn_1/organization/deactivate']
  ]
  for (const [method, url, payload] of organisation) {
    const got = await call(s, method, url, ws.headers, payload)
    gatewayError(t, got, 403, 'permission_error', 'organization_route_denied', `${method} ${url}`)
  }
  // the same connector operation for the user or a workspace is an ordinary call
  for (const url of ['/v1/connectors/conn_1/user/activate', '/v1/connectors/conn_1/workspace/activate',
    '/v1/connectors/conn_1/user/deactivate']) {
    const got = await call(s, 'POST', url, ws.headers)
    t.equal(got.upstream.length, 1, `${url} forwarded`)
    t.equal(got.upstream[0]?.path, url)
    t.same(got.keys, [ws.mistralKey])
    t.notOk(got.json?.code === 'organization_route_denied', `${url} not denied`)
  }

  const allowed = await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { allowOrganizationRoutes: true })
  t.equal(allowed.statusCode, 200)
  t.equal(allowed.json.allowOrganizationRoutes, true)
  for (const [method, url, payload] of organisation) {
    // /v1/users/me* is authenticated by x-api-key (DashboardUserContextAuth); enqueued: the fake reads only a bearer
    if (url.startsWith('/v1/users/me')) s.mistral.enqueueError(404, { detail: 'Not Found' }, {}, url)
    const got = await call(s, method, url, ws.headers, payload)
    t.equal(got.upstream.length, 1, `allowed: ${method} ${url} forwarded`)
    t.match(got.upstream[0], { method, path: url }, `allowed: ${method} ${url} as sent`)
    const credential = got.upstream[0]?.headers[url.startsWith('/v1/users/me') ? 'x-api-key' : 'authorization']
    t.match(credential, ws.mistralKey, `allowed: ${method} ${url} with the workspace key`)
    t.equal(got.status, 404, 'the fake\'s answer passes through')
    t.same(got.json, { detail: 'Not Found', error: { message: 'Not Found', type: 'not_found_error', code: null, param: null } },
      'Mistral\'s body, with the error object OpenAI clients read')
  }

  const disallowed = await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { allowOrganizationRoutes: false })
  t.equal(disallowed.statusCode, 200)
  const again = await call(s, 'GET', '/v1/users/me', ws.headers)
  gatewayError(t, again, 403, 'permission_error', 'organization_route_denied', 'denied again once disallowed')
})

t.test('organisation routes carry the key where their security scheme says, and their 401 disables no key',
  async (t) => {
    const s = await buildTestApp(t)
    const ws = await s.createWorkspace()
    t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { allowOrganizationRoutes: true })).statusCode,
      200)
    // DashboardUserContextAuth (mistral-openapi.yaml): the API key in x-api-key
    s.mistral.enqueue((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('{"id":"user_1"}')
    }, '/v1/users/me')
    const me = await call(s, 'GET', '/v1/users/me', { ...ws.headers, 'x-api-key': 'client-x-api-key' })
    t.equal(me.status, 200)
    t.equal(me.upstream[0]?.headers['x-api-key'], ws.mistralKey, 'x-api-key carries the workspace key')
    t.equal(me.upstream[0]?.headers.authorization, undefined, 'and no bearer beside it')

    // AdminApiKey: a workspace key is no admin key, and Mistral says 401; that says nothing of the key's inference use
    const rejected = { detail: 'Unauthorized' }
    s.mistral.enqueueError(401, rejected, {}, '/v1/admin/users')
    const admin = await call(s, 'GET', '/v1/admin/users', ws.headers)
    t.equal(admin.status, 401, 'Mistral\'s 401 reaches the client')
    t.match(admin.json, rejected, 'as Mistral sent it')
    t.same(admin.keys, [ws.mistralKey], 'sent once')
    s.mistral.enqueueError(401, rejected, {}, '/v1/users/me')
    t.equal((await call(s, 'GET', '/v1/users/me', ws.headers)).status, 401, 'a user-context route\'s 401 too')

    const keys = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)
    t.match(keys.json, { data: [{ name: 'default', status: 'active' }] }, 'the key stays active')
    const after = await call(s, 'POST', '/v1/chat/completions', ws.headers, chat)
    t.equal(after.status, 200, 'and serves the next chat call')
    t.same(after.keys, [ws.mistralKey])
  })

// Mistral's API is FastAPI behind uvicorn, which percent-decodes the path before routing and validating path
// parameters: what the gateway classifies must be what Mistral will route, or the organisation check is bypassed.
t.test('percent-encoded paths cannot reach organisation routes', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const disguised: Array<[string, string]> = [
    // consumer_scope 'organization', spelled with percent-escapes: Mistral decodes it to the enum value
    ['POST', '/v1/connectors/conn_1/%6Frganization/activate'],
    ['POST', '/v1/connectors/conn_1/organizatio%6E/deactivate'],
    ['POST', '/v1/connectors/conn_1/%6f%72%67%61%6e%69%7a%61%74%69%6f%6e/activate'],
    // an escaped slash turns one id into several segments once decoded
    ['GET', '/v1/connectors/conn_1%2Forganization%2Fcredentials'],
    ['DELETE', '/v1/connectors/conn_1%2Forganization%2Fcredentials%2Fmain'],
    ['GET', '/v1/connectors/conn_1%2fworkspace%2fcredentials']
  ]
  for (const [method, url] of disguised) {
    const got = await call(s, method, url, ws.headers)
    t.same(got.keys, [], `${method} ${url}: nothing reached the upstream`)
    const code = got.json?.code
    const refused = (got.status === 403 && code === 'organization_route_denied') ||
      (got.status === 404 && code === 'unknown_route')
    t.ok(refused, `${method} ${url}: refused by the gateway (got ${got.status} ${code})`)
    t.equal(got.json?.request_id, got.res.headers['x-request-id'], `${method} ${url}: the gateway's own answer`)
  }
})

t.test('unknown routes get 404 from the gateway and never reach Mistral', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const unknown: Array<[string, string, unknown?]> = [
    ['GET', '/v1/nope'],
    ['POST', '/v1/nope', { a: 1 }],
    ['GET', '/v3/x'],
    ['GET', '/v1/models/'],
    ['GET', '/v1//models'],
    ['GET', '/v1/files/'],
    ['GET', '/v1'],
    ['GET', '/v2/nope'],
    ['PUT', '/v1/models'],
    ['DELETE', '/v1/chat/completions'],
    ['GET', '/v1/chat/completions'],
    ['OPTIONS', '/v1/models'],
    ['GET', '/V1/models'],
    ['GET', '/v1/models/mistral-small-latest/extra']
  ]
  for (const [method, url, payload] of unknown) {
    const got = await call(s, method, url, ws.headers, payload)
    gatewayError(t, got, 404, 'not_found_error', 'unknown_route', `${method} ${url}`)
  }
  const head = await call(s, 'HEAD', '/v1/models', ws.headers)
  t.equal(head.status, 404, 'HEAD is not in the spec')
  t.equal(head.res.body, '', 'HEAD has no body')
  t.match(head.res.headers['x-request-id'], UUID)
  t.same(head.keys, [], 'HEAD: nothing upstream')
  // outside /v1 and /v2 there is no token to check; inside, authentication comes first (DESIGN.md, the request path)
  gatewayError(t, await call(s, 'GET', '/v3/x', {}), 404, 'not_found_error', 'unknown_route', 'GET /v3/x, no token')
  gatewayError(t, await call(s, 'GET', '/v1/nope', {}), 401, 'authentication_error', 'invalid_token',
    'GET /v1/nope, no token')
  // and the gateway's list still works with the same token
  const known = await call(s, 'GET', '/v1/models', ws.headers)
  t.equal(known.status, 200)
  t.same(known.keys, [ws.mistralKey])
})

t.test('query strings and path segments are forwarded verbatim', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  for (const url of [
    '/v1/files?page=2&purpose=batch',
    '/v1/files?purpose=batch&page=0&page_size=5',
    '/v1/files?search=a%20b%2Fc&x=%E2%82%AC&empty=&flag&dup=1&dup=2',
    '/v1/models/ft%3Amistral-small%3Aabc',
    '/v1/agents?page=0&page_size=10&metadata=%7B%22a%22%3A1%7D'
  ]) {
    const got = await call(s, 'GET', url, ws.headers)
    t.equal(got.upstream.length, 1, `${url} forwarded once`)
    t.equal(got.upstream[0]?.path, url, `${url} verbatim`)
  }
  const page = await call(s, 'GET', '/v1/files?page=2&purpose=batch', ws.headers)
  t.equal(page.status, 200)
  t.equal(page.json.object, 'list')
})

t.test('only the client\'s harmless headers go upstream', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const sent: Headers = {
    ...ws.headers,
    'content-type': 'application/json',
    'user-agent': 'tenant-app/1.2.3',
    accept: 'application/json',
    'x-custom-trace': 'kept-123',
    connection: 'keep-alive, x-nominated-hop',
    'x-nominated-hop': 'dropped',
    'keep-alive': 'timeout=5',
    te: 'trailers',
    trailer: 'x-checksum',
    upgrade: 'h2c',
    'proxy-authorization': 'Basic cHJveHk6cGFzcw==',
    'proxy-connection': 'keep-alive',
    cookie: 'session=tenant-session-cookie',
    forwarded: 'for=203.0.113.7;proto=https',
    'x-forwarded-for': '203.0.113.7',
    'x-forwarded-host': 'tenant.example',
    'x-forwarded-proto': 'https',
    'x-forwarded-port': '443',
    'x-real-ip': '203.0.113.7',
    via: '1.1 tenant-proxy',
    'x-request-id': 'client-chosen-request-id',
    'x-api-key': 'client-x-api-key',
    'x-tramontane-key': 'default',
    'x-tramontane-debug': '1',
    'x-stainless-lang': 'js'
  }
  const got = await call(s, 'POST', '/v1/chat/completions', sent, chat)
  t.equal(got.status, 200)
  const received = got.upstream[0]
  t.ok(received, 'the call reached the fake')
  const headers = received.headers
  t.equal(headers.authorization, `Bearer ${ws.mistralKey}`, 'the workspace key replaces the client\'s authorization')
  t.notMatch(JSON.stringify(headers), ws.token, 'the workspace token is nowhere upstream')
  t.equal(headers['user-agent'], 'tenant-app/1.2.3')
  t.equal(headers['content-type'], 'application/json')
  t.equal(headers.accept, 'application/json')
  t.equal(headers['x-custom-trace'], 'kept-123')
  t.same(received.json, chat, 'the body arrived whole')
  for (const name of ['x-nominated-hop', 'keep-alive', 'te', 'trailer', 'upgrade', 'proxy-authorization',
    'proxy-connection', 'cookie', 'forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto',
    'x-forwarded-port', 'x-real-ip', 'via', 'x-request-id', 'x-api-key', 'x-tramontane-key', 'x-tramontane-debug',
    'x-stainless-lang']) {
    t.equal(headers[name], undefined, `${name} stays at the gateway`)
  }
  t.notOk(Object.keys(headers).some((name) => name.startsWith('x-tramontane-') || name.startsWith('x-forwarded-')))
  t.notOk((headers.connection ?? '').includes('x-nominated-hop'), 'the client\'s connection options are not relayed')
  t.notMatch(JSON.stringify(headers), 'tenant-session-cookie')
  t.notMatch(JSON.stringify(headers), '203.0.113.7')

  // what Mistral answers with: its session cookie and its own request id stay behind
  t.equal(got.res.headers['set-cookie'], undefined, 'Mistral\'s cookie is not relayed')
  t.match(got.res.headers['x-request-id'], UUID)
  t.not(got.res.headers['x-request-id'], 'client-chosen-request-id',
    'the request id is the gateway\'s, not the client\'s')
})

t.test('every response carries an x-request-id; gateway errors repeat it in request_id', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const ids = new Set<string>()

  const ok = await call(s, 'POST', '/v1/chat/completions', ws.headers, chat)
  t.equal(ok.status, 200)
  const okId = String(ok.res.headers['x-request-id'])
  t.match(okId, UUID, 'success: x-request-id')
  ids.add(okId)
  const list = await call(s, 'GET', '/v1/models', { ...ws.headers, 'x-request-id': 'mine' })
  t.match(list.res.headers['x-request-id'], UUID, 'non-metered success: x-request-id')
  ids.add(String(list.res.headers['x-request-id']))
  await s.app.usage.flush()
  const usage = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)
  t.same(usage.json.records.map((r: { requestId: string }) => r.requestId), [okId], 'the ledger uses the same id')

  const errors: Array<[Call, number, string, string, string]> = [
    [await call(s, 'GET', '/v1/models', {}), 401, 'authentication_error', 'invalid_token', 'no token'],
    [await call(s, 'GET', '/v1/models', { ...ws.headers, 'x-tramontane-key': 'nope' }), 400, 'invalid_request_error',
      'unknown_mistral_key', 'unknown key'],
    [await call(s, 'GET', '/v1/users/me', ws.headers), 403, 'permission_error', 'organization_route_denied',
      'org route'],
    [await call(s, 'GET', '/v1/nope', ws.headers), 404, 'not_found_error', 'unknown_route', 'unknown route'],
    [await call(s, 'GET', '/v3/x', ws.headers), 404, 'not_found_error', 'unknown_route', 'outside the proxy'],
    [await call(s, 'POST', '/v1/chat/completions', { ...ws.headers, 'content-type': 'application/json' }, '{"model":'),
      400, 'invalid_request_error', 'invalid_json', 'bad JSON']
  ]
  for (const [got, status, type, code, what] of errors) {
    gatewayError(t, got, status, type, code, what)
    ids.add(String(got.res.headers['x-request-id']))
  }

  // Mistral's own errors keep their fields (the Mistral SDK parses `detail`) and gain the `error` object OpenAI
  // clients read, with our request id beside them
  const detail = [{ type: 'missing', loc: ['body', 'messages'], msg: 'Field required', input: { model: 'x' } }]
  s.mistral.enqueueError(422, { detail })
  const upstream = await call(s, 'POST', '/v1/chat/completions', ws.headers, chat)
  t.equal(upstream.status, 422)
  t.same(JSON.parse(upstream.res.body), {
    detail, error: { message: 'body.messages: Field required', type: 'invalid_request_error', code: null, param: null }
  }, 'the 422 body reaches the client with its detail, and a message for OpenAI clients')
  t.match(upstream.res.headers['content-type'], /^application\/json/)
  t.same(upstream.keys, [ws.mistralKey], 'the 422 came from upstream')
  t.match(upstream.res.headers['x-request-id'], UUID, 'upstream error: x-request-id')
  ids.add(String(upstream.res.headers['x-request-id']))

  // a non-metered route passes Mistral's error through too, with a body that is not even JSON (a 503 is retried:
  // the last one reaches the client)
  const edgeText = 'upstream connect error or disconnect/reset before headers'
  for (let i = 0; i <= s.config.UPSTREAM_RETRIES; i++) s.mistral.enqueueError(503, edgeText, { 'content-type': 'text/plain' })
  const text = await call(s, 'GET', '/v1/models', ws.headers)
  t.equal(text.status, 503)
  t.equal(text.res.body, edgeText)
  t.match(text.res.headers['x-request-id'], UUID)
  ids.add(String(text.res.headers['x-request-id']))

  const adminError = await s.admin('GET', '/admin/v1/workspaces/no-such-workspace')
  t.equal(adminError.statusCode, 404)
  t.ok(adminError.json.request_id, 'admin errors carry a request_id too')

  t.equal(ids.size, 2 + errors.length + 2, 'every request got its own id')
})
