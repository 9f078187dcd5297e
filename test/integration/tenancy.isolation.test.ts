import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { generateWorkspaceToken } from '../../src/tenancy/token-format.js'
import { buildTestApp, TEST_ADMIN_TOKEN, type TestApp, type TestWorkspace } from '../helpers/app.js'

// DESIGN.md, Isolation: the workspace comes only from the token, every data access is scoped by workspace, another
// workspace's ids answer 404, and the admin API and the proxy never accept each other's credentials.

type Setup = TestApp & { a: TestWorkspace, b: TestWorkspace }
type Headers = Record<string, string>

const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hello from a tenant' }] }

/** A holds `default` and `production`, B holds `default` and `staging`: each has one name the other lacks. */
async function twoWorkspaces (t: Test): Promise<Setup> {
  const testApp = await buildTestApp(t)
  const a = await testApp.createWorkspace({ keys: ['default', 'production'] })
  const b = await testApp.createWorkspace({ keys: ['default', 'staging'] })
  return { ...testApp, a, b }
}

/** One proxied call: its status, its body and the Mistral keys the fake received for it (none: nothing went up). */
async function proxied (s: TestApp, method: string, url: string, headers: Headers, payload?: unknown) {
  const before = s.mistral.received.length
  const res = await s.app.inject({ method: method as 'GET', url, headers, payload: payload as object })
  const upstream = s.mistral.received.slice(before)
  const keys = upstream.map((r) => r.apiKey)
  return { status: res.statusCode, json: safeJson(res.body), body: res.body, res, upstream, keys }
}

/** The workspace token still opens the proxy, and the fake sees exactly `expectedKey`. */
async function reaches (t: Test, s: TestApp, headers: Headers, expectedKey: string, what: string) {
  const call = await proxied(s, 'GET', '/v1/models', headers)
  t.equal(call.status, 200, `${what}: 200`)
  t.same(call.keys, [expectedKey], `${what}: the fake received ${expectedKey.slice(0, 20)}…`)
}

/** What the admin API shows of a workspace, less what using a token changes (lastUsedAt). */
async function snapshot (s: TestApp, ws: TestWorkspace) {
  const workspace = (await s.admin('GET', `/admin/v1/workspaces/${ws.id}`)).json
  const keys = (await s.admin('GET', `/admin/v1/workspaces/${ws.id}/mistral-keys`)).json.data
  const tokens = (await s.admin('GET', `/admin/v1/workspaces/${ws.id}/tokens`)).json.data
    .map(({ lastUsedAt: _lastUsedAt, ...token }: Record<string, unknown>) => token)
  return { workspace, keys, tokens }
}

function isNotFound (t: Test, res: { statusCode: number, json: any }, what: string) {
  t.equal(res.statusCode, 404, `${what}: 404`)
  t.equal(res.json?.code, 'not_found', `${what}: not_found`)
  t.equal(res.json?.type, 'not_found_error', `${what}: not_found_error`)
}

function withoutRequestId (body: Record<string, unknown>) {
  const { request_id: _requestId, ...rest } = body
  return rest
}

function safeJson (body: string): any {
  try {
    return JSON.parse(body)
  } catch {
    return undefined
  }
}

