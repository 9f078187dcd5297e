import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { buildTestApp } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'

const slug = () => `a-${randomBytes(5).toString('hex')}`

t.test('workspaces: create, read by id and slug, update, delete', async (t) => {
  const { admin } = await buildTestApp(t)
  const s = slug()
  const created = await admin('POST', '/admin/v1/workspaces', { slug: s, name: 'ACME', timezone: 'Europe/Paris', currency: 'EUR' })
  t.equal(created.statusCode, 201)
  t.match(created.json, { slug: s, name: 'ACME', timezone: 'Europe/Paris', currency: 'EUR', status: 'active' })
  t.equal((await admin('GET', `/admin/v1/workspaces/${created.json.id}`)).json.slug, s)
  t.equal((await admin('GET', `/admin/v1/workspaces/${s}`)).json.id, created.json.id)
  const listed = await admin('GET', '/admin/v1/workspaces')
  t.ok(listed.json.data.some((w: { id: string }) => w.id === created.json.id))

  const taken = await admin('POST', '/admin/v1/workspaces', { slug: s, name: 'Other' })
  t.equal(taken.statusCode, 409)
  t.equal(taken.json.code, 'conflict')

  const patched = await admin('PATCH', `/admin/v1/workspaces/${s}`, { name: 'ACME 2', status: 'suspended' })
  t.equal(patched.statusCode, 200)
  t.match(patched.json, { name: 'ACME 2', status: 'suspended' })

  t.equal((await admin('DELETE', `/admin/v1/workspaces/${s}`)).statusCode, 204)
  t.equal((await admin('GET', `/admin/v1/workspaces/${s}`)).statusCode, 404)
  // a deleted workspace frees its slug
  t.equal((await admin('POST', '/admin/v1/workspaces', { slug: s, name: 'Again' })).statusCode, 201)
})

t.test('bad input gets a clear 400 in the envelope', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const cases: Array<[unknown, string]> = [
    [{ slug: 'Bad Slug', name: 'x' }, 'slug'],
    [{ slug: '-x', name: 'x' }, 'slug'],
    [{ slug: '123e4567-e89b-12d3-a456-426614174000', name: 'x' }, 'slug'],
    [{ slug: slug(), name: 'x', timezone: 'Mars/Olympus' }, 'timezone'],
    // abbreviations Node takes and PostgreSQL reads otherwise (IST, BST) or not at all (AET)
    [{ slug: slug(), name: 'x', timezone: 'IST' }, 'timezone'],
    [{ slug: slug(), name: 'x', timezone: 'BST' }, 'timezone'],
    [{ slug: slug(), name: 'x', timezone: 'AET' }, 'timezone'],
    [{ slug: slug(), name: 'x', currency: 'euro' }, 'currency'],
    [{ slug: slug() }, 'name'],
    [{ slug: slug(), name: 'x', extra: 1 }, 'extra'],
    // PostgreSQL cannot store a NUL in text: refused before it is asked to
    [{ slug: slug(), name: 'AC\u0000ME' }, 'name']
  ]
  const refused = (res: { statusCode: number, json: any }, what: string, word: string) => {
    t.equal(res.statusCode, 400, what)
    t.equal(res.json.object, 'error')
    t.equal(res.json.type, 'invalid_request_error')
    t.ok(res.json.request_id)
    t.match(res.json.error?.message, word, `message names ${word}`)
  }
  for (const [body, word] of cases) {
    refused(await admin('POST', '/admin/v1/workspaces', body), JSON.stringify(body), word)
  }

  const ws = await createWorkspace()
  refused(await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { name: 'a\u0000b' }), 'a NUL in a new name', 'name')
  refused(await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'app\u0000' }), 'a NUL in a token name',
    'name')
  // a key Mistral would refuse on every call (each then a 502 that opens the breaker) is refused when it is stored
  const unprintable = ['sk-abc\u200bdefgh', 'sk-abcdefgh\u0000', 'sk-abc\u0007defgh', 'sk-abc\u00e9defgh', 'sk-abc\u007fdefgh']
  for (const key of unprintable) {
    const what = JSON.stringify(key)
    const added = await admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { name: 'other', key })
    refused(added, `POST ${what}`, 'key')
    t.equal(added.json.param, 'key', `POST ${what}: param`)
    const replaced = await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key })
    refused(replaced, `PUT ${what}`, 'key')
    t.equal(replaced.json.param, 'key', `PUT ${what}: param`)
  }
  const padded = await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key: ' sk-new-4321\n' })
  t.equal(padded.statusCode, 200, 'spaces around a key are trimmed, not refused')
  t.equal(padded.json.last4, '4321')
  refused(await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { markupBps: 1_000_001 }), 'a markup above +10,000 %',
    'markupBps')
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { markupBps: 1_000_000 })).statusCode, 200,
    'and +10,000 % itself is taken')
})

