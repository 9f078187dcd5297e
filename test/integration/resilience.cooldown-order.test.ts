import t, { type Test } from 'tap'
import { buildTestApp, type TestWorkspace } from '../helpers/app.js'

// Issue 4: while a key cools down, a call is failed over, held, or answered 429 at once, in the order the workspace
// sets (PATCH /admin/v1/workspaces/{ws} `cooldown`); unset, failover then a hold of UPSTREAM_COOLDOWN_HOLD_MS.

const CHAT = '/v1/chat/completions'

// one gateway and fake for the file: its subtests run one after another, so the fake's script queue is theirs
const testApp = await buildTestApp(t)
const { app, mistral, admin, createWorkspace } = testApp

async function chat (ws: TestWorkspace) {
  const sentAt = Date.now()
  const res = await app.inject({
    method: 'POST',
    url: CHAT,
    headers: { ...ws.headers, 'content-type': 'application/json' },
    payload: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] })
  })
  return { status: res.statusCode, headers: res.headers, json: res.json(), sentAt, elapsed: Date.now() - sentAt }
}

/** A workspace with `default` and `backup`, its cooldown order set (undefined: left unset). */
async function twoKeys (t: Test, cooldown?: Record<string, unknown>) {
  const ws = await createWorkspace({ keys: ['default', 'backup'] })
  if (cooldown !== undefined) {
    const res = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { cooldown })
    t.equal(res.statusCode, 200, `cooldown ${JSON.stringify(cooldown)} set`)
  }
  const mark = mistral.received.length
  // which of the workspace's keys reached the upstream since the workspace was made
  const upstream = () => mistral.received.slice(mark)
    .map((r) => r.apiKey === ws.mistralKey ? 'default' : r.apiKey === `${ws.mistralKey}-backup` ? 'backup' : 'other')
  return { ws, upstream }
}

t.test('["hold", "failover"]: waits out a short cooldown and sends the same key again, never the backup', async (t) => {
  const { ws, upstream } = await twoKeys(t, { order: ['hold', 'failover'], holdMs: 3000 })
  mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
  const reply = await chat(ws)
  t.equal(reply.status, 200, 'served')
  t.same(upstream(), ['default', 'default'], 'upstream saw `default` (429), then `default` again (200)')
  t.ok(reply.elapsed >= 900, `it held for the cooldown (${reply.elapsed} ms)`)

  // a cooldown longer than the hold: the next strategy, failover, takes the backup at once
  mistral.enqueueRateLimit({ retryAfterSeconds: 10, filter: CHAT })
  const long = await chat(ws)
  t.equal(long.status, 200)
  t.same(upstream().slice(2), ['default', 'backup'], 'a 10 s cooldown is not held: `backup` served it')
  t.ok(long.elapsed < 1_000, `at once (${long.elapsed} ms)`)
})

t.test('unset, the default ["failover", "hold"]: the backup at once', async (t) => {
  const { ws, upstream } = await twoKeys(t)
  t.same((await admin('GET', `/admin/v1/workspaces/${ws.slug}`)).json.cooldown, {}, 'GET shows no setting')
  mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
  const reply = await chat(ws)
  t.equal(reply.status, 200)
  t.same(upstream(), ['default', 'backup'], 'upstream saw `default` (429), then `backup`')
  t.ok(reply.elapsed < 900, `no hold (${reply.elapsed} ms)`)
})

t.test('[]: a 429 at once with a truthful Retry-After, and nothing more upstream', async (t) => {
  const { ws, upstream } = await twoKeys(t)
  t.equal((await chat(ws)).status, 200, 'served before the setting: its token context is cached')
  const set = await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { cooldown: { order: [] } })
  t.same(set.json.cooldown, { order: [] })

  mistral.enqueueRateLimit({ retryAfterSeconds: 5, filter: CHAT })
  const first = await chat(ws)
  const cooledAt = first.sentAt
  t.equal(first.status, 429, 'Mistral\'s 429 is the answer: no backup, no hold')
  t.match(first.json, { object: 'error', code: 'upstream_rate_limited', error: { code: 'upstream_rate_limited' } })
  t.same(upstream(), ['default', 'default'], 'the cached context saw the new order: `backup` was not tried')
  for (const reply of [first, await chat(ws), await chat(ws)]) {
    t.equal(reply.status, 429)
    t.ok(reply.elapsed < 1_000, `at once (${reply.elapsed} ms)`)
    const ms = Number(reply.headers['retry-after-ms'])
    // the cooldown began between sending the first call and its answer: what is left is at least this
    const left = 5_000 - (reply.sentAt + reply.elapsed - cooledAt)
    t.ok(ms >= left - 5 && ms <= 5_000, `retry-after-ms ${ms}: no shorter than the ${left} ms left`)
    t.ok(Number(reply.headers['retry-after']) * 1000 >= ms, `Retry-After ${reply.headers['retry-after']} s`)
    t.equal(reply.headers['x-should-retry'], 'true')
  }
  t.same(upstream(), ['default', 'default'], 'nothing more went upstream')
})

t.test('["hold"] with a hold shorter than the cooldown: 429, never the backup', async (t) => {
  const { ws, upstream } = await twoKeys(t, { order: ['hold'], holdMs: 500 })
  mistral.enqueueRateLimit({ retryAfterSeconds: 2, filter: CHAT })
  const reply = await chat(ws)
  t.equal(reply.status, 429)
  t.equal(reply.json.code, 'upstream_rate_limited')
  t.ok(reply.elapsed < 1_000, `not held (${reply.elapsed} ms)`)
  t.ok(Number(reply.headers['retry-after-ms']) > 500, `retry-after-ms ${reply.headers['retry-after-ms']}`)
  t.same(upstream(), ['default'])
})