t.test('admin routes addressed with the other workspace\'s ids answer 404 and change nothing', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, admin } = s
  const bKeys: Array<{ id: string, name: string }> =
    (await admin('GET', `/admin/v1/workspaces/${b.slug}/mistral-keys`)).json.data
  const bStaging = bKeys.find((key) => key.name === 'staging')!
  const bDefault = bKeys.find((key) => key.name === 'default')!
  // B's token has limits of its own, so that B's limits view lists it
  const bLimits = await admin('PATCH', `/admin/v1/workspaces/${b.slug}/tokens/${b.tokenId}`, { limits: { rpm: 500 } })
  t.equal(bLimits.statusCode, 200)
  const before = await snapshot(s, b)
  const aBefore = await snapshot(s, a)

  // A's path, B's ids
  const crossed: Array<[string, string, unknown?]> = [
    ['DELETE', `/admin/v1/workspaces/${a.slug}/tokens/${b.tokenId}`],
    ['DELETE', `/admin/v1/workspaces/${a.id}/tokens/${b.tokenId}`],
    ['PATCH', `/admin/v1/workspaces/${a.slug}/tokens/${b.tokenId}`, { limits: { rpm: 1 } }],
    ['PATCH', `/admin/v1/workspaces/${a.id}/tokens/${b.tokenId}`, { caps: { daily: '0.01' } }],
    ['PUT', `/admin/v1/workspaces/${a.slug}/mistral-keys/staging`, { key: 'sk-hijacked-staging-0001' }],
    ['PUT', `/admin/v1/workspaces/${a.slug}/mistral-keys/${bStaging.id}`, { key: 'sk-hijacked-staging-0002' }],
    ['PUT', `/admin/v1/workspaces/${a.slug}/mistral-keys/${bDefault.id}`, { key: 'sk-hijacked-default-0003' }],
    ['DELETE', `/admin/v1/workspaces/${a.slug}/mistral-keys/staging`],
    ['DELETE', `/admin/v1/workspaces/${a.slug}/mistral-keys/${bStaging.id}`],
    // B's token and key ids where a workspace id belongs
    ['GET', `/admin/v1/workspaces/${b.tokenId}`],
    ['PATCH', `/admin/v1/workspaces/${b.tokenId}`, { status: 'suspended' }],
    ['DELETE', `/admin/v1/workspaces/${b.tokenId}`],
    ['GET', `/admin/v1/workspaces/${bStaging.id}`],
    ['PATCH', `/admin/v1/workspaces/${bDefault.id}`, { name: 'renamed' }],
    ['DELETE', `/admin/v1/workspaces/${bDefault.id}`],
    ['POST', `/admin/v1/workspaces/${b.tokenId}/mistral-keys`, { name: 'extra', key: 'sk-planted-key-0004' }],
    ['GET', `/admin/v1/workspaces/${b.tokenId}/mistral-keys`],
    ['PUT', `/admin/v1/workspaces/${b.tokenId}/mistral-keys/default`, { key: 'sk-hijacked-default-0005' }],
    ['DELETE', `/admin/v1/workspaces/${b.tokenId}/mistral-keys/default`],
    ['POST', `/admin/v1/workspaces/${b.tokenId}/tokens`, { name: 'planted' }],
    ['GET', `/admin/v1/workspaces/${b.tokenId}/tokens`],
    ['DELETE', `/admin/v1/workspaces/${bDefault.id}/tokens/${b.tokenId}`],
    ['PATCH', `/admin/v1/workspaces/${b.tokenId}/tokens/${b.tokenId}`, { limits: { rpm: 1 } }],
    ['GET', `/admin/v1/workspaces/${b.tokenId}/usage`],
    ['GET', `/admin/v1/workspaces/${b.tokenId}/limits`]
  ]
  for (const [method, url, payload] of crossed) isNotFound(t, await admin(method, url, payload), `${method} ${url}`)
  // and the other way round: B's path, A's token id
  isNotFound(t, await admin('DELETE', `/admin/v1/workspaces/${b.slug}/tokens/${a.tokenId}`), 'B path, A token id')
  isNotFound(t, await admin('PATCH', `/admin/v1/workspaces/${b.slug}/tokens/${a.tokenId}`, { limits: { rpm: 2 } }),
    'B path, A token id, PATCH')
  const prodKey = { key: 'sk-hijacked-prod-0006' }
  isNotFound(t, await admin('PUT', `/admin/v1/workspaces/${b.slug}/mistral-keys/production`, prodKey),
    'B path, A-only key name')

  t.same(await snapshot(s, b), before, 'nothing of B changed')
  t.same(await snapshot(s, a), aBefore, 'nothing of A changed either')
  const bToken = before.tokens.find((x: { id: string }) => x.id === b.tokenId)
  t.match(bToken, { limits: { rpm: 500 } }, 'B kept its own limits')
  // the limits view of a workspace lists its own tokens only
  const aView = await admin('GET', `/admin/v1/workspaces/${a.slug}/limits`)
  const bView = await admin('GET', `/admin/v1/workspaces/${b.slug}/limits`)
  t.equal(aView.statusCode, 200)
  t.same(Object.keys(bView.json.tokens), [b.tokenId], 'B\'s limits list B\'s limited token')
  t.same(Object.keys(aView.json.tokens), [], 'A\'s limits list none of B\'s tokens')
  t.notMatch(aView.body, b.tokenId)
  await reaches(t, s, b.headers, b.mistralKey, 'B default')
  await reaches(t, s, { ...b.headers, 'x-tramontane-key': 'staging' }, `${b.mistralKey}-staging`, 'B staging')
  await reaches(t, s, a.headers, a.mistralKey, 'A default')
})