t.test('odd requests that PostgreSQL would choke on get a 4xx, not a 500', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const tokenUrl = `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`
  const before = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/tokens`)).json.data[0]
  const empty = await admin('PATCH', tokenUrl, {})
  t.equal(empty.statusCode, 200, 'a PATCH that sets nothing')
  t.same(empty.json, before, 'answers the token as it stands')

  for (const ref of ['%00', `${ws.slug}%00`, 'a%00b', 'Not%20A%20Slug']) {
    const res = await admin('GET', `/admin/v1/workspaces/${ref}`)
    t.equal(res.statusCode, 404, `workspace ${ref}`)
    t.equal(res.json.code, 'not_found')
    t.equal((await admin('GET', `/admin/v1/workspaces/${ref}/tokens`)).statusCode, 404, `workspace ${ref}: its tokens`)
  }
  for (const method of ['PUT', 'DELETE']) {
    const res = await admin(method, `/admin/v1/workspaces/${ws.slug}/mistral-keys/a%00b`, { key: 'sk-12345678' })
    t.equal(res.statusCode, 404, `${method} a key named with a NUL`)
  }

  const tooFar = await admin('GET', '/admin/v1/audit-log?before=99999999999999999999')
  t.equal(tooFar.statusCode, 400, 'before beyond any id')
  t.match(tooFar.json, { type: 'invalid_request_error', message: /before/ })
  const last = await admin('GET', `/admin/v1/audit-log?before=${Number.MAX_SAFE_INTEGER}&limit=1`)
  t.equal(last.statusCode, 200, 'before at its maximum')
  t.equal(last.json.data.length, 1)
})

t.test('mistral keys: add, list without the secret, replace, delete', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const secret = `sk-canary-${randomBytes(12).toString('hex')}`
  const added = await admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { name: 'production', key: secret })
  t.equal(added.statusCode, 201)
  t.match(added.json, { name: 'production', last4: secret.slice(-4), status: 'active', masterKeyId: 'test' })
  t.notMatch(added.body, secret)
  t.equal((await admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { name: 'production', key: secret })).statusCode, 409)

  const listed = await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)
  t.same(listed.json.data.map((k: { name: string }) => k.name), ['default', 'production'])
  t.notMatch(listed.body, secret)
  t.notMatch(listed.body, /ciphertext|wrapped|"iv"|"tag"/)

  const replaced = await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/production`, { key: 'sk-new-key-9876' })
  t.equal(replaced.statusCode, 200)
  t.equal(replaced.json.last4, '9876')
  t.equal((await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/nope`, { key: 'sk-new-key-9876' })).statusCode, 404)
  t.equal((await admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { name: 'Bad Name', key: 'sk-12345678' })).statusCode, 400)
  t.equal((await admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { name: 'short', key: 'abc' })).statusCode, 400)

  t.equal((await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/production`)).statusCode, 204)
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/production`)).statusCode, 404)
})

t.test('tokens: minted once, listed by prefix, revoked', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace({ keys: ['default', 'production'] })
  const minted = await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`,
    { name: 'bound', mistralKey: 'production', scopes: ['chat', 'embeddings'], expiresAt: new Date(Date.now() + 3_600_000).toISOString() })
  t.equal(minted.statusCode, 201)
  t.match(minted.json.token, /^tmt_[0-9A-Za-z]{49}$/)
  t.match(minted.json, { name: 'bound', mistralKeyName: 'production', scopes: ['chat', 'embeddings'] })
  t.equal(minted.json.token.startsWith(minted.json.prefix), true)

  const listed = await admin('GET', `/admin/v1/workspaces/${ws.slug}/tokens`)
  t.equal(listed.json.data.length, 2)
  t.notMatch(listed.body, minted.json.token)
  t.notMatch(listed.body, /"hash"/)

  const badScope = await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'x', scopes: ['everything'] })
  t.equal(badScope.statusCode, 400)
  t.match(badScope.json.message, /unknown scopes: everything/)
  t.equal((await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'x', mistralKey: 'nope' })).statusCode, 400)
  t.equal((await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'x', expiresAt: '2001-01-01T00:00:00Z' })).statusCode, 400)

  // a key a live token is bound to cannot go: every call of that token would be refused
  const keyInUse = await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/production`)
  t.equal(keyInUse.statusCode, 409)
  t.match(keyInUse.json.message, new RegExp(`bound to 1 live token\\(s\\) \\(${minted.json.prefix}\\)`))
  const revoked = await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/tokens/${minted.json.id}`)
  t.equal(revoked.statusCode, 200)
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/production`)).statusCode, 204,
    'once the token is revoked, the key may go')
  t.ok(revoked.json.revokedAt)
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/tokens/not-a-uuid`)).statusCode, 404)
})

