import { eq } from 'drizzle-orm'
import { Redis } from 'ioredis'
import t from 'tap'
import { request } from 'undici'
import { buildTestApp, listen, TEST_REDIS_URL, type TestApp, type TestWorkspace } from '../helpers/app.js'
import { usageRecords } from '../../src/db/schema.js'
import { scanKeys } from '../../src/redis.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'

// Issue 3 over HTTP, on one gateway: a token's own limits and caps (on top of its workspace's, which has none here),
// and `clampMaxTokens: false`, which refuses a call whose worst case does not fit instead of lowering its max_tokens;
// and that deleting a workspace takes its state out of Redis.

const CHAT = '/v1/chat/completions'

async function chat ({ app }: TestApp, headers: Record<string, string>, body: Record<string, unknown> = {}) {
  const res = await app.inject({
    method: 'POST',
    url: CHAT,
    headers: { ...headers, 'content-type': 'application/json' },
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 50, ...body }
  })
  return { status: res.statusCode, json: res.json(), headers: res.headers }
}

/** a second token of the workspace, with no limits of its own */
async function secondToken ({ admin }: TestApp, ws: TestWorkspace) {
  const minted = await admin('POST', `/admin/v1/workspaces/${ws.slug}/tokens`, { name: 'other' })
  return { authorization: `Bearer ${minted.json.token}` }
}