t.test('workspace routes act on the addressed workspace only', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, admin } = s
  const before = await snapshot(s, b)
  t.equal((await admin('GET', `/admin/v1/workspaces/${a.id}`)).json.slug, a.slug)
  t.equal((await admin('GET', `/admin/v1/workspaces/${a.slug}`)).json.id, a.id)

  const patched = await admin('PATCH', `/admin/v1/workspaces/${a.slug}`, { name: 'A renamed', status: 'suspended' })
  t.equal(patched.statusCode, 200)
  t.match(patched.json, { id: a.id, name: 'A renamed', status: 'suspended' })
  t.same(await snapshot(s, b), before, 'patching A left B as it was')
  await reaches(t, s, b.headers, b.mistralKey, 'B while A is suspended')

  t.equal((await admin('DELETE', `/admin/v1/workspaces/${a.id}`)).statusCode, 204)
  for (const ref of [a.id, a.slug]) {
    isNotFound(t, await admin('GET', `/admin/v1/workspaces/${ref}`), `GET deleted ${ref}`)
    isNotFound(t, await admin('PATCH', `/admin/v1/workspaces/${ref}`, { name: 'zombie' }), `PATCH deleted ${ref}`)
    isNotFound(t, await admin('DELETE', `/admin/v1/workspaces/${ref}`), `DELETE deleted ${ref}`)
    isNotFound(t, await admin('GET', `/admin/v1/workspaces/${ref}/mistral-keys`), `keys of deleted ${ref}`)
    isNotFound(t, await admin('POST', `/admin/v1/workspaces/${ref}/tokens`, { name: 'late' }), `mint in deleted ${ref}`)
  }
  t.same(await snapshot(s, b), before, 'deleting A left B as it was')
  await reaches(t, s, b.headers, b.mistralKey, 'B after A was deleted')
  const listed = (await admin('GET', '/admin/v1/workspaces')).json.data.map((w: { id: string }) => w.id)
  t.ok(listed.includes(b.id), 'B is listed')
  t.notOk(listed.includes(a.id), 'deleted A is not')
})