t.test('usage: from and to pick the records of a window, and the totals are the window\'s', async (t) => {
  const { app, admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const call = async (content: string) => {
    const res = await app.inject({
      method: 'POST', url: '/v1/chat/completions', headers: ws.headers,
      payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content }] }
    })
    t.equal(res.statusCode, 200)
    return String(res.headers['x-request-id'])
  }
  const before = new Date()
  await sleep(20)
  const first = await call('the first call')
  await sleep(20)
  // a record is timed by the start of its call: the first started before this instant, the second after it
  const between = new Date()
  await sleep(20)
  const second = await call('the second call')
  await sleep(20)
  const after = new Date()
  await app.usage.flush()

  const usage = async (query: Record<string, Date>) => {
    const params = new URLSearchParams(Object.entries(query).map(([name, at]) => [name, at.toISOString()]))
    const res = await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage?${params}`)
    t.equal(res.statusCode, 200, res.body)
    return res.json
  }
  const ids = (view: { records: Array<{ requestId: string }> }) => view.records.map((r) => r.requestId).sort()
  const both = await usage({ from: before, to: after })
  t.same(ids(both), [first, second].sort(), 'both calls fall within [before, after)')
  t.equal(both.totals.calls, 2)
  t.equal(both.from, before.toISOString(), 'the window is echoed as asked')
  t.equal(both.to, after.toISOString())

  const early = await usage({ from: before, to: between })
  t.same(ids(early), [first], 'to is exclusive of what started after it')
  t.equal(early.totals.calls, 1, 'and the totals count only the window\'s calls')
  const late = await usage({ from: between, to: after })
  t.same(ids(late), [second], 'from excludes what started before it')
  t.equal(late.totals.calls, 1)
  t.equal(early.totals.totalTokens + late.totals.totalTokens, both.totals.totalTokens, 'the two halves add up')
  t.same(ids(await usage({ to: between })), [first], 'from defaults to 30 days before to')
  t.same(ids(await usage({ from: between })), [second], 'to defaults to now')

  const empty = await usage({ from: new Date(before.getTime() - 3_600_000), to: before })
  t.same(empty.records, [], 'the hour before holds nothing')
  t.equal(empty.totals.calls, 0)
  const reversed = await admin('GET',
    `/admin/v1/workspaces/${ws.slug}/usage?from=${after.toISOString()}&to=${before.toISOString()}`)
  t.equal(reversed.statusCode, 400)
  t.equal(reversed.json.param, 'from')
})

t.test('the admin API opens only with the admin token', async (t) => {
  const { app, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  for (const authorization of [undefined, 'Bearer wrong', ws.headers.authorization, `Basic ${ws.token}`]) {
    const res = await app.inject({ method: 'GET', url: '/admin/v1/workspaces', headers: authorization ? { authorization } : {} })
    t.equal(res.statusCode, 401, String(authorization).slice(0, 12))
    t.equal(res.json().code, 'invalid_admin_token')
  }
})

t.test('the audit log records every change, without secrets', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key: 'sk-rotated-canary-5555' })
  await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`)
  const log = await admin('GET', '/admin/v1/audit-log?limit=1000')
  const mine = log.json.data.filter((e: { workspaceId: string }) => e.workspaceId === ws.id)
  t.same(mine.map((e: { action: string }) => e.action).reverse(),
    ['workspace.create', 'mistral_key.create', 'token.create', 'mistral_key.replace', 'token.revoke'])
  t.ok(mine.every((e: { actor: string }) => e.actor === 'admin'))
  t.notMatch(log.body, 'sk-rotated-canary-5555')
  t.notMatch(log.body, ws.mistralKey)
  t.notMatch(log.body, ws.token)
})

