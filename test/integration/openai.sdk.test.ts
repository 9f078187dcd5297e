import OpenAI from 'openai'
import t from 'tap'
import { request } from 'undici'
import { costOf } from '../../src/pricing/cost.js'
import { completePrices, DEFAULT_PRICES } from '../../src/pricing/default-prices.js'
import { buildTestApp, listen, type TestWorkspace } from '../helpers/app.js'
import { errorBodies, MID_STREAM_ERROR, type ReceivedRequest } from '../helpers/fake-mistral.js'

// Issue 6: the openai SDK, pointed at the gateway's /v1 with a workspace token and nothing else changed, works against
// a fake Mistral that rejects, as Mistral does, every field its spec does not allow (test/fixtures/mistral).
// One gateway for the file, one workspace per test: each test reads only what its own workspace sent upstream.

const MODEL = 'mistral-small-latest'
const TOOL_CALL_ID = /^[a-zA-Z0-9]{9}$/
const weatherTool: OpenAI.Chat.Completions.ChatCompletionTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }
  }
}

// no cooldown hold: a Mistral 429 reaches the client at once, so that the SDK's own retry is what is tested
const testApp = await buildTestApp(t, { UPSTREAM_COOLDOWN_HOLD_MS: '0' })
const { mistral } = testApp
const url = await listen(testApp.app)

interface Client {
  ws: TestWorkspace
  openai: OpenAI
  /** every status the SDK received, retries included */
  statuses: number[]
  /** what this workspace's calls looked like when they reached Mistral */
  upstream (): ReceivedRequest[]
}

async function client (options: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}): Promise<Client> {
  const ws = await testApp.createWorkspace()
  const statuses: number[] = []
  const openai = new OpenAI({
    apiKey: ws.token,
    baseURL: url + '/v1',
    maxRetries: 0,
    fetch: async (input, init) => {
      const res = await fetch(input, init)
      statuses.push(res.status)
      return res
    },
    ...options
  })
  return { ws, openai, statuses, upstream: () => mistral.received.filter((r) => r.apiKey === ws.mistralKey) }
}

async function failure (call: Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  const err = await call.then(() => undefined, (error: unknown) => error)
  if (!(err instanceof OpenAI.APIError)) throw new Error(`expected an APIError, got ${String(err)}`)
  return err
}

function json (received: ReceivedRequest | undefined): Record<string, any> {
  return (received?.json ?? {}) as Record<string, any>
}

t.test('chat: a plain call, usage as Mistral reported it', async (t) => {
  const c = await client()
  const completion = await c.openai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Say hello to the gateway' }]
  })
  t.equal(completion.object, 'chat.completion')
  t.ok(completion.choices[0].message.content, 'with an answer')
  t.equal(completion.choices[0].finish_reason, 'stop')
  const [sent] = c.upstream()
  t.equal(sent.status, 200, 'Mistral accepted the body')
  t.same(completion.usage, sent.usage)
  t.same(json(sent), { model: MODEL, messages: [{ role: 'user', content: 'Say hello to the gateway' }] },
    'the body went as sent: nothing to translate')
})

t.test('chat: OpenAI-only parameters are renamed or dropped, never a 422', async (t) => {
  const c = await client()
  const completion = await c.openai.chat.completions.create({
    model: MODEL,
    messages: [
      { role: 'developer', content: 'Answer briefly.' },
      { role: 'user', name: 'alice', content: [{ type: 'text', text: 'Tell me a story' }] }
    ],
    max_completion_tokens: 3,
    seed: 42,
    user: 'end-user-1',
    store: false,
    logprobs: false,
    temperature: 1.8
  })
  t.equal(completion.choices[0].finish_reason, 'length', 'max_completion_tokens took effect')
  t.equal(completion.usage?.completion_tokens, 3)
  const [sent] = c.upstream()
  t.equal(sent.status, 200, 'Mistral accepted the body')
  const body = json(sent)
  t.equal(body.max_tokens, 3, 'max_completion_tokens → max_tokens')
  t.equal(body.random_seed, 42, 'seed → random_seed')
  t.same(body.messages, [
    { role: 'system', content: 'Answer briefly.' },
    { role: 'user', content: [{ type: 'text', text: 'Tell me a story' }] }
  ], 'developer → system; name dropped from the user message; content parts kept')
  t.equal(body.temperature, 1.5, 'temperature clamped to Mistral\'s range')
  for (const field of ['max_completion_tokens', 'seed', 'user', 'store', 'logprobs']) {
    t.notOk(field in body, `${field} did not reach Mistral`)
  }
})