t.test('mistral keys: A\'s key routes never read or touch B\'s keys', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, admin } = s
  const bKeysBefore = (await admin('GET', `/admin/v1/workspaces/${b.slug}/mistral-keys`)).json.data
  const bIds = bKeysBefore.map((key: { id: string }) => key.id)

  const aList = await admin('GET', `/admin/v1/workspaces/${a.slug}/mistral-keys`)
  t.same(aList.json.data.map((key: { name: string }) => key.name), ['default', 'production'])
  t.notOk(aList.json.data.some((key: { id: string }) => bIds.includes(key.id)), 'no B key id in A\'s list')
  t.notMatch(aList.body, b.mistralKey.slice(-4) + '"', 'no B key last4')

  // A adds a key under B's name: A gets its own, B's stays B's
  const aStagingSecret = `${a.mistralKey}-own-staging`
  const added = await admin('POST', `/admin/v1/workspaces/${a.slug}/mistral-keys`,
    { name: 'staging', key: aStagingSecret })
  t.equal(added.statusCode, 201)
  t.notOk(bIds.includes(added.json.id), 'a new id, not B\'s')
  await reaches(t, s, { ...a.headers, 'x-tramontane-key': 'staging' }, aStagingSecret, 'A staging')
  await reaches(t, s, { ...b.headers, 'x-tramontane-key': 'staging' }, `${b.mistralKey}-staging`, 'B staging')

  // A replaces and deletes its own `default`: B's `default` is another row
  const rotated = `${a.mistralKey}-rotated`
  t.equal((await admin('PUT', `/admin/v1/workspaces/${a.slug}/mistral-keys/default`, { key: rotated })).statusCode, 200)
  await reaches(t, s, a.headers, rotated, 'A default after rotation')
  await reaches(t, s, b.headers, b.mistralKey, 'B default after A rotated')
  // A's unbound token relies on A's `default`: its deletion is refused until the token is revoked
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${a.slug}/mistral-keys/default`)).statusCode, 409)
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${a.slug}/tokens/${a.tokenId}`)).statusCode, 200)
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${a.slug}/mistral-keys/default`)).statusCode, 204)
  // an unbound token minted after it never falls back to B's `default`
  const unbound = await admin('POST', `/admin/v1/workspaces/${a.slug}/tokens`, { name: 'after default' })
  t.equal(unbound.statusCode, 201)
  const gone = await proxied(s, 'GET', '/v1/models', { authorization: `Bearer ${unbound.json.token}` })
  t.equal(gone.status, 400)
  t.equal(gone.json.code, 'unknown_mistral_key')
  t.same(gone.keys, [], 'nothing upstream for A without a default')
  await reaches(t, s, b.headers, b.mistralKey, 'B default after A deleted its own')
  const bKeysAfter = (await admin('GET', `/admin/v1/workspaces/${b.slug}/mistral-keys`)).json.data
  t.same(bKeysAfter, bKeysBefore, 'B\'s keys unchanged')
})

t.test('tokens: minting, listing and revoking stay inside the workspace', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, admin } = s

  const bound = await admin('POST', `/admin/v1/workspaces/${a.slug}/tokens`, { name: 'steal', mistralKey: 'staging' })
  t.equal(bound.statusCode, 400, 'a token of A cannot bind B\'s key name')
  t.equal(bound.json.param, 'mistralKey')

  const second = await admin('POST', `/admin/v1/workspaces/${b.slug}/tokens`, { name: 'second' })
  t.equal(second.statusCode, 201)
  const tokenIds = async (slug: string): Promise<string[]> =>
    (await admin('GET', `/admin/v1/workspaces/${slug}/tokens`)).json.data.map((x: { id: string }) => x.id)
  const aTokens = await tokenIds(a.slug)
  t.same(aTokens, [a.tokenId], 'A lists only its own token')
  const bTokens = await tokenIds(b.slug)
  t.same(bTokens.sort(), [b.tokenId, second.json.id].sort(), 'B lists its two')

  isNotFound(t, await admin('DELETE', `/admin/v1/workspaces/${a.slug}/tokens/${b.tokenId}`), 'revoke B\'s token via A')
  isNotFound(t, await admin('DELETE', `/admin/v1/workspaces/${a.slug}/tokens/${second.json.id}`),
    'revoke B\'s second via A')
  await reaches(t, s, b.headers, b.mistralKey, 'B token after the attempt')
  await reaches(t, s, { authorization: `Bearer ${second.json.token}` }, b.mistralKey,
    'B second token after the attempt')
  const bList = (await admin('GET', `/admin/v1/workspaces/${b.slug}/tokens`)).json.data
  t.ok(bList.every((x: { revokedAt: unknown }) => x.revokedAt === null), 'no B token is revoked')

  // A revoking its own token leaves B's alone
  const revoked = await admin('DELETE', `/admin/v1/workspaces/${a.slug}/tokens/${a.tokenId}`)
  t.equal(revoked.statusCode, 200)
  t.equal(revoked.json.id, a.tokenId)
  t.equal((await proxied(s, 'GET', '/v1/models', a.headers)).status, 401, 'A token revoked')
  await reaches(t, s, b.headers, b.mistralKey, 'B token after A revoked its own')
})

t.test('usage: a workspace\'s view holds its own records only', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, admin, app } = s
  const ids = { a: [] as string[], b: [] as string[] }
  for (let i = 0; i < 2; i++) {
    const res = await proxied(s, 'POST', '/v1/chat/completions', a.headers, chat)
    t.equal(res.status, 200)
    ids.a.push(String(res.res.headers['x-request-id']))
  }
  for (let i = 0; i < 3; i++) {
    const res = await proxied(s, 'POST', '/v1/embeddings', { ...b.headers, 'x-tramontane-key': 'staging' },
      { model: 'mistral-embed', input: [`text ${i}`] })
    t.equal(res.status, 200)
    ids.b.push(String(res.res.headers['x-request-id']))
  }
  await app.usage.flush()

  const aUsage = await admin('GET', `/admin/v1/workspaces/${a.slug}/usage`)
  t.equal(aUsage.statusCode, 200)
  const requestIds = (records: Array<{ requestId: string }>) => records.map((r) => r.requestId).sort()
  t.same(requestIds(aUsage.json.records), [...ids.a].sort(), 'A sees its 2 calls')
  t.equal(aUsage.json.totals.calls, 2)
  t.ok(aUsage.json.records.every((r: { tokenId: string, operation: string, keyName: string }) =>
    r.tokenId === a.tokenId && r.operation === 'chat' && r.keyName === 'default'), 'every A record is A\'s chat')
  for (const id of ids.b) t.notMatch(aUsage.body, id, `B's ${id} is not in A's view`)
  t.notMatch(aUsage.body, b.tokenId, 'B\'s token id is not in A\'s view')

  const bUsage = await admin('GET', `/admin/v1/workspaces/${b.id}/usage`)
  t.same(requestIds(bUsage.json.records), [...ids.b].sort(), 'B sees its 3 calls')
  t.equal(bUsage.json.totals.calls, 3)
  t.ok(bUsage.json.records.every((r: { tokenId: string, keyName: string }) =>
    r.tokenId === b.tokenId && r.keyName === 'staging'), 'every B record is B\'s, on staging')
  t.equal(aUsage.json.totals.totalTokens,
    aUsage.json.records.reduce((sum: number, r: { totalTokens: number }) => sum + r.totalTokens, 0),
    'A totals sum A records')
  for (const id of ids.a) t.notMatch(bUsage.body, id, `A's ${id} is not in B's view`)
})

t.test('proxy: the token decides the workspace, hence the Mistral key', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b } = s
  for (const [ws, own] of [[a, 'production'], [b, 'staging']] as const) {
    const res = await proxied(s, 'POST', '/v1/chat/completions', ws.headers, chat)
    t.equal(res.status, 200)
    t.same(res.keys, [ws.mistralKey])
    t.equal(res.upstream[0].headers.authorization, `Bearer ${ws.mistralKey}`)
    await reaches(t, s, { ...ws.headers, 'x-tramontane-key': own }, `${ws.mistralKey}-${own}`, `${ws.slug} ${own}`)
  }
  // a key name only the other workspace holds is unknown here, and nothing goes upstream
  for (const [ws, foreign] of [[a, 'staging'], [b, 'production']] as const) {
    for (const [method, url, payload] of [['GET', '/v1/models'], ['POST', '/v1/chat/completions', chat]] as const) {
      const res = await proxied(s, method, url, { ...ws.headers, 'x-tramontane-key': foreign }, payload)
      t.equal(res.status, 400, `${ws.slug} naming ${foreign}`)
      t.equal(res.json.code, 'unknown_mistral_key')
      t.equal(res.json.param, 'x-tramontane-key')
      t.same(res.keys, [], 'nothing reached the upstream')
    }
  }
})

t.test('proxy: ids of resources B created go upstream with A\'s key when A asks', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b } = s
  const boundary = 'tramontane-isolation-boundary'
  const upload = [
    `--${boundary}`, 'Content-Disposition: form-data; name="purpose"', '', 'batch',
    `--${boundary}`, 'Content-Disposition: form-data; name="file"; filename="b.jsonl"',
    'Content-Type: application/jsonl', '',
    '{"custom_id":"1","body":{"messages":[]}}', `--${boundary}--`, ''
  ].join('\r\n')
  const file = await proxied(s, 'POST', '/v1/files',
    { ...b.headers, 'content-type': `multipart/form-data; boundary=${boundary}` }, upload)
  t.equal(file.status, 200)
  t.same(file.keys, [b.mistralKey], 'B uploaded with B\'s key')
  const fileId = file.json.id as string
  t.ok(fileId, 'the upload has an id')
  const agent = await proxied(s, 'POST', '/v1/agents', b.headers, { model: 'mistral-small-latest', name: 'B agent' })
  t.equal(agent.status, 200)
  t.same(agent.keys, [b.mistralKey], 'B created its agent with B\'s key')
  const agentId = agent.json.id as string

  const asked: Array<[string, string, unknown?]> = [
    ['GET', `/v1/files/${fileId}`],
    ['GET', `/v1/files/${fileId}/content`],
    ['GET', `/v1/files/${fileId}/url?expiry=24`],
    ['GET', `/v1/agents/${agentId}`],
    ['PATCH', `/v1/agents/${agentId}`, { description: 'A was here' }],
    ['GET', `/v1/agents/${agentId}/versions`],
    ['POST', '/v1/agents/completions', { agent_id: agentId, messages: chat.messages }],
    ['DELETE', `/v1/agents/${agentId}`],
    ['DELETE', `/v1/files/${fileId}`]
  ]
  for (const [method, url, payload] of asked) {
    const res = await proxied(s, method, url, a.headers, payload)
    t.equal(res.upstream.length, 1, `${method} ${url} went upstream once`)
    t.equal(res.upstream[0]?.path, url, 'path verbatim')
    t.same(res.keys, [a.mistralKey], `${method} ${url} carried A's key only`)
    t.notMatch(JSON.stringify(res.upstream[0]?.headers), b.mistralKey, 'no B key anywhere in the headers')
  }
})