t.test('the audit log says what each change changed: before and after, never a secret', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const keysNow = async () => (await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data as any[]
  const [keyBefore] = await keysNow()
  await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { daily: '20' }, markupBps: 1500, name: `Test ${ws.slug}` })
  await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { status: 'suspended' })
  await admin('PATCH', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`, { limits: { rpm: 60 }, caps: { daily: '2' } })
  const replaced = await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key: 'sk-audit-canary-9876' })
  await admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { name: 'spare', key: 'sk-spare-canary-1234' })
  const spare = (await keysNow()).find((key) => key.name === 'spare')
  await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/spare`)

  const log = await admin('GET', '/admin/v1/audit-log?limit=1000')
  const mine = (log.json.data as Array<Record<string, any>>).filter((e) => e.workspaceId === ws.id).reverse()
  const of = (action: string) => mine.filter((e) => e.action === action)
  const [caps, status] = of('workspace.update')
  t.same(caps.details.changes.markupBps, { from: 0, to: 1500 }, 'the markup, before and after')
  t.match(caps.details.changes.caps, { from: {}, to: { daily: String } }, 'the caps, before and after')
  t.notOk('name' in caps.details.changes, 'a field set to what it was is no change')
  t.same(status.details.changes, { status: { from: 'active', to: 'suspended' } }, 'suspended, not just "status"')
  t.match(of('token.update')[0].details.changes, { limits: { from: {}, to: { rpm: 60 } } })
  t.match(of('token.update')[0].details.changes.caps.to.daily, /^2(\.0+)?$/, 'a token\'s caps as the admin API shows them')
  t.match(of('mistral_key.replace')[0].details,
    { name: 'default', previousId: keyBefore.id, last4: { from: keyBefore.last4, to: '9876' } })
  t.equal(of('mistral_key.replace')[0].targetId, replaced.json.id)
  t.equal(of('mistral_key.delete')[0].targetId, spare.id, 'a deleted key is named by its id')
  t.match(of('workspace.create')[0].details, { slug: ws.slug, timezone: 'UTC', currency: 'USD' })
  const twice = await Promise.all(['sk-first-canary-1111', 'sk-second-canary-2222'].map((key) =>
    admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key })))
  t.same(twice.map((answer) => answer.statusCode), [200, 200], 'two replacements at once both succeed')
  // five more at once: each audit entry must name the key it replaced, the one the replacement before it put in
  const [start] = await keysNow()
  await Promise.all([1, 2, 3, 4, 5].map((i) =>
    admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key: `sk-race-canary-000${i}` })))
  const [current] = await keysNow()
  const lastLog = await admin('GET', '/admin/v1/audit-log?limit=1000')
  const raced = (lastLog.json.data as Array<Record<string, any>>)
    .filter((e) => e.workspaceId === ws.id && e.action === 'mistral_key.replace').slice(0, 5)
  const next = new Map(raced.map((e) => [e.details.previousId as string, e.targetId as string]))
  t.equal(next.size, 5, 'five replacements at once name five different keys they replaced, not one key twice')
  let walked = start.id as string
  for (let i = 0; i < 5 && next.has(walked); i++) walked = next.get(walked)!
  t.equal(walked, current.id, 'they chain from the key before them to the key in use')
  for (const secret of ['sk-audit-canary-9876', 'sk-spare-canary-1234', ws.mistralKey, ws.token]) {
    t.notMatch(log.body, secret, 'no key or token in the audit log')
  }
})