t.test('chat: a negative seed reaches Mistral as a non-negative random_seed, the same one every time', async (t) => {
  const c = await client()
  for (let i = 0; i < 2; i++) {
    await c.openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], seed: -1 })
  }
  const sent = c.upstream()
  t.same(sent.map((r) => r.status), [200, 200])
  t.same(sent.map((r) => json(r).random_seed), [4294967295, 4294967295], '-1 modulo 2^32, both times')
})

t.test('chat: response_format json_schema passes as it is', async (t) => {
  const c = await client()
  const responseFormat = {
    type: 'json_schema' as const,
    json_schema: {
      name: 'book',
      description: 'A book',
      strict: true,
      schema: {
        type: 'object',
        properties: { title: { type: 'string' }, authors: { type: 'array', items: { type: 'string' } } },
        required: ['title', 'authors'],
        additionalProperties: false
      }
    }
  }
  const completion = await c.openai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'A book, please' }], response_format: responseFormat
  })
  t.equal(completion.object, 'chat.completion')
  const [sent] = c.upstream()
  t.equal(sent.status, 200)
  t.same(json(sent).response_format, responseFormat)
})

t.test('chat: service_tier auto is OpenAI\'s project default, served and billed as standard; priority asks for it',
  async (t) => {
    const c = await client()
    const messages: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Which tier?' }]
    for (const tier of ['auto', 'default', 'priority'] as const) {
      await c.openai.chat.completions.create({ model: MODEL, messages, service_tier: tier })
    }
    const sent = c.upstream()
    t.same(sent.map((r) => json(r).service_tier), ['standard_only', 'standard_only', 'auto'],
      'only priority opts in to Mistral\'s priority capacity')
    t.same(sent.map((r) => r.usage?.service_tier), ['standard', 'standard', 'priority'])
    await testApp.app.usage.flush()
    const { json: usage } = await testApp.admin('GET', `/admin/v1/workspaces/${c.ws.slug}/usage`)
    const records = usage.records.reverse()
    const small = completePrices(DEFAULT_PRICES.find((row) => row.model === 'mistral-small-2603' &&
      row.family === 'chat')!.prices.USD!)
    const cost = (usage: Record<string, unknown>, serviceTier: string) => costOf({
      promptTokens: Number(usage.prompt_tokens), completionTokens: Number(usage.completion_tokens),
      cachedTokens: 0, audioSeconds: 0, pages: 0, characters: 0
    }, small, { family: 'chat', markupBps: 0, serviceTier }).listMicros
    t.same(records.map((record: { serviceTier: string }) => record.serviceTier), ['standard', 'standard', 'priority'])
    t.equal(records[0].listCostMicros, cost(sent[0].usage!, 'standard'), 'auto billed at the standard rate')
    t.equal(records[2].listCostMicros, cost(sent[2].usage!, 'priority'), 'priority at 1.75×')
  })

t.test('streamed chat with include_usage: a last chunk with empty choices and Mistral\'s usage', async (t) => {
  const c = await client()
  const stream = await c.openai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], stream: true,
    stream_options: { include_usage: true }
  })
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = []
  for await (const chunk of stream) chunks.push(chunk)
  const last = chunks.at(-1)!
  const [sent] = c.upstream()
  t.equal(sent.status, 200)
  t.notOk('stream_options' in json(sent), 'stream_options did not reach Mistral')
  t.same(last.choices, [], 'the last chunk has no choices')
  t.same(last.usage, sent.usage, 'and the usage Mistral reported')
  t.equal(chunks.at(-2)?.choices[0].finish_reason, 'stop', 'it follows the finish chunk')
  t.ok(chunks.slice(0, -1).every((chunk) => chunk.choices.length === 1), 'every other chunk has its choice')
  const text = chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('')
  t.ok(text.length > 0, 'the text arrived')
})