t.test('proxy: conversations, libraries and documents, batch jobs reach Mistral with the caller\'s key only',
  async (t) => {
    const s = await twoWorkspaces(t)
    const boundary = 'tramontane-isolation-document'
    const document = [
      `--${boundary}`, 'Content-Disposition: form-data; name="file"; filename="notes.txt"',
      'Content-Type: text/plain', '',
      'what the owner keeps in its library', `--${boundary}--`, ''
    ].join('\r\n')
    // each workspace in turn creates one of each, then the other asks for them by id
    for (const [owner, other] of [[s.b, s.a], [s.a, s.b]] as const) {
      const names = `${owner.slug} → ${other.slug}`
      const created = async (method: string, url: string, payload: unknown, headers: Headers = owner.headers) => {
        const res = await proxied(s, method, url, headers, payload)
        t.ok(res.status < 300, `${names}: ${method} ${url} by its owner`, { status: res.status, body: res.body })
        t.same(res.keys, [owner.mistralKey], `${names}: ${method} ${url} went up with the owner's key`)
        return res.json
      }
      const conversation = await created('POST', '/v1/conversations',
        { model: 'mistral-medium-latest', inputs: 'hello from the owner' })
      const conversationId = conversation.conversation_id as string
      const entryId = conversation.outputs[0].id as string
      const library = await created('POST', '/v1/libraries', { name: `library of ${owner.slug}` })
      const documentId = (await created('POST', `/v1/libraries/${library.id}/documents`, document,
        { ...owner.headers, 'content-type': `multipart/form-data; boundary=${boundary}` })).id as string
      const job = await created('POST', '/v1/batch/jobs', {
        endpoint: '/v1/chat/completions', model: 'mistral-small-latest',
        requests: [{ custom_id: '1', body: { messages: chat.messages } }]
      })

      const asked: Array<[string, string, unknown?]> = [
        ['GET', `/v1/conversations/${conversationId}`],
        ['GET', `/v1/conversations/${conversationId}/history`],
        ['GET', `/v1/conversations/${conversationId}/messages`],
        ['POST', `/v1/conversations/${conversationId}`, { inputs: 'the other one was here' }],
        ['POST', `/v1/conversations/${conversationId}/restart`, { inputs: 'again', from_entry_id: entryId }],
        ['GET', `/v1/libraries/${library.id}`],
        ['GET', `/v1/libraries/${library.id}/documents`],
        ['GET', `/v1/libraries/${library.id}/documents/${documentId}`],
        ['GET', `/v1/libraries/${library.id}/documents/${documentId}/text_content`],
        ['DELETE', `/v1/libraries/${library.id}/documents/${documentId}`],
        ['DELETE', `/v1/libraries/${library.id}`],
        ['GET', `/v1/batch/jobs/${job.id}`],
        ['GET', '/v1/batch/jobs'],
        ['POST', `/v1/batch/jobs/${job.id}/cancel`]
      ]
      for (const [method, url, payload] of asked) {
        const res = await proxied(s, method, url, other.headers, payload)
        t.equal(res.upstream.length, 1, `${names}: ${method} ${url} went upstream once`)
        t.equal(res.upstream[0]?.path, url, 'path verbatim')
        t.same(res.keys, [other.mistralKey], `${names}: ${method} ${url} carried the caller's key only`)
        t.notMatch(JSON.stringify(res.upstream[0]?.headers), owner.mistralKey, 'the owner\'s key is nowhere in it')
        t.notMatch(JSON.stringify(res.upstream[0]?.headers), owner.token, 'nor the owner\'s token')
      }
    }
  })