t.test('PATCHes at once each keep their part of the limits and caps: none undoes another', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const parts = [
    { caps: { daily: '20' } }, { caps: { monthly: '250' } }, { caps: { lifetime: '900' } },
    { limits: { rpm: 60 } }, { limits: { rpd: 5000 } }, { limits: { tpm: 90000 } }, { limits: { concurrency: 4 } }
  ]
  const answers = await Promise.all(parts.map((part) => admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, part)))
  t.same(answers.map((answer) => answer.statusCode), parts.map(() => 200))
  const after = (await admin('GET', `/admin/v1/workspaces/${ws.slug}`)).json
  t.match(after.caps, { daily: /^20(\.0+)?$/, monthly: /^250(\.0+)?$/, lifetime: /^900(\.0+)?$/ }, 'every cap')
  t.match(after.limits, { rpm: 60, rpd: 5000, tpm: 90000, concurrency: 4 }, 'every limit')

  const tokenParts = [{ caps: { daily: '5' } }, { caps: { monthly: '50' } }, { limits: { rpm: 10 } }, { limits: { tpm: 1000 } }]
  const url = `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`
  const tokenAnswers = await Promise.all(tokenParts.map((part) => admin('PATCH', url, part)))
  t.same(tokenAnswers.map((answer) => answer.statusCode), tokenParts.map(() => 200))
  const listed = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/tokens`)).json
  const token = listed.data.find((entry: { id: string }) => entry.id === ws.tokenId)
  t.match(token.caps, { daily: /^5(\.0+)?$/, monthly: /^50(\.0+)?$/ }, 'a token\'s caps, likewise')
  t.match(token.limits, { rpm: 10, tpm: 1000 }, 'and its limits')
})

t.test('a per-model limit must name a model of the price book, or it would never apply', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const typo = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { limits: { models: { 'mistral-lagre-latest': { rpm: 1 } } } })
  t.equal(typo.statusCode, 400, 'a typo is refused')
  t.equal(typo.json.param, 'limits.models.mistral-lagre-latest')
  t.match(typo.json.message, /price book has no model 'mistral-lagre-latest'/)
  const alias = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { limits: { models: { 'mistral-small-latest': { rpm: 3 } } } })
  t.equal(alias.statusCode, 200, 'an alias is taken')
  t.same(Object.values(alias.json.limits.models), [{ rpm: 3 }], 'under the canonical id')
  const removed = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { limits: { models: { 'gone-model': null } } })
  t.equal(removed.statusCode, 200, 'removing a limit may name any model')
})

t.test('a key whose bound tokens have all expired may be deleted; a key that is not there is a 404', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace({ keys: ['default', 'spare'] })
  const minted = await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`,
    { name: 'brief', mistralKey: 'spare', expiresAt: new Date(Date.now() + 1_000).toISOString() })
  t.equal(minted.statusCode, 201)
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/spare`)).statusCode, 409, 'while it lives')
  await sleep(1_100)
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/spare`)).statusCode, 204, 'once expired')
  t.equal((await admin('DELETE', `/admin/v1/workspaces/${ws.slug}/mistral-keys/spare`)).statusCode, 404, 'then gone')
})

t.test('OpenAPI docs describe the admin API', async (t) => {
  const { app } = await buildTestApp(t)
  const res = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(res.statusCode, 200)
  const doc = res.json()
  t.equal(doc.openapi.startsWith('3.'), true)
  for (const path of ['/admin/v1/workspaces', '/admin/v1/workspaces/{ws}', '/admin/v1/workspaces/{ws}/mistral-keys',
    '/admin/v1/workspaces/{ws}/mistral-keys/{name}', '/admin/v1/workspaces/{ws}/tokens',
    '/admin/v1/workspaces/{ws}/tokens/{id}', '/admin/v1/workspaces/{ws}/usage', '/admin/v1/audit-log']) {
    t.ok(doc.paths[path], path)
  }
  t.notOk(Object.keys(doc.paths).some((p) => p.startsWith('/v1')), 'the proxy is not in the admin docs')

  const body = (path: string, method: string) => doc.paths[path][method].requestBody.content['application/json'].schema
  const keyCreate = body('/admin/v1/workspaces/{ws}/mistral-keys', 'post')
  t.notOk(keyCreate.required?.includes('name'), 'a key\'s name may be left out')
  t.equal(keyCreate.properties.name.default, 'default', 'and is then default')
  t.same(keyCreate.required, ['key'])
  const { markupBps } = body('/admin/v1/workspaces/{ws}', 'patch').properties
  t.same([markupBps.minimum, markupBps.maximum], [-10_000, 1_000_000], 'markupBps has the bounds the store checks')
})

