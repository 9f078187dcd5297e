import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t from 'tap'
import { buildTestApp, TEST_ADMIN_TOKEN, TEST_DATABASE_URL } from '../helpers/app.js'

const TABLES = ['workspaces', 'mistral_keys', 'workspace_tokens', 'usage_records', 'audit_log']

// Secrets never reach a log line, an error body, the audit log or the database in plaintext (DESIGN.md, Secrets).
t.test('canary secrets appear nowhere but where they belong', async (t) => {
  const { app, admin, logs, mistral, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const canaryKey = `CANARYKEY${randomBytes(12).toString('hex')}`
  await admin('PUT', `/admin/v1/workspaces/${ws.slug}/mistral-keys/default`, { key: canaryKey })
  await admin('POST', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { name: 'second', key: `${canaryKey}2` })

  const bodies: string[] = []
  const call = async (method: string, url: string, headers: Record<string, string>, payload?: unknown) => {
    const res = await app.inject({ method: method as 'GET', url, headers, payload: payload as object })
    bodies.push(res.body, JSON.stringify(res.headers))
    return res
  }
  const chat = { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hello' }] }
  t.equal((await call('POST', '/v1/chat/completions', ws.headers, chat)).statusCode, 200)
  t.equal((await call('POST', '/v1/chat/completions', ws.headers, { ...chat, stream: true })).statusCode, 200)
  t.equal((await call('POST', '/v1/embeddings', ws.headers, { model: 'mistral-embed', input: ['a'] })).statusCode, 200)
  await call('POST', '/v1/chat/completions', { ...ws.headers, 'x-tramontane-key': 'missing' }, chat)
  await call('GET', '/v1/nowhere', ws.headers)
  await call('GET', '/v1/models', { authorization: `Bearer ${ws.token}x` })
  await call('GET', '/v1/models', { authorization: `Bearer ${TEST_ADMIN_TOKEN}` })
  await call('GET', '/admin/v1/workspaces', ws.headers)
  mistral.enqueueError(401, { message: 'Unauthorized', request_id: 'abc' })
  await call('GET', '/v1/models', ws.headers)
  await call('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`, { authorization: `Bearer ${TEST_ADMIN_TOKEN}` })
  await call('GET', '/admin/v1/audit-log?limit=1000', { authorization: `Bearer ${TEST_ADMIN_TOKEN}` })
  await app.usage.flush()

  // Mistral got the key: the canary is live, so its absence elsewhere means something
  t.ok(mistral.received.some((r) => r.apiKey === canaryKey), 'the upstream received the canary key')
  t.notOk(mistral.received.some((r) => JSON.stringify(r.headers).includes(ws.token)), 'the token never went upstream')

  const secrets = { mistralKey: canaryKey, token: ws.token, tokenBody: ws.token.slice(12), admin: TEST_ADMIN_TOKEN }
  const logText = logs.join('')
  t.ok(logText.length > 0 && logText.includes(ws.slug), 'logs were captured')
  for (const [name, secret] of Object.entries(secrets)) {
    t.notOk(logText.includes(secret), `no ${name} in logs`)
    t.notOk(bodies.some((body) => body.includes(secret)), `no ${name} in responses`)
  }

  const client = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await client.connect()
  t.teardown(() => client.end())
  // every row of every table, searched by PostgreSQL: a database that has served benchmarks holds more rows than
  // one string can
  const rowsWith = async (table: string, needle: string) => Number((await client.query(
    `select count(*) as n from ${table} x where strpos(row_to_json(x)::text, $1) > 0`, [needle])).rows[0].n)
  for (const table of TABLES) {
    for (const [name, secret] of Object.entries(secrets)) {
      t.equal(await rowsWith(table, secret), 0, `no ${name} in ${table}`)
      t.equal(await rowsWith(table, Buffer.from(secret).toString('hex')), 0, `no hex ${name} in ${table}`)
    }
  }
})
