import { Mistral } from '@mistralai/mistralai'
import { HTTPClient } from '@mistralai/mistralai/lib/http.js'
import { HTTPValidationError } from '@mistralai/mistralai/models/errors'
import t from 'tap'
import { buildTestApp, listen } from '../helpers/app.js'
import { errorBodies, type ReceivedRequest } from '../helpers/fake-mistral.js'

// Issue 6, the other half: with the OpenAI dialect served on the same /v1 URLs, the official Mistral SDK is untouched.
// Its bodies reach Mistral exactly as it sent them, and its streams reach it byte for byte as Mistral sent them:
// each call is made twice, through the gateway and straight to the fake, and the two are compared.

const MODEL = 'mistral-small-latest'

const testApp = await buildTestApp(t)
const { mistral } = testApp
const url = await listen(testApp.app)

interface Recorded {
  sdk: Mistral
  /** the raw bytes of every response body, as the SDK received them */
  bodies: Array<Promise<Buffer>>
  upstream (): ReceivedRequest[]
}

/** A Mistral SDK whose fetch keeps a copy of each response body, untouched, beside the one the SDK reads. */
function recorded (serverURL: string, apiKey: string): Recorded {
  const bodies: Array<Promise<Buffer>> = []
  const httpClient = new HTTPClient({
    fetcher: async (input, init) => {
      const res = await fetch(input, init)
      if (!res.body) return res
      const [mine, theirs] = res.body.tee()
      bodies.push(new Response(mine).arrayBuffer().then((bytes) => Buffer.from(bytes)))
      return new Response(theirs, { status: res.status, statusText: res.statusText, headers: res.headers })
    }
  })
  return {
    sdk: new Mistral({ apiKey, serverURL, httpClient }),
    bodies,
    upstream: () => mistral.received.filter((r) => r.apiKey === apiKey)
  }
}

async function pair () {
  const ws = await testApp.createWorkspace()
  const gateway = recorded(url, ws.token)
  gateway.upstream = () => mistral.received.filter((r) => r.apiKey === ws.mistralKey)
  const direct = recorded(mistral.url, `direct-${ws.slug}`)
  return { gateway, direct }
}

async function collect<T> (stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = []
  for await (const item of stream) items.push(item)
  return items
}

// ids and timestamps differ per call; the framing and content do not
const normalise = (text: string) => text.replace(/"id":"[^"]+"/g, '"id":"x"').replace(/"created":\d+/g, '"created":0')

t.test('chat and FIM streams: byte-identical to Mistral\'s, and parsed the same', async (t) => {
  const { gateway, direct } = await pair()
  const calls = [
    (sdk: Mistral) => sdk.chat.stream({
      model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], maxTokens: 8, randomSeed: 7
    }),
    (sdk: Mistral) => sdk.fim.stream({ model: 'codestral-latest', prompt: 'def add(a, b):', suffix: 'return c' })
  ]
  for (const [i, call] of calls.entries()) {
    const viaGateway = await collect(await call(gateway.sdk))
    const straight = await collect(await call(direct.sdk))
    t.same(JSON.parse(normalise(JSON.stringify(viaGateway))), JSON.parse(normalise(JSON.stringify(straight))),
      `call ${i}: the same events`)
    const gatewayBytes = (await gateway.bodies[i]).toString()
    const directBytes = (await direct.bodies[i]).toString()
    t.match(gatewayBytes, /^data: \{/)
    t.match(gatewayBytes, /\n\ndata: \[DONE\]\n\n$/)
    t.equal(normalise(gatewayBytes), normalise(directBytes), `call ${i}: the same bytes`)
  }
})

t.test('chat with every Mistral option: the body reaches Mistral as the SDK sent it', async (t) => {
  const { gateway, direct } = await pair()
  const tools = [{
    type: 'function' as const,
    function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } }
  }]
  const request = {
    model: MODEL,
    messages: [
      { role: 'system' as const, content: 'Answer briefly.' },
      { role: 'user' as const, content: [{ type: 'text' as const, text: 'Weather in Paris?' }] }
    ],
    maxTokens: 20,
    randomSeed: 3,
    temperature: 0.3,
    safePrompt: true,
    tools,
    toolChoice: 'any' as const,
    parallelToolCalls: false,
    responseFormat: { type: 'text' as const }
  }
  const first = await gateway.sdk.chat.complete(request)
  await direct.sdk.chat.complete(request)
  t.same(gateway.upstream()[0].json, direct.upstream()[0].json, 'the same body upstream')
  const call = first.choices[0]?.message?.toolCalls?.[0]
  t.match(call, { id: /^[a-zA-Z0-9]{9}$/, function: { name: 'get_weather' } })

  // the round trip with Mistral's own id, and `prefix` and `name` on a tool message: all Mistral's
  const followUp = {
    model: MODEL,
    messages: [
      ...request.messages,
      { role: 'assistant' as const, content: '', toolCalls: [call!] },
      { role: 'tool' as const, toolCallId: call!.id, name: 'get_weather', content: '{"celsius":21}' },
      { role: 'assistant' as const, content: 'It is', prefix: true }
    ],
    tools
  }
  const answer = await gateway.sdk.chat.complete(followUp)
  await direct.sdk.chat.complete(followUp)
  t.equal(answer.choices[0].finishReason, 'stop')
  t.same(gateway.upstream()[1].json, direct.upstream()[1].json, 'the same body upstream')
  t.equal(gateway.upstream()[1].status, 200)
})