t.test('admin and workspace credentials never open each other\'s API', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, app, admin } = s
  const before = await snapshot(s, b)
  const adminRoutes: Array<[string, string, unknown?]> = [
    ['GET', '/admin/v1/workspaces'],
    ['POST', '/admin/v1/workspaces', { slug: `x-${b.slug}`, name: 'by a tenant' }],
    ['GET', `/admin/v1/workspaces/${b.slug}`],
    ['PATCH', `/admin/v1/workspaces/${b.slug}`, { status: 'suspended' }],
    ['DELETE', `/admin/v1/workspaces/${b.slug}`],
    ['POST', `/admin/v1/workspaces/${b.slug}/mistral-keys`, { name: 'planted', key: 'sk-planted-key-0007' }],
    ['GET', `/admin/v1/workspaces/${b.slug}/mistral-keys`],
    ['PUT', `/admin/v1/workspaces/${b.slug}/mistral-keys/default`, { key: 'sk-hijacked-default-0008' }],
    ['DELETE', `/admin/v1/workspaces/${b.slug}/mistral-keys/staging`],
    ['POST', `/admin/v1/workspaces/${b.slug}/tokens`, { name: 'planted' }],
    ['GET', `/admin/v1/workspaces/${b.slug}/tokens`],
    ['DELETE', `/admin/v1/workspaces/${b.slug}/tokens/${b.tokenId}`],
    ['PATCH', `/admin/v1/workspaces/${b.slug}/tokens/${b.tokenId}`, { limits: { rpm: 1 } }],
    ['GET', `/admin/v1/workspaces/${b.slug}/usage`],
    ['GET', `/admin/v1/workspaces/${b.slug}/limits`],
    ['GET', '/admin/v1/prices'],
    ['PUT', '/admin/v1/prices/mistral-small-latest', { input: '0', output: '0' }],
    ['DELETE', '/admin/v1/prices/mistral-small-latest'],
    ['GET', '/admin/v1/audit-log']
  ]
  for (const ws of [a, b]) {
    for (const [method, url, payload] of adminRoutes) {
      const res = await app.inject({ method: method as 'GET', url, headers: ws.headers, payload: payload as object })
      t.equal(res.statusCode, 401, `${ws === a ? 'A' : 'B'} token: ${method} ${url}`)
      t.equal(res.json().code, 'invalid_admin_token')
      t.equal(res.json().request_id, res.headers['x-request-id'])
    }
  }
  t.same(await snapshot(s, b), before, 'no workspace token changed anything')
  isNotFound(t, await admin('GET', `/admin/v1/workspaces/x-${b.slug}`), 'no workspace was created by a tenant')
  await reaches(t, s, b.headers, b.mistralKey, 'B token still works')

  const adminHeaders = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` }
  for (const [method, url, payload] of [
    ['GET', '/v1/models'], ['POST', '/v1/chat/completions', chat], ['GET', '/v1/users/me'], ['GET', '/v1/nope']
  ] as const) {
    const res = await proxied(s, method, url, adminHeaders, payload)
    t.equal(res.status, 401, `admin token on ${method} ${url}`)
    t.equal(res.json.code, 'invalid_token')
    t.same(res.keys, [], 'nothing upstream')
  }
})

t.test('unknown, malformed, revoked, expired and deleted tokens all get the same 401', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, admin } = s
  const mint = async (body: Record<string, unknown>) => {
    const res = await admin('POST', `/admin/v1/workspaces/${a.slug}/tokens`, { name: 'extra', ...body })
    t.equal(res.statusCode, 201)
    return { id: res.json.id as string, headers: { authorization: `Bearer ${res.json.token}` } }
  }
  const expiresAt = Date.now() + 2_000
  const expiring = await mint({ expiresAt: new Date(expiresAt).toISOString() })
  const revoked = await mint({})
  await reaches(t, s, expiring.headers, a.mistralKey, 'the expiring token before it expires')
  await reaches(t, s, revoked.headers, a.mistralKey, 'the token before it is revoked')
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${a.slug}/tokens/${revoked.id}`)).statusCode, 200)

  const unknown = await proxied(s, 'GET', '/v1/models', { authorization: `Bearer ${generateWorkspaceToken().token}` })
  t.equal(unknown.status, 401)
  t.same(withoutRequestId(unknown.json), {
    object: 'error',
    type: 'authentication_error',
    code: 'invalid_token',
    message: 'Invalid, expired or revoked workspace token',
    param: null,
    error: {
      type: 'authentication_error',
      code: 'invalid_token',
      message: 'Invalid, expired or revoked workspace token',
      param: null
    }
  })
  const reference = withoutRequestId(unknown.json)

  const last = a.token.at(-1) === 'A' ? 'B' : 'A'
  await sleep(Math.max(0, expiresAt - Date.now() + 250))
  const cases: Array<[string, Headers]> = [
    ['bad checksum', { authorization: `Bearer ${a.token.slice(0, -1)}${last}` }],
    ['truncated', { authorization: `Bearer ${a.token.slice(0, -1)}` }],
    ['revoked', revoked.headers],
    ['expired', expiring.headers],
    ['no header', {}],
    ['not bearer', { authorization: `Basic ${a.token}` }],
    ['admin token', { authorization: `Bearer ${TEST_ADMIN_TOKEN}` }]
  ]
  for (const [what, headers] of cases) {
    for (const [method, url, payload] of [['GET', '/v1/models'], ['POST', '/v1/chat/completions', chat]] as const) {
      const res = await proxied(s, method, url, headers, payload)
      t.equal(res.status, 401, `${what}: ${method} ${url}`)
      t.same(withoutRequestId(res.json), reference, `${what}: the same body as an unknown token`)
      t.equal(res.json.request_id, res.res.headers['x-request-id'], `${what}: request_id is the x-request-id`)
      t.equal(res.res.headers['content-type'], unknown.res.headers['content-type'])
      t.same(res.keys, [], `${what}: nothing upstream`)
    }
  }
  // the expired token is still listed, unrevoked: expiry alone refuses it
  const listed = (await admin('GET', `/admin/v1/workspaces/${a.slug}/tokens`)).json.data
  t.equal(listed.find((x: { id: string }) => x.id === expiring.id)?.revokedAt, null)
  await reaches(t, s, a.headers, a.mistralKey, 'A\'s other token is unaffected')
  await reaches(t, s, b.headers, b.mistralKey, 'B is unaffected')
})