t.test('tools: a call, then OpenAI-style ids sent back, mapped the same way in both messages', async (t) => {
  const c = await client()
  const first = await c.openai.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools: [weatherTool],
    tool_choice: 'required'
  })
  const call = first.choices[0].message.tool_calls?.[0]
  t.equal(first.choices[0].finish_reason, 'tool_calls')
  t.match(call, { type: 'function', function: { name: 'get_weather' } })
  t.match(call?.id, TOOL_CALL_ID, 'Mistral\'s own id')
  t.equal(json(c.upstream()[0]).tool_choice, 'any', 'tool_choice required → any')

  // a conversation that began with another provider: its ids are OpenAI's `call_…`
  const history: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [
    { role: 'user', content: 'Weather in Paris and Lyon?' },
    {
      role: 'assistant',
      content: null,
      tool_calls: [{
        id: 'call_abc123XYZ', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' }
      }]
    },
    { role: 'tool', tool_call_id: 'call_abc123XYZ', content: '{"celsius":21}' },
    first.choices[0].message,
    { role: 'tool', tool_call_id: call!.id, content: '{"celsius":19}' }
  ]
  const second = await c.openai.chat.completions.create({ model: MODEL, messages: history, tools: [weatherTool] })
  t.equal(second.choices[0].finish_reason, 'stop')
  const sent = c.upstream()[1]
  t.equal(sent.status, 200, 'Mistral accepted the ids')
  const messages = json(sent).messages
  const mapped = messages[1].tool_calls[0].id
  t.match(mapped, TOOL_CALL_ID, 'call_abc123XYZ became 9 letters and digits')
  t.not(mapped, 'call_abc123XYZ')
  t.equal(messages[2].tool_call_id, mapped, 'the tool reply names the same id')
  t.equal(messages[3].tool_calls[0].id, call!.id, 'Mistral\'s own id went back unchanged')
  t.equal(messages[4].tool_call_id, call!.id)

  await c.openai.chat.completions.create({ model: MODEL, messages: history, tools: [weatherTool] })
  t.equal(json(c.upstream()[2]).messages[1].tool_calls[0].id, mapped, 'the next turn maps it the same way')

  // the same history straight to the fake is what Mistral answers: the 400 the gateway spares its clients
  const direct = await request(`${mistral.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer direct', 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [history[0], { ...history[1], content: '' }, history[2]] })
  })
  t.equal(direct.statusCode, 400)
  t.match(await direct.body.json(), { code: '3280', type: 'invalid_function_call' })
})

t.test('tools: a streamed call through the SDK\'s stream helper, which needs index and type', async (t) => {
  const c = await client()
  const runner = c.openai.chat.completions.stream({
    model: MODEL, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [weatherTool],
    tool_choice: { type: 'function', function: { name: 'get_weather' } }, stream_options: { include_usage: true }
  })
  const completion = await runner.finalChatCompletion()
  const call = completion.choices[0].message.tool_calls?.[0]
  t.match(call, { type: 'function', function: { name: 'get_weather', arguments: '{}' } })
  t.match(call?.id, TOOL_CALL_ID)
  t.equal(completion.choices[0].finish_reason, 'tool_calls')
  t.same(completion.usage, c.upstream()[0].usage)
})

const strictWeatherTool = { type: 'function' as const, function: { ...weatherTool.function, strict: true } }

t.test('tools: parse() reads Mistral\'s tool calls, which come without type', async (t) => {
  const c = await client()
  const completion = await c.openai.chat.completions.parse({
    model: MODEL, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [strictWeatherTool],
    tool_choice: 'required'
  })
  const call = completion.choices[0].message.tool_calls?.[0]
  t.match(call, { type: 'function', function: { name: 'get_weather', arguments: '{}', parsed_arguments: {} } })
  // what Mistral answered: the same request straight to the fake
  const direct = await request(`${mistral.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer direct', 'content-type': 'application/json' },
    body: JSON.stringify(c.upstream()[0].json)
  })
  const [mistralCall] = ((await direct.body.json()) as any).choices[0].message.tool_calls
  t.same(Object.keys(mistralCall), ['id', 'function'], 'Mistral\'s call has no type')
})