t.test('service_tier auto: Mistral\'s own opt-in to priority, passed as the SDK sent it', async (t) => {
  const { gateway, direct } = await pair()
  const request = {
    model: MODEL, messages: [{ role: 'user' as const, content: 'Which tier?' }], serviceTier: 'auto' as const
  }
  const answer = await gateway.sdk.chat.complete(request)
  await direct.sdk.chat.complete(request)
  t.same(gateway.upstream()[0].json, direct.upstream()[0].json, 'the same body upstream')
  t.equal((gateway.upstream()[0].json as { service_tier?: unknown }).service_tier, 'auto')
  t.equal(answer.usage.serviceTier, 'priority', 'served at priority, as the fake serves auto')
})

t.test('a streamed tool call: the SDK parses it (tool deltas gain OpenAI\'s index and type, which it ignores)',
  async (t) => {
    const { gateway } = await pair()
    const events = await collect(await gateway.sdk.chat.stream({
      model: MODEL,
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: {} } } }],
      toolChoice: 'any'
    }))
    const last = events.at(-1)!.data
    t.equal(last.choices[0].finishReason, 'tool_calls')
    t.match(last.choices[0].delta.toolCalls, [{ id: /^[a-zA-Z0-9]{9}$/, function: { name: 'get_weather' } }])
    t.equal(last.usage?.totalTokens, gateway.upstream()[0].usage?.total_tokens)
  })

t.test('embeddings: floats, as Mistral sent them', async (t) => {
  const { gateway, direct } = await pair()
  const viaGateway = await gateway.sdk.embeddings.create({ model: 'mistral-embed', inputs: ['one', 'two'] })
  const straight = await direct.sdk.embeddings.create({ model: 'mistral-embed', inputs: ['one', 'two'] })
  t.same(viaGateway.data.map((d) => d.embedding), straight.data.map((d) => d.embedding))
  t.same(gateway.upstream()[0].json, direct.upstream()[0].json)
})

t.test('models.list: the same cards', async (t) => {
  const { gateway, direct } = await pair()
  t.same(await gateway.sdk.models.list(), await direct.sdk.models.list())
})

t.test('a Mistral 422 still parses as HTTPValidationError, with its detail', async (t) => {
  const { gateway } = await pair()
  mistral.enqueueError(422, errorBodies.validationFastApi.body, {}, { path: '/v1/chat/completions' })
  const err = await gateway.sdk.chat.complete({ model: MODEL, messages: [{ role: 'user', content: 'x' }] })
    .catch((error: unknown) => error)
  t.type(err, HTTPValidationError)
  t.match((err as HTTPValidationError).detail, [{ type: 'extra_forbidden', loc: ['body', 'store'] }])
  t.match((err as Error).message, /^API error occurred: \{"detail":\[\{"loc":\["body","store"\],/)
})

t.test('moderations naming a Mistral model: Mistral\'s answer plus `flagged`, which the SDK drops', async (t) => {
  const { gateway, direct } = await pair()
  const call = { model: 'mistral-moderation-2603', inputs: ['A calm sentence', 'talk of violence_and_threats'] }
  const viaGateway = await gateway.sdk.classifiers.moderate(call)
  const straight = await direct.sdk.classifiers.moderate(call)
  t.same({ ...viaGateway, id: 'x' }, { ...straight, id: 'x' }, 'the same parsed answer')
  t.equal(viaGateway.results?.[1].categories?.violence_and_threats, true)
  const gatewayBytes = JSON.parse((await gateway.bodies[0]).toString())
  const directBytes = JSON.parse((await direct.bodies[0]).toString())
  t.same(gatewayBytes.results.map((result: { flagged?: boolean }) => result.flagged), [false, true],
    'flagged added for OpenAI clients naming a Mistral model')
  const withoutFlagged = gatewayBytes.results.map(({ flagged: _, ...rest }: { flagged?: boolean }) => rest)
  t.same({ ...gatewayBytes, id: 'x', results: withoutFlagged }, { ...directBytes, id: 'x' },
    'everything else as Mistral sent it, no OpenAI category name added')
  t.same(gateway.upstream()[0].json, { model: 'mistral-moderation-2603', input: call.inputs }, 'the body as sent')
})
