import t from 'tap'
import { request } from 'undici'
import { buildTestApp, listen } from '../helpers/app.js'

const chat = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Tell me a story' }], ...extra })

t.test('the first event reaches the client while Mistral still holds back the rest', async (t) => {
  const { app, mistral, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const url = await listen(app)
  const gate = mistral.holdStreams()
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { ...ws.headers, 'content-type': 'application/json' }, body: chat({ stream: true })
  })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  const reader = res.body[Symbol.asyncIterator]()
  const first = await Promise.race([
    reader.next(),
    new Promise((resolve) => setTimeout(() => resolve('timeout'), 3_000))
  ])
  t.not(first, 'timeout', 'a first chunk arrived while upstream was held')
  t.match(String((first as IteratorResult<Buffer>).value), /^data: \{/)
  t.notMatch(String((first as IteratorResult<Buffer>).value), /\[DONE\]/)
  gate.release()
  let rest = ''
  for await (const chunk of { [Symbol.asyncIterator]: () => reader }) rest += chunk
  t.match(rest, /data: \[DONE\]\n\n$/)
})

t.test('streamed bytes reach the client exactly as Mistral sent them, and usage is recorded', async (t) => {
  const { app, mistral, admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const url = await listen(app)
  const viaGateway = await request(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { ...ws.headers, 'content-type': 'application/json' }, body: chat({ stream: true })
  })
  const gatewayBytes = Buffer.from(await viaGateway.body.arrayBuffer())
  const direct = await request(`${mistral.url}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: 'Bearer direct', 'content-type': 'application/json' }, body: chat({ stream: true })
  })
  const directBytes = Buffer.from(await direct.body.arrayBuffer())
  // ids and timestamps differ per call; the framing and content do not
  const normalise = (bytes: Buffer) => bytes.toString().replace(/"id":"[^"]+"/g, '"id":"x"').replace(/"created":\d+/g, '"created":0')
  t.equal(normalise(gatewayBytes), normalise(directBytes))
  t.equal(viaGateway.headers['x-request-id']?.length, 36)

  await app.usage.flush()
  const usage = await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)
  const reported = mistral.reportedUsage.find((u) => u.streamed && u.path === '/v1/chat/completions')
  t.ok(reported)
  t.equal(usage.json.records.length, 1)
  t.match(usage.json.records[0], {
    requestId: viaGateway.headers['x-request-id'],
    operation: 'chat',
    model: 'mistral-small-latest',
    promptTokens: reported!.usage.prompt_tokens,
    completionTokens: reported!.usage.completion_tokens,
    totalTokens: reported!.usage.total_tokens,
    streamed: true,
    estimated: false,
    status: 200
  })
})

t.test('the client hanging up aborts the upstream call and the call is still recorded', async (t) => {
  const { app, mistral, admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const url = await listen(app)
  mistral.holdStreams()
  const controller = new AbortController()
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { ...ws.headers, 'content-type': 'application/json' },
    body: chat({ stream: true }),
    signal: controller.signal
  })
  const reader = res.body[Symbol.asyncIterator]()
  await reader.next()
  controller.abort()
  const upstream = mistral.requestsTo('/v1/chat/completions').at(-1)!
  const deadline = Date.now() + 3_000
  while (!upstream.aborted && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(upstream.aborted, true, 'Mistral saw the call cancelled')

  let records: any[] = []
  while (records.length === 0 && Date.now() < deadline) {
    await app.usage.flush()
    records = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records
  }
  t.equal(records.length, 1)
  t.match(records[0], { operation: 'chat', estimated: true, streamed: true })
  t.ok(records[0].promptTokens > 0, 'an aborted call is billed from an estimate')
})

t.test('plain JSON calls are relayed and metered', async (t) => {
  const { app, mistral, admin, createWorkspace } = await buildTestApp(t)
  const ws = await createWorkspace()
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: ws.headers, payload: JSON.parse(chat()) })
  t.equal(res.statusCode, 200)
  t.equal(res.json().object, 'chat.completion')
  await app.usage.flush()
  const [record] = (await admin('GET', `/admin/v1/workspaces/${ws.slug}/usage`)).json.records
  const reported = mistral.reportedUsage.at(-1)!
  t.match(record, { streamed: false, estimated: false, promptTokens: reported.usage.prompt_tokens, completionTokens: reported.usage.completion_tokens })
})