t.test('calls held for one cooldown do not all wake at its end: they reach Mistral spread out', async (t) => {
  const ws = await createWorkspace()
  t.equal((await admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { cooldown: { order: ['hold'], holdMs: 3000 } }))
    .statusCode, 200)
  const HELD = 10
  const arrivals: number[] = []
  // nothing is answered until every call has arrived: no answer's handling comes between two arrivals
  let allArrived = () => {}
  const arrived = new Promise<void>((resolve) => { allArrived = resolve })
  mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
  for (let i = 0; i <= HELD; i++) {
    mistral.enqueue(async (_req, res) => {
      if (arrivals.push(Date.now()) === HELD + 1) allArrived()
      await arrived
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({
        id: `held-${i}`,
        object: 'chat.completion',
        created: 0,
        model: 'mistral-small-latest',
        choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
      }))
    }, CHAT)
  }
  const first = chat(ws) // meets the 429: the key cools down for 1 s, and this call holds too
  const cooling = async () => (await admin('GET', `/admin/v1/workspaces/${ws.slug}/mistral-keys`)).json.data[0].cooldown
  while (await cooling() === null) await new Promise((resolve) => setTimeout(resolve, 5))
  const replies = await Promise.all([first, ...Array.from({ length: HELD }, () => chat(ws))])
  t.same(replies.map((reply) => reply.status), Array(HELD + 1).fill(200), 'every held call served')
  t.equal(arrivals.length, HELD + 1)
  const spread = Math.max(...arrivals) - Math.min(...arrivals)
  // a random wait of up to 250 ms each (a quarter of the 1 s hold): 11 of them within 50 ms is a 1-in-10^6 chance
  t.ok(spread >= 50, `the held calls reached Mistral over ${spread} ms, not at one instant`)
  t.ok(spread < 500, `up to 250 ms later, plus this process's own delays (${spread} ms)`)
})

t.test('["failover"] never holds: both keys cooling answers 429 at once', async (t) => {
  const { ws, upstream } = await twoKeys(t, { order: ['failover'], holdMs: 3000 })
  mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
  mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
  const reply = await chat(ws)
  t.equal(reply.status, 429)
  t.ok(reply.elapsed < 900, `a 1 s cooldown within holdMs is not held (${reply.elapsed} ms)`)
  t.same(upstream(), ['default', 'backup'])
})

t.test('PATCH cooldown: checked, shown, audited, and {} restores the default', async (t) => {
  const ws = await createWorkspace()
  const patch = (cooldown: unknown) => admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { cooldown })
  const max = testApp.config.UPSTREAM_RETRY_MAX_WAIT_MS
  const refused: Array<[unknown, RegExp]> = [
    [{ order: ['retry'] }, /^cooldown\.order: unknown strategy 'retry' \(use 'failover' or 'hold'\)$/],
    [{ order: ['hold', 'failover', 'hold'] }, /^cooldown\.order lists 'hold' twice$/],
    [{ holdMs: -1 }, new RegExp(`^cooldown\\.holdMs must be whole milliseconds from 0 to ${max}`)],
    [{ holdMs: max + 1 }, /^cooldown\.holdMs must be/],
    [{ holdMs: 1.5 }, /cooldown\.holdMs/],
    [{ order: ['hold'], wait: 10 }, /cooldown has an unknown property 'wait'/]
  ]
  for (const [cooldown, message] of refused) {
    const res = await patch(cooldown)
    t.equal(res.statusCode, 400, JSON.stringify(cooldown))
    t.equal(res.json.code, 'invalid_request')
    t.match(res.json.message, message)
  }
  t.same((await admin('GET', `/admin/v1/workspaces/${ws.slug}`)).json.cooldown, {}, 'nothing refused was stored')

  const set = await patch({ order: ['hold', 'failover'], holdMs: max })
  t.equal(set.statusCode, 200)
  t.same(set.json.cooldown, { order: ['hold', 'failover'], holdMs: max })
  t.same((await admin('GET', `/admin/v1/workspaces/${ws.slug}`)).json.cooldown, { order: ['hold', 'failover'], holdMs: max })
  const listed = (await admin('GET', '/admin/v1/workspaces')).json.data.find((w: { id: string }) => w.id === ws.id)
  t.same(listed.cooldown, { order: ['hold', 'failover'], holdMs: max }, 'and in the list')
  t.same((await patch({ holdMs: 0 })).json.cooldown, { holdMs: 0 }, 'a PATCH replaces the whole setting')
  t.same((await patch({})).json.cooldown, {}, '{} restores the default')

  const log = await admin('GET', '/admin/v1/audit-log?limit=1000')
  const updates = log.json.data.filter((e: { workspaceId: string, action: string }) =>
    e.workspaceId === ws.id && e.action === 'workspace.update').reverse()
  t.same(updates.map((e: { details: { cooldown: unknown } }) => e.details.cooldown),
    [{ order: ['hold', 'failover'], holdMs: max }, { holdMs: 0 }, {}], 'each change in the audit log, with its setting')
  t.ok(updates.every((e: { details: { fields: string[] } }) => e.details.fields.includes('cooldown')))
})

t.test('OpenAPI documents the setting', async (t) => {
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  const patch = doc.paths['/admin/v1/workspaces/{ws}'].patch
  const body = patch.requestBody.content['application/json'].schema
  t.ok(body.properties.cooldown.properties.order, 'cooldown.order in the PATCH body')
  t.ok(body.properties.cooldown.properties.holdMs, 'cooldown.holdMs in the PATCH body')
})
