import pg from 'pg'
import t from 'tap'
import type { MistralKeyInvalidEvent } from '../../src/events.js'
import { buildTestApp, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'

// The gateway's own change, a Mistral key marked invalid after Mistral answered 401, writes its audit row in the
// mark's transaction, as every admin change does: the two commit together or not at all.

const CHAT = '/v1/chat/completions'

async function chat ({ app }: TestApp, ws: TestWorkspace) {
  const res = await app.inject({
    method: 'POST',
    url: CHAT,
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] }
  })
  return { status: res.statusCode, json: res.json(), requestId: res.headers['x-request-id'] }
}

t.test('a key whose audit row cannot be written is not marked invalid; the client is told mistral_key_rejected',
  async (t) => {
    // a database of its own: the trigger below refuses audit rows, which other tests write on the shared one
    const databaseUrl = await createScratchDatabase(t)
    const testApp = await buildTestApp(t, { DATABASE_URL: databaseUrl })
    const { app, admin, mistral, createWorkspace, logs } = testApp
    const ws = await createWorkspace()
    const client = new pg.Client({ connectionString: databaseUrl })
    await client.connect()
    t.teardown(() => client.end())
    const events: MistralKeyInvalidEvent[] = []
    app.events.on('mistral_key.invalid', (event) => { events.push(event) })
    const keyStatus = async () =>
      (await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data[0].status as string
    const invalidEntries = async () => ((await admin('GET', '/admin/v1/audit-log?limit=1000')).json.data as any[])
      .filter((entry) => entry.action === 'mistral_key.invalid' && entry.workspaceId === ws.id)

    await client.query(`create function refuse_audit () returns trigger language plpgsql as $$
      begin raise exception 'the test refuses this audit row'; end $$`)
    await client.query(`create trigger refuse_audit before insert on audit_log for each row
      when (new.action = 'mistral_key.invalid') execute function refuse_audit()`)
    mistral.enqueueError(401, { detail: 'Unauthorized' }, {}, CHAT)
    const refused = await chat(testApp, ws)
    t.equal(refused.status, 502)
    t.same(refused.json, {
      object: 'error',
      type: 'upstream_error',
      code: 'mistral_key_rejected',
      message: 'Mistral rejected the workspace\'s key \'default\' (401); the operator must replace it',
      param: null,
      request_id: refused.requestId,
      error: {
        type: 'upstream_error',
        code: 'mistral_key_rejected',
        message: 'Mistral rejected the workspace\'s key \'default\' (401); the operator must replace it',
        param: null
      }
    }, 'the client is told Mistral rejected the key, in the envelope')
    t.equal(await keyStatus(), 'active', 'the key is not marked invalid without its audit row')
    t.same(await invalidEntries(), [], 'and no audit row claims it was')
    t.same(events, [], 'nor is the mark announced')
    const logged = logs.map((line) => JSON.parse(line)).find((line) => line.level === 50 &&
      /could not be marked invalid/.test(line.msg))
    t.match(logged, { key: 'default' }, 'the log says the key could not be marked')
    t.notMatch(JSON.stringify(logs), ws.mistralKey, 'never the key itself')

    await client.query('drop trigger refuse_audit on audit_log')
    mistral.enqueueError(401, { detail: 'Unauthorized' }, {}, CHAT)
    const marked = await chat(testApp, ws)
    t.equal(marked.json.code, 'mistral_key_rejected')
    t.equal(await keyStatus(), 'invalid', 'once the audit log takes rows again, the next 401 marks the key')
    const entries = await invalidEntries()
    t.equal(entries.length, 1, 'with one audit row')
    t.match(entries[0], { actor: 'gateway', targetType: 'mistral_key', details: { name: 'default' } })
    t.equal(events.length, 1, 'announced once')
  })