t.test('default cannot be deleted while a live unbound token relies on it; once none does, it may', async (t) => {
  const { app, admin, mistral, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace({ keys: ['default', 'spare'] })
  const base = `/admin/v1/workspaces/${ws.slug}`
  const keyNames = async () => (await admin('GET', `${base}/mistral-keys`)).json.data.map((key: { name: string }) => key.name)
  const [unbound] = (await admin('GET', `${base}/tokens`)).json.data
  const bound = await admin('POST', `${base}/tokens`, { name: 'on spare', mistralKey: 'spare' })
  t.equal(bound.statusCode, 201)

  const refused = await admin('DELETE', `${base}/mistral-keys/default`)
  t.equal(refused.statusCode, 409)
  t.match(refused.json, { object: 'error', type: 'invalid_request_error', code: 'conflict', param: 'name', request_id: String })
  t.equal(refused.json.error.code, 'conflict')
  t.equal(refused.json.message, `Mistral key 'default' is used by 1 live token(s) bound to no key (${unbound.prefix}): ` +
    'replace the key in place (PUT), or revoke those tokens first (a token\'s key is set when it is minted: mint ' +
    'replacements bound to another key)', 'names the unbound token, not the one bound elsewhere, and what to do')
  for (const secret of [ws.token, ws.mistralKey, bound.json.token]) t.notMatch(refused.body, secret, 'no secret')
  t.same(await keyNames(), ['default', 'spare'], 'the key is still there')
  const call = await app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: ws.headers,
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'still here?' }] }
  })
  t.equal(call.statusCode, 200, 'and the unbound token\'s calls still work')
  t.equal(mistral.received.at(-1)?.apiKey, ws.mistralKey, 'with the default key')

  // revoked and expired unbound tokens rely on nothing
  t.equal((await admin('DELETE', `${base}/tokens/${ws.tokenId}`)).statusCode, 200)
  // long enough for the mint and the refused deletion to land before it expires on a loaded machine
  const brief = await admin('POST', `${base}/tokens`, { name: 'brief', expiresAt: new Date(Date.now() + 4_000).toISOString() })
  t.equal(brief.statusCode, 201)
  t.equal((await admin('DELETE', `${base}/mistral-keys/default`)).statusCode, 409, 'while the brief token lives')
  await sleep(Date.parse(brief.json.expiresAt) - Date.now() + 100)
  t.equal((await admin('DELETE', `${base}/mistral-keys/default`)).statusCode, 204, 'once it has expired')
  t.same(await keyNames(), ['spare'])
})

