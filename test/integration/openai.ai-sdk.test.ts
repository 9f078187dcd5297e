import { createMistral } from '@ai-sdk/mistral'
import { createOpenAICompatible } from '@ai-sdk/openai-compatible'
import { APICallError, embed, generateText, jsonSchema, stepCountIs, streamText, tool, type LanguageModel } from 'ai'
import t from 'tap'
import { buildTestApp, listen, type TestWorkspace } from '../helpers/app.js'
import { errorBodies, type ReceivedRequest } from '../helpers/fake-mistral.js'

// Issue 6: the Vercel AI SDK (`ai` 6, the last line that runs on Node 20) through the gateway, with the
// OpenAI-compatible provider (OpenAI's dialect, translated) and with the Mistral provider (Mistral's own, passed
// through), against a fake Mistral that rejects every field its spec does not allow.

const MODEL = 'mistral-small-latest'

const testApp = await buildTestApp(t)
const { mistral } = testApp
const url = await listen(testApp.app)

interface Setup {
  ws: TestWorkspace
  upstream (): ReceivedRequest[]
  providers: Array<[string, (model: string) => LanguageModel]>
}

async function setup (): Promise<Setup> {
  const ws = await testApp.createWorkspace()
  // includeUsage: the provider asks for `stream_options.include_usage`, as it must against OpenAI
  const compatible = createOpenAICompatible({
    name: 'tramontane', baseURL: url + '/v1', apiKey: ws.token, includeUsage: true
  })
  const native = createMistral({ baseURL: url + '/v1', apiKey: ws.token })
  return {
    ws,
    upstream: () => mistral.received.filter((r) => r.apiKey === ws.mistralKey),
    providers: [['openai-compatible', (model) => compatible.chatModel(model)], ['mistral', (model) => native(model)]]
  }
}

const weather = tool({
  description: 'The weather in a city',
  inputSchema: jsonSchema<{ city: string }>({
    type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false
  }),
  execute: async ({ city }) => ({ city, celsius: 21 })
})

t.test('generateText: an answer and Mistral\'s usage, through both providers', async (t) => {
  const s = await setup()
  for (const [name, model] of s.providers) {
    const result = await generateText({ model: model(MODEL), prompt: 'Say hello to the gateway', maxRetries: 0 })
    const sent = s.upstream().at(-1)!
    t.equal(sent.status, 200, `${name}: Mistral accepted the body`)
    t.ok(result.text.length > 0, `${name}: an answer`)
    t.equal(result.finishReason, 'stop')
    t.equal(result.usage.inputTokens, sent.usage?.prompt_tokens, `${name}: input tokens`)
    t.equal(result.usage.outputTokens, sent.usage?.completion_tokens, `${name}: output tokens`)
  }
})

t.test('streamText: the text, then the usage Mistral reported', async (t) => {
  const s = await setup()
  for (const [name, model] of s.providers) {
    const result = streamText({ model: model(MODEL), prompt: 'Tell me a story', maxRetries: 0 })
    let text = ''
    for await (const delta of result.textStream) text += delta
    const usage = await result.usage
    const sent = s.upstream().at(-1)!
    t.equal(sent.status, 200, `${name}: Mistral accepted the body`)
    t.ok(text.length > 0, `${name}: text streamed`)
    t.equal(usage.inputTokens, sent.usage?.prompt_tokens, `${name}: input tokens`)
    t.equal(usage.outputTokens, sent.usage?.completion_tokens, `${name}: output tokens`)
    t.equal(usage.totalTokens, sent.usage?.total_tokens, `${name}: total tokens`)
    if (name === 'openai-compatible') {
      t.notOk('stream_options' in (sent.json as object), 'stream_options did not reach Mistral')
    }
  }
})