t.test('tools: runTools() calls the function with the object arguments Mistral may send, as JSON text', async (t) => {
  const c = await client()
  const calledWith: unknown[] = []
  const runner = c.openai.chat.completions.runTools({
    model: MODEL,
    messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools: [{
      type: 'function',
      function: {
        name: 'get_weather',
        description: 'The weather in a city',
        parameters: weatherTool.function.parameters!,
        parse: JSON.parse,
        function: (args: unknown) => { calledWith.push(args); return { celsius: 21 } }
      }
    }],
    tool_choice: { type: 'function', function: { name: 'get_weather' } },
    // the fake answers with these arguments as an object, as Mistral's spec allows
    metadata: { fake_tool_arguments: '{"city":"Paris"}' }
  })
  t.equal(await runner.finalFunctionToolCallResult(), '{"celsius":21}')
  t.same(calledWith, [{ city: 'Paris' }])
  const call = (await runner.finalChatCompletion()).choices[0].message.tool_calls?.[0]
  t.match(call, { type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } })
})

t.test('tools: a streamed call with object arguments reaches the stream helper as JSON text', async (t) => {
  const c = await client()
  const runner = c.openai.chat.completions.stream({
    model: MODEL, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [weatherTool],
    tool_choice: 'required', metadata: { fake_tool_arguments: '{"city":"Paris"}' }
  })
  const call = (await runner.finalChatCompletion()).choices[0].message.tool_calls?.[0]
  t.match(call, { type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } })
})

t.test('embeddings: base64 (the SDK\'s default) decodes to the float vectors, bit for bit', async (t) => {
  const c = await client()
  const input = ['The quick brown fox', 'jumps over the lazy dog']
  const floats = await c.openai.embeddings.create({ model: 'mistral-embed', input, encoding_format: 'float' })
  const decoded = await c.openai.embeddings.create({ model: 'mistral-embed', input })
  t.equal(decoded.data.length, 2)
  for (const [i, item] of decoded.data.entries()) {
    const expected = (floats.data[i].embedding).map(Math.fround)
    t.equal(item.embedding.length, 1024, `vector ${i} has Mistral's 1024 dimensions`)
    t.same(item.embedding, expected, `vector ${i} equals the float call's, as float32`)
  }
  const [floatCall, base64Call] = c.upstream()
  t.equal(json(floatCall).encoding_format, 'float')
  t.equal(json(base64Call).encoding_format, 'float', 'Mistral was asked for floats')
  t.equal(base64Call.status, 200)
  t.same(decoded.usage, base64Call.usage, 'usage as Mistral reported it')
})

t.test('embeddings: dimensions → output_dimension', async (t) => {
  const c = await client()
  const res = await c.openai.embeddings.create({ model: 'codestral-embed', input: 'def f(): pass', dimensions: 256 })
  t.equal(res.data[0].embedding.length, 256)
  const [sent] = c.upstream()
  t.equal(json(sent).output_dimension, 256)
  t.notOk('dimensions' in json(sent))
})

t.test('models.list: the cards Mistral lists, in the shape the SDK pages through', async (t) => {
  const c = await client()
  const ids: string[] = []
  for await (const model of c.openai.models.list()) ids.push(model.id)
  t.ok(ids.includes(MODEL), `${MODEL} is listed`)
  t.ok(ids.includes('mistral-embed'))
  const card = await c.openai.models.retrieve(MODEL)
  t.match(card, { id: MODEL, object: 'model', owned_by: 'mistralai' })
})

t.test('errors: Mistral\'s own bodies and the gateway\'s reach the user with their message', async (t) => {
  const c = await client()
  mistral.enqueueError(422, errorBodies.validationMessageObject.body, {}, { path: '/v1/chat/completions' })
  const hello = () => c.openai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] })
  const invalid = await failure(hello())
  t.equal(invalid.status, 422)
  t.equal(invalid.message, '422 body.stream_options.include_usage: Extra inputs are not permitted',
    'not "422 status code (no body)"')

  mistral.enqueueError(400, errorBodies.invalidFunctionCall.body, {}, { path: '/v1/chat/completions' })
  const badId = await failure(hello())
  t.equal(badId.message, '400 Tool call id was turn1_0 but must be a-z, A-Z, 0-9, with a length of 9.')
  t.equal(badId.code, '3280')
  t.equal(badId.type, 'invalid_function_call')

  mistral.enqueueError(422, errorBodies.validationFastApi.body, {}, { path: '/v1/embeddings' })
  const bare = await failure(c.openai.embeddings.create({ model: 'mistral-embed', input: 'x' }))
  t.equal(bare.message, '422 body.store: Extra inputs are not permitted', 'a bare FastAPI detail too')

  const wrongToken = new OpenAI({ apiKey: 'tmt_not-a-token', baseURL: url + '/v1', maxRetries: 0 })
  const denied = await failure(wrongToken.models.list())
  t.equal(denied.status, 401)
  t.equal(denied.message, '401 Invalid, expired or revoked workspace token')
})

