import { AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage } from '@langchain/core/messages'
import { ChatMistralAI } from '@langchain/mistralai'
import { ChatOpenAI } from '@langchain/openai'
import t from 'tap'
import { buildTestApp, listen, type TestWorkspace } from '../helpers/app.js'
import { errorBodies, type ReceivedRequest } from '../helpers/fake-mistral.js'

// Issue 6: LangChain JS through the gateway: ChatOpenAI (OpenAI's dialect, `streamUsage` asking for
// `stream_options.include_usage`) and ChatMistralAI (the Mistral SDK underneath), against a fake Mistral that rejects
// every field its spec does not allow.

const MODEL = 'mistral-small-latest'
const TOOL_CALL_ID = /^[a-zA-Z0-9]{9}$/
const weatherTool = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }
  }
}

const testApp = await buildTestApp(t)
const { mistral } = testApp
const url = await listen(testApp.app)

interface Setup {
  ws: TestWorkspace
  upstream (): ReceivedRequest[]
  openai: ChatOpenAI
  mistralai: ChatMistralAI
}

async function setup (): Promise<Setup> {
  const ws = await testApp.createWorkspace()
  return {
    ws,
    upstream: () => mistral.received.filter((r) => r.apiKey === ws.mistralKey),
    openai: new ChatOpenAI({
      model: MODEL, apiKey: ws.token, configuration: { baseURL: url + '/v1' }, streamUsage: true, maxRetries: 0
    }),
    // the gateway's root, as for the Mistral SDK it wraps
    mistralai: new ChatMistralAI({ model: MODEL, apiKey: ws.token, serverURL: url, maxRetries: 0 })
  }
}

function usageOf (received: ReceivedRequest | undefined) {
  const usage = received?.usage ?? {}
  return { input_tokens: usage.prompt_tokens, output_tokens: usage.completion_tokens, total_tokens: usage.total_tokens }
}

async function streamed (stream: AsyncIterable<AIMessageChunk>): Promise<{ chunks: number, message: AIMessageChunk }> {
  let message: AIMessageChunk | undefined
  let chunks = 0
  for await (const chunk of stream) {
    chunks++
    message = message === undefined ? chunk : message.concat(chunk)
  }
  return { chunks, message: message! }
}

for (const client of ['openai', 'mistralai'] as const) {
  const name = client === 'openai' ? 'ChatOpenAI' : 'ChatMistralAI'

  t.test(`${name}: invoke, with Mistral's usage`, async (t) => {
    const s = await setup()
    const answer = await s[client].invoke([new SystemMessage('Answer briefly.'), new HumanMessage('Say hello')])
    const [sent] = s.upstream()
    t.equal(sent.status, 200, 'Mistral accepted the body')
    t.ok(typeof answer.content === 'string' && answer.content.length > 0, 'an answer')
    t.match(answer.usage_metadata, usageOf(sent))
  })

  t.test(`${name}: stream, the usage at the end`, async (t) => {
    const s = await setup()
    const { chunks, message } = await streamed(await s[client].stream([new HumanMessage('Tell me a story')]))
    const [sent] = s.upstream()
    t.equal(sent.status, 200, 'Mistral accepted the body')
    t.ok(chunks > 2, `streamed in ${chunks} chunks`)
    t.ok(String(message.content).length > 0, 'the text arrived')
    t.match(message.usage_metadata, usageOf(sent), 'the usage as Mistral reported it, counted once')
    if (client === 'openai') t.notOk('stream_options' in (sent.json as object), 'stream_options did not reach Mistral')
  })

  t.test(`${name}: a tool call, then a history with OpenAI-style ids`, async (t) => {
    const s = await setup()
    const withTools = s[client].bindTools([weatherTool], { tool_choice: client === 'openai' ? 'required' : 'any' })
    const call = await withTools.invoke([new HumanMessage('Weather in Paris?')])
    t.match(call.tool_calls, [{ name: 'get_weather', id: TOOL_CALL_ID }])
    const id = call.tool_calls![0].id!
    const history = [
      new HumanMessage('Weather in Paris and Lyon?'),
      new AIMessage({
        content: '', tool_calls: [{ id: 'call_abc123XYZ', name: 'get_weather', args: { city: 'Paris' } }]
      }),
      new ToolMessage({ tool_call_id: 'call_abc123XYZ', content: '{"celsius":21}' }),
      call,
      new ToolMessage({ tool_call_id: id, content: '{"celsius":19}' })
    ]
    const answer = await s[client].bindTools([weatherTool]).invoke(history)
    t.ok(String(answer.content).length > 0, 'an answer after the tool results')
    const sent = s.upstream()[1]
    t.equal(sent.status, 200, 'Mistral accepted the ids')
    const messages = (sent.json as { messages: Array<Record<string, any>> }).messages
    const mapped = messages[1].tool_calls[0].id
    t.match(mapped, TOOL_CALL_ID)
    t.equal(messages[2].tool_call_id, mapped, 'the call and its reply name the same id')
    t.equal(messages[3].tool_calls[0].id, id, 'Mistral\'s own id went back unchanged')
    t.equal(messages[4].tool_call_id, id)
  })
}

t.test('ChatOpenAI: a streamed tool call', async (t) => {
  const s = await setup()
  const withTools = s.openai.bindTools([weatherTool], { tool_choice: 'required' })
  const { message } = await streamed(await withTools.stream([new HumanMessage('Weather in Paris?')]))
  t.match(message.tool_calls, [{ name: 'get_weather', id: TOOL_CALL_ID, args: {} }])
  t.match(message.usage_metadata, usageOf(s.upstream()[0]))
})

t.test('errors reach the user with Mistral\'s message', async (t) => {
  const s = await setup()
  mistral.enqueueError(400, errorBodies.invalidFunctionCall.body, {}, { path: '/v1/chat/completions' })
  const viaOpenAi = await s.openai.invoke('x').catch((error: unknown) => error) as Error & { status?: number }
  t.equal(viaOpenAi.status, 400)
  t.equal(viaOpenAi.message, '400 Tool call id was turn1_0 but must be a-z, A-Z, 0-9, with a length of 9.')

  mistral.enqueueError(422, errorBodies.validationFastApi.body, {}, { path: '/v1/chat/completions' })
  const viaMistral = await s.mistralai.invoke('x').catch((error: unknown) => error) as Error
  // the Mistral SDK parses a 422 as HTTPValidationError and prints its detail
  t.equal(viaMistral.name, 'HTTPValidationError')
  t.match(viaMistral.message, /^API error occurred: \{"detail":\[\{"loc":\["body","store"\],/)
  t.match(viaMistral.message, /"msg":"Extra inputs are not permitted"/)
})