t.test('a tool call, its result sent back, then the answer', async (t) => {
  const s = await setup()
  for (const [name, model] of s.providers) {
    const before = s.upstream().length
    const result = await generateText({
      model: model(MODEL),
      prompt: 'Weather in Paris?',
      tools: { get_weather: weather },
      toolChoice: 'required',
      stopWhen: stepCountIs(2),
      // the second step answers in words, with the tool's result in hand
      prepareStep: ({ stepNumber }) => stepNumber === 1 ? { toolChoice: 'none' } : undefined,
      maxRetries: 0
    })
    const [first, second] = s.upstream().slice(before)
    t.equal(result.steps.length, 2, `${name}: two steps`)
    t.match(result.steps[0].toolCalls, [{ toolName: 'get_weather' }], `${name}: the model called the tool`)
    t.match(result.steps[0].toolResults, [{ toolName: 'get_weather', output: { celsius: 21 } }])
    t.ok(result.text.length > 0, `${name}: then answered`)
    t.equal((first.json as { tool_choice?: unknown }).tool_choice, 'any', `${name}: required → any`)
    t.equal(second.status, 200, `${name}: Mistral accepted the tool result`)
    const messages = (second.json as { messages: Array<Record<string, any>> }).messages
    const callId = messages.find((m) => m.role === 'assistant')?.tool_calls?.[0]?.id
    t.match(callId, /^[a-zA-Z0-9]{9}$/)
    t.equal(messages.find((m) => m.role === 'tool')?.tool_call_id, callId, `${name}: the reply names the call`)
  }
})

t.test('a streamed tool call through the OpenAI-compatible provider', async (t) => {
  const s = await setup()
  const [, compatible] = s.providers[0]
  const result = streamText({
    model: compatible(MODEL),
    prompt: 'Weather in Paris?',
    tools: { get_weather: weather },
    toolChoice: 'required',
    maxRetries: 0
  })
  const calls = await result.toolCalls
  t.match(calls, [{ toolName: 'get_weather', toolCallId: /^[a-zA-Z0-9]{9}$/ }])
  t.equal(await result.finishReason, 'tool-calls')
  t.equal((await result.usage).totalTokens, s.upstream()[0].usage?.total_tokens)
})

t.test('embed through the OpenAI-compatible provider', async (t) => {
  const s = await setup()
  const compatible = createOpenAICompatible({ name: 'tramontane', baseURL: url + '/v1', apiKey: s.ws.token })
  const model = compatible.embeddingModel('mistral-embed')
  const { embedding } = await embed({ model, value: 'embed me', maxRetries: 0 })
  t.equal(embedding.length, 1024)
  t.equal(s.upstream()[0].status, 200)
})

t.test('errors reach the user with Mistral\'s message', async (t) => {
  const s = await setup()
  for (const [name, model] of s.providers) {
    mistral.enqueueError(400, errorBodies.invalidFunctionCall.body, {}, { path: '/v1/chat/completions' })
    const err = await generateText({ model: model(MODEL), prompt: 'x', maxRetries: 0 }).catch((error: unknown) => error)
    t.ok(APICallError.isInstance(err), `${name}: an APICallError`)
    t.equal((err as APICallError).statusCode, 400)
    t.equal((err as Error).message, 'Tool call id was turn1_0 but must be a-z, A-Z, 0-9, with a length of 9.',
      `${name}: the message`)
  }
})

// By default the provider asks for no usage, sends no OpenAI SDK header and nothing OpenAI-only in its body: the gateway
// cannot tell it from a Mistral client and passes Mistral's answer as it is. The provider reads Mistral's tool calls
// itself, whole and streamed; this is what makes leaving it undetected harmless
t.test('the OpenAI-compatible provider without includeUsage: tool calls in Mistral\'s own shape', async (t) => {
  const s = await setup()
  const plain = createOpenAICompatible({ name: 'tramontane', baseURL: url + '/v1', apiKey: s.ws.token })
  const streamed = streamText({
    model: plain.chatModel(MODEL),
    prompt: 'Weather in Paris?',
    tools: { get_weather: weather },
    toolChoice: 'required',
    maxRetries: 0
  })
  t.match(await streamed.toolCalls, [{ toolName: 'get_weather', toolCallId: /^[a-zA-Z0-9]{9}$/ }])
  t.equal(await streamed.finishReason, 'tool-calls')
  const whole = await generateText({
    model: plain.chatModel(MODEL),
    prompt: 'Weather in Paris?',
    tools: { get_weather: weather },
    toolChoice: 'required',
    stopWhen: stepCountIs(1),
    maxRetries: 0
  })
  t.match(whole.toolCalls, [{ toolName: 'get_weather', toolCallId: /^[a-zA-Z0-9]{9}$/ }])
  t.equal(whole.finishReason, 'tool-calls')
  const sent = s.upstream()
  t.equal(sent.length, 2)
  t.ok(sent.every((r) => r.status === 200), 'Mistral accepted both calls')
})