t.test('a suspended workspace gets 403 until re-activated; a deleted one gets 401', async (t) => {
  const s = await twoWorkspaces(t)
  const { a, b, admin } = s
  await reaches(t, s, a.headers, a.mistralKey, 'A before suspension') // cached context: the PATCH must evict it

  t.equal((await admin('PATCH', `/admin/v1/workspaces/${a.slug}`, { status: 'suspended' })).statusCode, 200)
  for (const [method, url, payload] of [['GET', '/v1/models'], ['POST', '/v1/chat/completions', chat]] as const) {
    const res = await proxied(s, method, url, a.headers, payload)
    t.equal(res.status, 403, `suspended: ${method} ${url}`)
    t.match(res.json, { object: 'error', type: 'permission_error', code: 'workspace_suspended' })
    t.equal(res.json.error.code, 'workspace_suspended')
    t.equal(res.json.request_id, res.res.headers['x-request-id'])
    t.same(res.keys, [], 'nothing upstream')
  }
  await reaches(t, s, b.headers, b.mistralKey, 'B while A is suspended')

  t.equal((await admin('PATCH', `/admin/v1/workspaces/${a.id}`, { status: 'active' })).statusCode, 200)
  await reaches(t, s, a.headers, a.mistralKey, 'A after re-activation')

  const unknown = await proxied(s, 'GET', '/v1/models', { authorization: `Bearer ${generateWorkspaceToken().token}` })
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${a.slug}`)).statusCode, 204)
  const deleted = await proxied(s, 'GET', '/v1/models', a.headers)
  t.equal(deleted.status, 401, 'deleted workspace: 401')
  t.same(withoutRequestId(deleted.json), withoutRequestId(unknown.json), 'the same body as an unknown token')
  t.same(deleted.keys, [], 'nothing upstream')
  await reaches(t, s, b.headers, b.mistralKey, 'B after A was deleted')
})
