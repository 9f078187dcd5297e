import t from 'tap'
import { buildTestApp, TEST_ADMIN_TOKEN, type TestApp, type TestWorkspace } from '../helpers/app.js'

const chat = (content: string) => ({ model: 'mistral-small-latest', messages: [{ role: 'user', content }] })

async function call (s: TestApp, ws: TestWorkspace, content: string) {
  const res = await s.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: chat(content) })
  if (res.statusCode !== 200) throw new Error(res.body)
  return String(res.headers['x-request-id'])
}

t.test('GET /tramontane/v1/me: the workspace, the token, its limits and caps with what is left', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const patched = await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { name: 'ACME Corp', timezone: 'Europe/Paris', limits: { rpm: 100 }, caps: { monthly: '10.00' } })
  t.equal(patched.statusCode, 200, patched.body)
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`,
    { caps: { daily: '1.00' } })).statusCode, 200)
  await call(s, ws, 'What is left?')
  await s.app.usage.flush()
  const billed = (await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.totals.billedCostMicros
  t.ok(billed > 0)

  const res = await s.app.inject({ method: 'GET', url: '/tramontane/v1/me', headers: ws.headers })
  t.equal(res.statusCode, 200, res.body)
  const me = res.json()
  t.same(me.workspace, {
    id: ws.id, slug: ws.slug, name: 'ACME Corp', status: 'active', timezone: 'Europe/Paris', currency: 'USD'
  })
  t.same(me.token, {
    id: ws.tokenId, name: 'test', prefix: ws.token.slice(0, me.token.prefix.length), scopes: [], mistralKeyName: null,
    expiresAt: null
  })
  t.ok(me.token.prefix.length >= 8 && me.token.prefix.length < ws.token.length, 'a prefix, not the token')
  const left = (cap: number) => (cap - billed) / 1e6
  t.match(me.limits.workspace.limits.rpm, { limit: 100, remaining: Number })
  t.ok(me.limits.workspace.limits.rpm.used >= 1)
  t.match(me.limits.workspace.caps.monthly, { cap: '10.000000', reserved: '0.000000', resetsAt: String })
  t.equal(Number(me.limits.workspace.caps.monthly.left), Number(left(10_000_000).toFixed(6)))
  t.match(me.limits.token.caps.daily, { cap: '1.000000' })
  t.equal(Number(me.limits.token.caps.daily.left), Number(left(1_000_000).toFixed(6)))
  // the admin view computes the same numbers
  const adminView = (await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
  t.same(adminView.workspace.caps, me.limits.workspace.caps)
  t.same(adminView.tokens[ws.tokenId].caps, me.limits.token.caps)
  t.notMatch(res.body, ws.token, 'the token itself is never echoed')
  t.notMatch(res.body, ws.mistralKey)
})

t.test('GET /tramontane/v1/usage: the usage view of its own workspace, never another', async (t) => {
  const s = await buildTestApp(t)
  const a = await s.createWorkspace()
  const b = await s.createWorkspace()
  const mine = [await call(s, a, 'one'), await call(s, a, 'two')]
  const theirs = await call(s, b, 'three')
  await s.app.usage.flush()

  const own = await s.app.inject({ method: 'GET', url: '/tramontane/v1/usage', headers: a.headers })
  t.equal(own.statusCode, 200, own.body)
  t.same(own.json().records.map((r: { requestId: string }) => r.requestId).sort(), [...mine].sort())
  t.equal(own.json().totals.calls, 2)
  const adminView = (await s.admin('GET', `/admin/v1/workspaces/${a.slug}/usage`)).json
  t.same(own.json().totals, adminView.totals, 'the same view as the operator\'s')

  // nothing names a workspace: a query naming another is ignored, a path naming one is not a route
  const sneaky = await s.app.inject({ method: 'GET', url: `/tramontane/v1/usage?workspace=${b.id}&ws=${b.slug}`, headers: a.headers })
  t.equal(sneaky.statusCode, 200)
  t.notMatch(sneaky.body, theirs)
  t.equal(sneaky.json().totals.calls, 2)
  for (const url of [`/tramontane/v1/workspaces/${b.slug}/usage`, `/tramontane/v1/usage/${b.id}`]) {
    const res = await s.app.inject({ method: 'GET', url, headers: a.headers })
    t.equal(res.statusCode, 404, url)
  }

  const grouped = await s.app.inject({ method: 'GET', url: '/tramontane/v1/usage?groupBy=model,token', headers: a.headers })
  t.same(grouped.json().groups.map((g: any) => [g.model, g.tokenName, g.calls]), [['mistral-small-2603', 'test', 2]])
  const csv = await s.app.inject({
    method: 'GET', url: '/tramontane/v1/usage?groupBy=operation', headers: { ...a.headers, accept: 'text/csv' }
  })
  t.match(csv.headers['content-type'], /^text\/csv/)
  t.match(csv.body, /^operation,calls,/)
  t.match(csv.body, /\r\nchat,2,0,/)
  const bad = await s.app.inject({ method: 'GET', url: '/tramontane/v1/usage?groupBy=workspace', headers: a.headers })
  t.equal(bad.statusCode, 400)
  t.match(bad.json(), { code: 'invalid_request', param: 'groupBy' })
})

t.test('workspace tokens only, with the same 401 as /v1; the admin API stays closed to them', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const proxied = await s.app.inject({ method: 'GET', url: '/v1/models', headers: { authorization: 'Bearer nope' } })
  t.equal(proxied.statusCode, 401)
  const revoked = await s.createWorkspace()
  await s.admin('DELETE', `/admin/v1/workspaces/${revoked.slug}/tokens/${revoked.tokenId}`)
  for (const url of ['/tramontane/v1/me', '/tramontane/v1/usage']) {
    for (const authorization of [undefined, 'Bearer nope', `Bearer ${TEST_ADMIN_TOKEN}`, `Basic ${ws.token}`,
      revoked.headers.authorization]) {
      const res = await s.app.inject({ method: 'GET', url, headers: authorization ? { authorization } : {} })
      t.equal(res.statusCode, 401, `${url} ${String(authorization).slice(0, 10)}`)
      t.match(res.json(), { type: proxied.json().type, code: 'invalid_token', message: proxied.json().message })
    }
    t.equal((await s.app.inject({ method: 'GET', url, headers: ws.headers })).statusCode, 200, url)
  }
  const statement = await s.app.inject({
    method: 'GET', url: `/admin/v1/workspaces/${ws.slug}/statements/2026-01`, headers: ws.headers
  })
  t.equal(statement.statusCode, 401)
  t.equal(statement.json().code, 'invalid_admin_token')

  await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { status: 'suspended' })
  const suspended = await s.app.inject({ method: 'GET', url: '/tramontane/v1/me', headers: ws.headers })
  t.equal(suspended.statusCode, 403, 'a suspended workspace is refused here as on /v1')
  t.equal(suspended.json().code, 'workspace_suspended')
})

t.test('GET /tramontane/v1/usage: only the calling token\'s calls, never another token of its workspace', async (t) => {
  const s = await buildTestApp(t)
  const a = await s.createWorkspace({ tokenBody: { name: 'app-a' } })
  const minted = await s.admin('POST', `/admin/v1/workspaces/${a.slug}/tokens`, { name: 'secret-app-b' })
  t.equal(minted.statusCode, 201, minted.body)
  const b = { ...a, tokenId: minted.json.id as string, headers: { authorization: `Bearer ${minted.json.token}` } }
  const mine = [await call(s, a, 'short'), await call(s, a, 'a little longer')]
  for (const content of ['b one', 'b two, which is a much longer prompt than any of a\'s', 'b three']) {
    await call(s, b, content)
  }
  await s.app.usage.flush()

  // the operator sees both tokens: what each spent is the expected answer
  const byToken = (await s.admin('GET', `/admin/v1/workspaces/${a.slug}/usage?groupBy=token`)).json.groups
  const operatorView = (tokenId: string) => {
    const { token, tokenName, ...sums } = byToken.find((group: { token: string }) => group.token === tokenId)
    return sums
  }
  const aSpent = operatorView(a.tokenId)
  t.equal(aSpent.calls, 2)
  t.equal(operatorView(b.tokenId).calls, 3)
  t.not(aSpent.promptTokens, operatorView(b.tokenId).promptTokens, 'a and b spent differently')
  t.ok(aSpent.billedCostMicros > 0)

  const get = async (query: string, format: 'json' | 'csv') => {
    const res = await s.app.inject({ method: 'GET', url: `/tramontane/v1/usage?${query}&format=${format}`, headers: a.headers })
    t.equal(res.statusCode, 200, `${query} ${format}`)
    t.notMatch(res.body, b.tokenId, `${query} ${format}: b's id`)
    t.notMatch(res.body, 'secret-app-b', `${query} ${format}: b's name`)
    return res
  }
  // the default window ends now, so today is summed from the ledger; whole days (in UTC, the workspace's zone) are
  // read from the rollup
  const day = (offset: number) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10)
  for (const window of ['', `from=${day(-1)}&to=${day(1)}`]) {
    for (const groupBy of ['', 'day', 'model', 'operation', 'token', 'day,model,operation,token']) {
      const json = (await get(`${window}&groupBy=${groupBy}`, 'json')).json()
      t.same(json.totals, aSpent, `${window} groupBy=${groupBy}: a's totals`)
      await get(`${window}&groupBy=${groupBy}`, 'csv')
    }
  }

  const records = (await get('', 'json')).json().records
  t.same(records.map((r: { requestId: string }) => r.requestId).sort(), [...mine].sort())
  t.same(records.map((r: { tokenId: string }) => r.tokenId), [a.tokenId, a.tokenId])
  const recordsCsv = (await get('', 'csv')).body.trim().split('\r\n')
  t.equal(recordsCsv.length, 3, 'a header and a\'s two records')

  const grouped = (await get('groupBy=token', 'json')).json().groups
  t.same(grouped, [{ token: a.tokenId, tokenName: 'app-a', ...aSpent }])
  const groupedCsv = (await get('groupBy=token', 'csv')).body.trim().split('\r\n')
  t.equal(groupedCsv.length, 2, 'a header and a\'s one token')
  t.match(groupedCsv[1], `${a.tokenId},app-a,2,0,${aSpent.promptTokens},`)

  // there is no token filter: a `tokenId` is ignored like any unknown parameter, and a `token` is refused (a token's
  // secret must not go in a URL) whether or not it names one: neither reaches another token nor says it exists
  const sneaky = (await get(`tokenId=${b.tokenId}&groupBy=token`, 'json')).json()
  t.same(sneaky.groups, grouped)
  t.equal(sneaky.totals.calls, 2)
  for (const id of [b.tokenId, a.tokenId, '00000000-0000-0000-0000-000000000000']) {
    const res = await s.app.inject({ method: 'GET', url: `/tramontane/v1/usage?token=${id}`, headers: a.headers })
    t.equal(res.statusCode, 400)
    t.equal(res.json().param, 'token')
    t.notMatch(res.body, id)
  }
})