t.test('minting tokens bound to a key while it is deleted never leaves a live token bound to a key that is gone', async (t) => {
  const { admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const base = `/admin/v1/workspaces/${ws.slug}`
  const mint = (name: string) => admin('POST', `${base}/tokens`, { name: `on ${name}`, mistralKey: name })
  const rounds = 20
  let kept = 0
  for (let round = 0; round < rounds; round++) {
    const name = `racing-${round}`
    t.equal((await admin('POST', `${base}/mistral-keys`, { name, key: `sk-racing-key-${round}` })).statusCode, 201)
    // the deletion sent first in half the rounds, last in the others
    const remove = () => admin('DELETE', `${base}/mistral-keys/${name}`)
    const answers = round % 2 === 0
      ? await Promise.all([remove(), mint(name), mint(name), mint(name)])
      : (await Promise.all([mint(name), mint(name), mint(name), remove()])).reverse()
    const [deleted, ...minted] = answers.map((answer) => answer.statusCode)
    if (deleted === 204) {
      t.same(minted, [400, 400, 400], `round ${round}: the key went, so no token was bound to it`)
    } else {
      kept++
      t.equal(deleted, 409, `round ${round}: the key stays for the tokens bound to it`)
      t.ok(minted.includes(201), `round ${round}: a token was bound before the deletion was refused`)
    }
  }
  t.comment(`${kept} of ${rounds} keys kept`)

  const keys = new Set((await admin('GET', `${base}/mistral-keys`)).json.data.map((key: { name: string }) => key.name))
  const tokens = (await admin('GET', `${base}/tokens`)).json.data as Array<{ prefix: string, mistralKeyName: string | null }>
  const stranded = tokens.filter((token) => token.mistralKeyName !== null && !keys.has(token.mistralKeyName))
  t.same(stranded.map((token) => `${token.prefix} on ${token.mistralKeyName}`), [], 'every bound token\'s key exists')
})

t.test('a change whose audit row cannot be written does not happen: the answer is a 500 and nothing changed',
  async (t) => {
    // a database of its own: the trigger below refuses audit rows, which other tests write on the shared one
    const databaseUrl = await createScratchDatabase(t)
    const { admin, createWorkspace } = await buildTestApp(t, { DATABASE_URL: databaseUrl })
    const ws = await createWorkspace()
    const base = `/admin/v1/workspaces/${ws.slug}`
    const client = new pg.Client({ connectionString: databaseUrl })
    await client.connect()
    t.teardown(() => client.end())
    await client.query(`create function refuse_audit () returns trigger language plpgsql as $$
      begin raise exception 'the test refuses this audit row'; end $$`)
    // PostgreSQL refuses the audit row of one action, as a failover between the change and its row would lose it
    const refusing = async (action: string, change: () => Promise<{ statusCode: number, json: any }>) => {
      await client.query(`create trigger refuse_audit before insert on audit_log for each row
        when (new.action = '${action}') execute function refuse_audit()`)
      try {
        return await change()
      } finally {
        await client.query('drop trigger refuse_audit on audit_log')
      }
    }
    const tokens = async () => (await admin('GET', `${base}/tokens`)).json.data as Array<Record<string, any>>
    const actions = async () => ((await admin('GET', '/admin/v1/audit-log?limit=1000')).json.data as any[])
      .filter((entry) => entry.workspaceId === ws.id).map((entry) => entry.action).reverse()

    const minted = await refusing('token.create', () => admin('POST', `${base}/tokens`, { name: 'unaudited' }))
    t.equal(minted.statusCode, 500)
    t.match(minted.json, { code: 'internal_error', request_id: String })
    t.notOk('token' in minted.json, 'no secret in the answer')
    t.same((await tokens()).map((token) => token.name), ['test'], 'no token was minted')

    const revoked = await refusing('token.revoke', () => admin('DELETE', `${base}/tokens/${ws.tokenId}`))
    t.equal(revoked.statusCode, 500)
    t.same((await tokens()).find((token) => token.id === ws.tokenId)?.revokedAt, null, 'the token was not revoked')

    const patched = await refusing('workspace.update', () => admin('PATCH', base, { name: 'Unaudited' }))
    t.equal(patched.statusCode, 500)
    t.equal((await admin('GET', base)).json.name, `Test ${ws.slug}`, 'the workspace was not renamed')

    const replaced = await refusing('mistral_key.replace',
      () => admin('PUT', `${base}/mistral-keys/default`, { key: 'sk-unaudited-canary-4321' }))
    t.equal(replaced.statusCode, 500)
    t.equal((await admin('GET', `${base}/mistral-keys`)).json.data[0].last4, ws.mistralKey.slice(-4),
      'the key was not replaced')

    t.same(await actions(), ['workspace.create', 'mistral_key.create', 'token.create'],
      'the audit log holds the changes made, and only those')
    const again = await admin('POST', `${base}/tokens`, { name: 'audited' })
    t.equal(again.statusCode, 201, 'once the audit log takes rows again, a mint works')
    t.same((await tokens()).map((token) => token.name).sort(), ['audited', 'test'])
  })