t.test('a stream Mistral cuts mid-way ends in an error the SDK throws, with its message', async (t) => {
  const c = await client()
  mistral.faultNextStream({ after: 2, mode: 'cut', path: '/v1/chat/completions' })
  const stream = await c.openai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], stream: true
  })
  let chunks = 0
  const read = async () => { for await (const _ of stream) chunks++ }
  const err = await read().then(() => undefined, (error: unknown) => error)
  t.ok(chunks >= 1, 'the first chunks arrived')
  t.type(err, OpenAI.APIError)
  t.equal((err as Error).message, 'The upstream stream ended before it was complete')
})

t.test('an error Mistral sends inside a stream: the SDK throws it, with Mistral\'s message', async (t) => {
  // plain (passed as it comes but for the error) and with include_usage (reshaped event by event)
  for (const options of [{}, { stream_options: { include_usage: true } }]) {
    const c = await client()
    mistral.faultNextStream({ after: 2, mode: 'error', path: '/v1/chat/completions' })
    const stream = await c.openai.chat.completions.create({
      model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], stream: true, ...options
    })
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = []
    const read = async () => { for await (const chunk of stream) chunks.push(chunk) }
    const err = await read().then(() => undefined, (error: unknown) => error)
    const what = JSON.stringify(options)
    t.equal(chunks.length, 2, `${what}: the two chunks before the error arrived`)
    t.type(err, OpenAI.APIError, `${what}: an APIError, not a quiet end`)
    t.equal((err as InstanceType<typeof OpenAI.APIError>).message, 'Service unavailable')
    t.equal((err as InstanceType<typeof OpenAI.APIError>).code, '3000')
    t.equal((err as InstanceType<typeof OpenAI.APIError>).type, 'server_error')
  }

  // what any client reads: Mistral's event, every field kept, plus the error object; nothing after it
  const ws = await testApp.createWorkspace()
  mistral.faultNextStream({ after: 1, mode: 'error', path: '/v1/chat/completions' })
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ws.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], stream: true })
  })
  const events = (await res.body.text()).split('\n\n').filter(Boolean)
  t.equal(events.length, 2, 'one chunk, then the error event')
  t.match(events[0], /^data: \{"id":/)
  t.same(JSON.parse(events[1].slice('data: '.length)), {
    ...MID_STREAM_ERROR,
    error: { message: 'Service unavailable', type: 'server_error', code: '3000', param: null }
  })
})

t.test('moderations: no model or OpenAI\'s goes to Mistral\'s model; flagged and OpenAI\'s categories come back',
  async (t) => {
    const c = await client()
    const input = ['A calm sentence', 'criminal plans and selfharm', 'my pii is here']
    for (const [i, model] of [undefined, 'omni-moderation-latest', 'text-moderation-latest'].entries()) {
      const what = model ?? 'no model'
      const res = await c.openai.moderations.create(model === undefined ? { input } : { model, input })
      const sent = c.upstream()[i]
      t.equal(sent.status, 200, `${what}: Mistral accepted the body`)
      t.same(json(sent), { model: 'mistral-moderation-2603', input }, `${what}: Mistral's moderation model was asked`)
      t.equal(res.model, 'mistral-moderation-2603', 'the answer names the model that answered')
      const [calm, criminal, pii] = res.results
      t.equal(calm.flagged, false, `${what}: the calm one is not flagged`)
      t.ok(Object.values(calm.categories).every((hit) => hit === false), 'no category of the calm one is set')
      t.match(calm.categories, { sexual: false, hate: false, violence: false, 'self-harm': false, illicit: false })
      t.equal(criminal.flagged, true)
      t.match(criminal.categories,
        { illicit: true, 'self-harm': true, criminal: true, selfharm: true, violence: false })
      t.equal(criminal.category_scores.illicit, 0.99, 'illicit scores as the higher of dangerous and criminal')
      t.equal(criminal.category_scores['self-harm'], 0.99)
      t.equal(calm.category_scores.hate, 0.0012, 'hate scores as hate_and_discrimination')
      t.equal(pii.flagged, true, 'flagged by a category of Mistral\'s alone')
      t.equal((pii.categories as unknown as Record<string, boolean>).pii, true)
      t.notOk('harassment' in calm.categories, 'no Mistral category means OpenAI\'s harassment: left out, not guessed')
      t.same(res.results.map((r) => Object.keys(r.categories).length), [15, 15, 15],
        'Mistral\'s 11 categories, and OpenAI\'s hate, violence, self-harm and illicit (sexual is in both)')
    }
  })