t.test('a token\'s own rpm: its third call in the minute is refused, the workspace\'s other token is not', async (t) => {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const patched = await testApp.admin('PATCH', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`, { limits: { rpm: 2 } })
  t.equal(patched.statusCode, 200)
  const other = await secondToken(testApp, ws)

  const replies = [await chat(testApp, ws.headers), await chat(testApp, ws.headers), await chat(testApp, ws.headers)]
  t.same(replies.map((reply) => reply.status), [200, 200, 429])
  t.equal(replies[0].headers['x-ratelimit-limit-requests'], '2', 'the token\'s limit in the headers')
  t.equal(replies[1].headers['x-ratelimit-remaining-requests'], '0')
  const denied = replies[2]
  t.match(denied.json, { type: 'rate_limit_error', code: 'rate_limit_exceeded', param: 'rpm', message: /token's limit of 2 requests per minute/ },
    'the denial names the token\'s limit')
  const ms = Number(denied.headers['retry-after-ms'])
  t.ok(ms > 55_000 && ms <= 60_001, `retry-after-ms ${ms}: when the first call leaves the minute`)
  t.equal(denied.headers['retry-after'], String(Math.ceil(ms / 1000)))
  t.equal((await chat(testApp, other)).status, 200, 'the other token of the workspace is served')
})

t.test('a token\'s own monthly cap: refused once spent, until the month ends; the other token is served', async (t) => {
  // Mistral answers with all the 50 tokens asked for: a call costs its worst case, about 31 µ, so 80 µ afford two
  const mistral = await startFakeMistral({ completionTokens: 50 })
  t.teardown(() => mistral.close())
  const testApp = await buildTestApp(t, {}, { mistral })
  const ws = await testApp.createWorkspace()
  const patched = await testApp.admin('PATCH', `/admin/v1/workspaces/${ws.slug}/tokens/${ws.tokenId}`,
    { caps: { monthly: '0.00008', clampMaxTokens: false } })
  t.equal(patched.statusCode, 200)
  const other = await secondToken(testApp, ws)

  const served = []
  let refusal
  for (let i = 0; i < 10 && !refusal; i++) {
    const reply = await chat(testApp, ws.headers)
    if (reply.status === 200) served.push(reply)
    else refusal = reply
  }
  t.equal(served.length, 2, 'two served first')
  t.ok(served.every((reply) => reply.headers['x-tramontane-budget-remaining'] !== undefined), 'with the budget left')
  t.equal(refusal?.status, 429, 'then refused')
  t.match(refusal?.json, { type: 'insufficient_quota', code: 'monthly_spend_cap_reached', message: /token's monthly spend cap of 0\.00008/ })
  t.equal(refusal?.headers['x-should-retry'], 'false')
  const monthEnd = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth() + 1, 1)
  const ms = Number(refusal?.headers['retry-after-ms'])
  t.ok(Math.abs(Date.now() + ms - monthEnd) < 5_000, `retry-after-ms ${ms}: when the month ends (UTC, the workspace's zone)`)
  t.equal(refusal?.headers['retry-after'], String(Math.ceil(ms / 1000)))

  const limits = (await testApp.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
  const monthly = limits.tokens[ws.tokenId]?.caps?.monthly
  t.match(monthly, { cap: '0.000080', reserved: '0.000000' }, 'the admin API shows the token\'s cap')
  t.ok(Number(monthly?.left) < 0.00003, `with less left (${monthly?.left}) than a call's worst case`)
  t.equal((await chat(testApp, other)).status, 200, 'the other token of the workspace is served')
})

t.test('clampMaxTokens: lowered max_tokens by default, a refusal when the operator turns it off', async (t) => {
  const testApp = await buildTestApp(t)
  const [clamped, strict] = [await testApp.createWorkspace(), await testApp.createWorkspace()]
  // 20,000 output tokens of mistral-small at 0.60 $/M are 12,000 µ: more than the cap of 5,000 µ; the prompt fits
  t.equal((await testApp.admin('PATCH', `/admin/v1/workspaces/${clamped.slug}`, { caps: { monthly: '0.005' } })).statusCode, 200)
  t.equal((await testApp.admin('PATCH', `/admin/v1/workspaces/${strict.slug}`,
    { caps: { monthly: '0.005', clampMaxTokens: false } })).statusCode, 200)

  const before = testApp.mistral.received.length
  const lowered = await chat(testApp, clamped.headers, { max_tokens: 20_000 })
  t.equal(lowered.status, 200, 'served')
  const forwarded = (testApp.mistral.received.at(-1)?.json as { max_tokens: number }).max_tokens
  t.ok(forwarded > 7_000 && forwarded < 8_400, `forwarded with max_tokens ${forwarded}: what 5,000 µ less the prompt afford`)

  const refused = await chat(testApp, strict.headers, { max_tokens: 20_000 })
  t.equal(refused.status, 429, 'clampMaxTokens false: refused')
  t.match(refused.json, { type: 'insufficient_quota', code: 'monthly_spend_cap_reached' })
  t.equal(testApp.mistral.received.length - before, 1, 'the refused call never reached Mistral')
  t.equal((await chat(testApp, strict.headers, { max_tokens: 1_000 })).status, 200, 'a call whose worst case fits is served')
})

t.test('deleting a workspace takes its state out of Redis; another workspace keeps its own', async (t) => {
  const testApp = await buildTestApp(t)
  const redis = new Redis(TEST_REDIS_URL)
  t.teardown(() => redis.quit())
  const keysOf = async (workspaceId: string) => {
    const keys: string[] = []
    for await (const batch of scanKeys(redis, `tmt:{ws:${workspaceId}}:*`)) keys.push(...batch)
    return keys.sort()
  }
  const [gone, kept] = [await testApp.createWorkspace(), await testApp.createWorkspace()]
  for (const ws of [gone, kept]) {
    const limited = await testApp.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
      { limits: { rpm: 100, concurrency: 5 }, caps: { monthly: '10.00' } })
    t.equal(limited.statusCode, 200)
    t.equal((await chat(testApp, ws.headers)).status, 200)
  }
  await testApp.app.admission.store.flush()
  const before = await keysOf(gone.id)
  t.ok(before.some((key) => key.includes(':spend:m:')) && before.some((key) => key.endsWith(':done')),
    `the workspace's counters and settled ids are in Redis (${before.length} keys)`)
  const keptBefore = await keysOf(kept.id)
  t.ok(keptBefore.length > 0, `and the other's (${keptBefore.length} keys)`)

  t.equal((await testApp.admin('DELETE', `/admin/v1/workspaces/${gone.slug}`)).statusCode, 204)
  t.same(await keysOf(gone.id), [], 'none left once it is deleted')
  t.same(await keysOf(kept.id), keptBefore, 'the other workspace\'s keys are untouched')
})

t.test('a capped call whose body is no JSON object is refused before admission, and holds nothing', async (t) => {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const limited = await testApp.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { limits: { concurrency: 1 }, caps: { monthly: '10.00' } })
  t.equal(limited.statusCode, 200)
  const before = testApp.mistral.received.length

  const send = (payload: string, contentType?: string) => testApp.app.inject({
    method: 'POST',
    url: CHAT,
    headers: contentType === undefined ? ws.headers : { ...ws.headers, 'content-type': contentType },
    payload
  })
  for (const [what, payload] of [['a string', '"hello"'], ['null', 'null'], ['a number', '42'], ['an array', '[]']]) {
    const res = await send(payload, 'application/json')
    t.equal(res.statusCode, 400, `${what}: 400`)
    t.match(res.json(),
      { object: 'error', code: 'invalid_request', message: /JSON object/, request_id: res.headers['x-request-id'] })
  }
  const text = await send('{"model":"mistral-small-latest"}', 'text/plain')
  t.equal(text.statusCode, 400, 'text/plain, which Mistral does not read as JSON: 400')
  t.equal(testApp.mistral.received.length, before, 'none of them reached Mistral')

  // FastAPI reads a body with no content type, or a +json one, as JSON: so does the gateway, and meters it
  const body = JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 5 })
  const untyped = await send(body)
  t.equal(untyped.statusCode, 200, 'no content type: read as JSON and served')
  t.equal((testApp.mistral.received.at(-1)?.json as { max_tokens: number }).max_tokens, 5, 'with its own max_tokens')
  t.equal((await send(body, 'application/vnd.api+json; charset=utf-8')).statusCode, 200, 'a +json type too')

  t.equal((await chat(testApp, ws.headers)).status, 200, 'the one slot is free: a valid call is admitted')
  await testApp.app.admission.store.flush()
  const limits = (await testApp.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
  t.equal(limits.workspace.limits.concurrency.used, 0, 'no slot held')
  t.equal(limits.workspace.caps.monthly.reserved, '0.000000', 'nothing reserved')
})