t.test('moderations naming a Mistral model: flagged on each result, Mistral\'s categories as they are', async (t) => {
  const c = await client()
  const input = ['A calm sentence', 'talk of violence_and_threats']
  const res = await c.openai.moderations.create({ model: 'mistral-moderation-2603', input })
  const [sent] = c.upstream()
  t.equal(sent.status, 200)
  t.same(json(sent), { model: 'mistral-moderation-2603', input }, 'the body as sent: nothing to translate')
  const [calm, violent] = res.results
  t.equal(calm.flagged, false)
  t.equal(violent.flagged, true, 'flagged, so that `if (result.flagged)` does not fail open')
  t.equal((violent.categories as unknown as Record<string, boolean>).violence_and_threats, true)
  t.notOk('violence' in violent.categories, 'OpenAI\'s names only for the requests the gateway translated')
})

t.test('moderations: OpenAI\'s multi-modal text parts are one input; an image is refused before Mistral', async (t) => {
  const c = await client()
  const res = await c.openai.moderations.create({
    model: 'omni-moderation-latest',
    input: [{ type: 'text', text: 'first part' }, { type: 'text', text: 'second part about violence_and_threats' }]
  })
  t.equal(res.results.length, 1)
  t.equal(res.results[0].categories.violence, true)
  t.same(json(c.upstream()[0]).input, 'first part\nsecond part about violence_and_threats')

  const refused = await failure(c.openai.moderations.create({
    model: 'omni-moderation-latest',
    input: [{ type: 'text', text: 'look' }, { type: 'image_url', image_url: { url: 'https://example.com/a.png' } }]
  }))
  t.equal(refused.status, 400)
  t.equal(refused.message, '400 Mistral\'s moderation reads text only: send text inputs')
  t.equal(c.upstream().length, 1, 'the refused call never reached Mistral')
})

t.test('a Mistral 429 with retry-after-ms: the SDK waits as told, retries, and succeeds', async (t) => {
  const c = await client({ maxRetries: 2 })
  mistral.enqueueError(429, errorBodies.rateLimited.body, { 'retry-after-ms': '400' },
    { path: '/v1/chat/completions' })
  const startedAt = Date.now()
  const completion = await c.openai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Hello through a rate limit' }]
  })
  const elapsed = Date.now() - startedAt
  t.equal(completion.object, 'chat.completion')
  t.same(c.statuses, [429, 200], 'the SDK met the 429 once, then succeeded')
  t.same(c.upstream().map((r) => r.status), [429, 200], 'two upstream calls: the 429 and the success')
  t.ok(elapsed >= 350, `it waited for the cooldown Mistral asked for (${elapsed} ms)`)
})

t.test('a spend cap reached: 429 insufficient_quota, not retried, nothing upstream', async (t) => {
  const c = await client({ maxRetries: 2 })
  const patched = await testApp.admin('PATCH', `/admin/v1/workspaces/${c.ws.slug}`, { caps: { monthly: '0.000001' } })
  t.equal(patched.statusCode, 200, patched.body)
  const err = await failure(c.openai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Hello past the cap' }]
  }))
  t.equal(err.status, 429)
  t.equal(err.message, '429 The workspace\'s monthly spend cap of 0.000001 is reached')
  t.equal(err.type, 'insufficient_quota')
  t.equal(err.headers?.get('x-should-retry'), 'false')
  t.same(c.statuses, [429], 'the SDK did not retry')
  t.same(c.upstream(), [], 'Mistral saw no call')
})