/** One slot and a cap: a call that keeps its admission makes the next one wait for its slot. */
async function oneSlot (testApp: TestApp) {
  const ws = await testApp.createWorkspace()
  const limited = await testApp.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { limits: { concurrency: 1 }, caps: { monthly: '10.00' } })
  if (limited.statusCode !== 200) throw new Error(limited.body)
  return ws
}

/** The workspace's slot and monthly reservation, once the settlements sent have reached the store. */
async function held ({ app, admin }: TestApp, ws: TestWorkspace) {
  await app.admission.store.flush()
  const limits = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
  return { slots: limits.workspace.limits.concurrency.used, reserved: limits.workspace.caps.monthly.reserved }
}

t.test('a usage too large to price: the client gets its answer, the fault is logged, the admission is ' +
  'given back', async (t) => {
  const testApp = await buildTestApp(t)
  const url = await listen(testApp.app)
  // Mistral's count past what a cost can hold (2^53 micro-units): pricing it throws
  const usage = { prompt_tokens: 1e18, completion_tokens: 1e18, total_tokens: 2e18 }
  const head = { id: 'abc', created: 1, model: 'mistral-small-latest' }
  const answer = JSON.stringify({
    ...head,
    object: 'chat.completion',
    choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }],
    usage
  })
  const events = [
    { ...head, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content: 'Hi' } }] },
    { ...head, object: 'chat.completion.chunk', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }], usage }
  ].map((event) => `data: ${JSON.stringify(event)}\n\n`).join('') + 'data: [DONE]\n\n'
  for (const [what, stream] of [['an answer read whole', false], ['a stream', true]] as const) {
    const ws = await oneSlot(testApp)
    testApp.mistral.enqueue(function absurdUsage (_req, res) {
      const body = stream ? events : answer
      const type = stream ? 'text/event-stream' : 'application/json'
      res.writeHead(200, { 'content-type': type, 'content-length': Buffer.byteLength(body) })
      res.end(body)
    }, { path: CHAT })
    const res = await request(`${url}${CHAT}`, {
      method: 'POST',
      headers: { ...ws.headers, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hi' }], stream })
    })
    t.equal(res.statusCode, 200, `${what}: served`)
    t.match(await res.body.text(), stream ? /data: \[DONE\]/ : /"content":"Hi"/, `${what}: as Mistral sent it`)
    t.same(await held(testApp, ws), { slots: 0, reserved: '0.000000' }, `${what}: no slot held, nothing reserved`)
    t.equal((await chat(testApp, ws.headers)).status, 200, `${what}: the next call has the slot`)
    await testApp.app.usage.flush()
    const rows = await testApp.app.database.db.select().from(usageRecords).where(eq(usageRecords.workspaceId, ws.id))
    const faulty = rows.find((row) => row.requestId === res.headers['x-request-id'])
    t.match(faulty, { estimated: true, status: 200 }, `${what}: in the ledger all the same, as estimated`)
    t.ok(Number(faulty?.billedCostMicros) > 0, `${what}: at what it held of the caps`)
    t.equal(testApp.app.usage.pending(), 0, `${what}: nothing left waiting`)
  }
  // a workspace with a rate limit and no cap holds no spend: its fallback record is the prompt's estimate, not the
  // worst case its ticket was quoted at
  const limitedOnly = await testApp.createWorkspace()
  t.equal((await testApp.admin('PATCH', `/admin/v1/workspaces/${limitedOnly.slug}`, { limits: { rpm: 100 } }))
    .statusCode, 200)
  testApp.mistral.enqueue(function absurdUsage (_req, res) {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer) })
    res.end(answer)
  }, { path: CHAT })
  const uncapped = await chat(testApp, limitedOnly.headers)
  t.equal(uncapped.status, 200)
  await testApp.app.usage.flush()
  const [row] = await testApp.app.database.db.select().from(usageRecords)
    .where(eq(usageRecords.workspaceId, limitedOnly.id))
  t.match(row, { estimated: true }, 'no cap: recorded as estimated')
  t.equal(Number(row?.billedCostMicros), Number(row?.listCostMicros), 'at the prompt\'s estimate, not the worst case')
  const faults = testApp.logs.map((line) => JSON.parse(line)).filter((line) => line.msg === 'metering a call failed')
  t.equal(faults.length, 3, 'each fault logged')
  t.equal(faults[0]?.level, 50, 'as an error')
})

