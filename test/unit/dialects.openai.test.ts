import { once } from 'node:events'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import t from 'tap'
import {
  mistralToolCallId, sentByOpenAiClient, translateChatRequest, translateEmbeddingsRequest
} from '../../src/dialects/openai-request.js'
import {
  base64Embeddings, openAiChatCompletion, openAiStreamShaping, rewriteAnswer, withOpenAiError
} from '../../src/dialects/openai-response.js'
import { flaggedModerations } from '../../src/dialects/openai-moderations.js'
import { createSseTap } from '../../src/proxy/usage-tap.js'

// The two halves of the OpenAI dialect (MISTRAL-NOTES §5), on their own: what a request becomes before Mistral sees
// it, and what a response becomes before an OpenAI client does. The real clients drive them in test/integration.

async function shape (includeUsage: boolean, chunks: Array<string | Buffer>, openAiClient = false): Promise<string> {
  let out = ''
  const input = Readable.from(chunks.map((chunk) => Buffer.from(chunk)))
  const tap = createSseTap(openAiStreamShaping({ includeUsage, openAiClient }))
  await pipeline(input, tap, async function (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) out += chunk
  })
  return out
}

const fn = (name: string, args = '{}') => ({ name, arguments: args })

const events = (text: string) => text.split('\n\n').filter(Boolean).map((event) => event.slice(6))
  .map((data) => data === '[DONE]' ? data : JSON.parse(data))

const HEAD = { id: 'abc', object: 'chat.completion.chunk', created: 1, model: 'mistral-small-latest' }
const sse = (...payloads: unknown[]) => payloads
  .map((payload) => `data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`).join('')
const USAGE = { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 }

t.test('chat request: renamed, mapped, dropped', async (t) => {
  const body: Record<string, unknown> = {
    model: 'm',
    messages: [{ role: 'developer', content: 'Be brief', name: 'ops' }, { role: 'user', content: 'hi', name: 'al' }],
    max_completion_tokens: 5,
    max_tokens: 9,
    seed: 1,
    stream: true,
    stream_options: { include_usage: true },
    user: 'u',
    store: true,
    logprobs: false,
    tool_choice: 'required',
    service_tier: 'flex',
    prediction: { type: 'content', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
    tools: [{ type: 'function', function: { name: 'f' } }]
  }
  const notes = translateChatRequest(body)
  t.same(notes, { includeUsage: true, base64Embeddings: false, openAiFields: true })
  t.same(body, {
    model: 'm',
    messages: [{ role: 'system', content: 'Be brief' }, { role: 'user', content: 'hi' }],
    max_tokens: 5,
    random_seed: 1,
    stream: true,
    tool_choice: 'any',
    service_tier: 'standard_only',
    prediction: { type: 'content', content: 'ab' },
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }]
  })
})

t.test('chat request: a Mistral body is left exactly as it is', async (t) => {
  const body = {
    model: 'm',
    messages: [
      { role: 'system', content: 'Be brief' },
      { role: 'assistant', content: '', tool_calls: [{ id: 'abcDEF123', function: { name: 'f', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'abcDEF123', name: 'f', content: '{}' },
      { role: 'assistant', content: 'It', prefix: true }
    ],
    max_tokens: 9,
    random_seed: 1,
    temperature: 0.3,
    top_p: 0.9,
    safe_prompt: true,
    tool_choice: 'any'
  }
  const copy = structuredClone(body)
  t.same(translateChatRequest(copy), { includeUsage: false, base64Embeddings: false, openAiFields: false })
  t.same(copy, body)
})

t.test('seed: a negative one becomes a non-negative random_seed, the same one every time', async (t) => {
  const seeded = (seed: number) => {
    const body: Record<string, unknown> = { model: 'm', messages: [], seed }
    translateChatRequest(body)
    return body.random_seed
  }
  t.equal(seeded(-1), 4294967295, '-1 modulo 2^32')
  t.equal(seeded(-1), seeded(-1), 'the same seed, the same random_seed')
  t.equal(seeded(-2), 4294967294)
  t.equal(seeded(-9223372036854775808), 0, 'OpenAI\'s lowest seed (as JSON.parse reads it)')
  t.equal(seeded(-12345678901), 539222987, 'past 32 bits too')
  t.equal(seeded(0), 0)
  t.equal(seeded(42), 42, 'a seed Mistral takes passes unchanged')
  t.equal(seeded(9007199254740991), 9007199254740991)
  const mistral: Record<string, unknown> = { model: 'm', messages: [], random_seed: -1 }
  translateChatRequest(mistral)
  t.equal(mistral.random_seed, -1, 'Mistral\'s own parameter is the client\'s business')
})

t.test('an OpenAI client is told by its SDK\'s headers, or by a field only OpenAI clients send', async (t) => {
  t.equal(sentByOpenAiClient({ 'x-stainless-lang': 'js', 'user-agent': 'OpenAI/JS 6.49.0' }), true, 'openai-node')
  t.equal(sentByOpenAiClient({ 'x-stainless-lang': 'python' }), true, 'openai-python')
  const mistralSdk = 'speakeasy-sdk/typescript 2.7.0 2.884.13 1.0.0 @mistralai/mistralai'
  t.equal(sentByOpenAiClient({ 'user-agent': mistralSdk }), false, 'the Mistral SDK')
  t.equal(sentByOpenAiClient({ 'user-agent': 'ai-sdk/openai-compatible/2.0.87' }), false,
    'the AI SDK\'s OpenAI-compatible provider: it reads Mistral\'s chunks itself')
  t.equal(sentByOpenAiClient({}), false, 'curl and plain HTTP')
  for (const field of ['max_completion_tokens', 'seed', 'stream_options', 'user', 'store', 'logprobs']) {
    t.equal(translateChatRequest({ model: 'm', messages: [], [field]: 1 }).openAiFields, true, field)
  }
})

t.test('service_tier: OpenAI\'s auto and default are Mistral\'s standard; only priority asks for it', async (t) => {
  const tier = (serviceTier: string, headers = {}, fields = {}) => {
    const body: Record<string, unknown> = { model: 'm', messages: [], service_tier: serviceTier, ...fields }
    translateChatRequest(body, headers)
    return body.service_tier
  }
  const openAiSdk = { 'x-stainless-lang': 'js' }
  t.equal(tier('auto', openAiSdk), 'standard_only', 'OpenAI\'s auto is the project default, not priority at 1.75×')
  t.equal(tier('default', openAiSdk), 'standard_only')
  t.equal(tier('flex', openAiSdk), 'standard_only')
  t.equal(tier('scale', openAiSdk), 'standard_only')
  t.equal(tier('priority', openAiSdk), 'auto', 'priority is asked for: Mistral\'s auto')
  t.equal(tier('auto', {}, { seed: 1 }), 'standard_only', 'an OpenAI client told by a field only it sends')
  t.equal(tier('auto'), 'auto', 'a Mistral client\'s auto opts in to priority, as Mistral means it')
  t.equal(tier('standard_only'), 'standard_only')
  t.equal(tier('priority'), 'auto', 'priority, which Mistral refuses, from any client')
})

t.test('top_p 0, which Mistral refuses, becomes greedy decoding', async (t) => {
  const body: Record<string, unknown> = { model: 'm', messages: [], top_p: 0, temperature: 0.7 }
  translateChatRequest(body)
  t.same(body, { model: 'm', messages: [], temperature: 0 })
})

t.test('tool-call ids: 9 letters and digits, the same for the call and its reply, every time', async (t) => {
  const id = mistralToolCallId('call_abc123XYZ')
  t.match(id, /^[a-zA-Z0-9]{9}$/)
  t.equal(mistralToolCallId('call_abc123XYZ'), id, 'stable')
  t.not(mistralToolCallId('call_abc123XYz'), id)
  t.equal(mistralToolCallId('abcDEF123'), 'abcDEF123', 'Mistral\'s own ids pass')
  const body: Record<string, unknown> = {
    model: 'm',
    messages: [
      {
        role: 'assistant',
        content: null,
        refusal: null,
        tool_calls: [{ id: 'call_abc123XYZ', type: 'function', function: fn('f') }]
      },
      { role: 'tool', tool_call_id: 'call_abc123XYZ', content: '{}' }
    ]
  }
  translateChatRequest(body)
  t.same(body.messages, [
    { role: 'assistant', content: null, tool_calls: [{ id, type: 'function', function: fn('f') }] },
    { role: 'tool', tool_call_id: id, content: '{}' }
  ])
})

t.test('legacy functions: the call and its reply become a tool call and a tool reply with one id', async (t) => {
  const body: Record<string, unknown> = {
    model: 'm',
    functions: [{ name: 'lookup', parameters: { type: 'object', properties: {} } }],
    function_call: { name: 'lookup' },
    messages: [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: null, function_call: { name: 'lookup', arguments: '{"q":1}' } },
      { role: 'function', name: 'lookup', content: '42' }
    ]
  }
  translateChatRequest(body)
  const id = mistralToolCallId('lookup')
  const parameters = { type: 'object', properties: {} }
  t.same(body.tools, [{ type: 'function', function: { name: 'lookup', parameters } }])
  t.same(body.tool_choice, { type: 'function', function: { name: 'lookup' } })
  t.same(body.messages, [
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: null, tool_calls: [{ id, type: 'function', function: fn('lookup', '{"q":1}') }] },
    { role: 'tool', name: 'lookup', content: '42', tool_call_id: id }
  ], 'the assistant turn is kept, not dropped as empty')
})

t.test('messages: empty assistant turns dropped, content parts translated', async (t) => {
  const body: Record<string, unknown> = {
    model: 'm',
    messages: [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: '' },
      { role: 'assistant', content: [{ type: 'text', text: 'no' }, { type: 'refusal', refusal: 'I cannot' }] },
      {
        role: 'user',
        content: [
          { type: 'input_audio', input_audio: { data: 'UklGRg==', format: 'wav' } },
          { type: 'file', file: { file_id: '7f4e6a1c-3b8d-4e6f-9a2b-1c0d5e8f7a6b' } },
          { type: 'file', file: { file_data: 'data:application/pdf;base64,JVBERi0=', filename: 'a.pdf' } }
        ]
      }
    ]
  }
  translateChatRequest(body)
  t.same(body.messages, [
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: [{ type: 'text', text: 'no' }] },
    {
      role: 'user',
      content: [
        { type: 'input_audio', input_audio: 'UklGRg==' },
        { type: 'file', file_id: '7f4e6a1c-3b8d-4e6f-9a2b-1c0d5e8f7a6b' },
        { type: 'document_url', document_url: 'data:application/pdf;base64,JVBERi0=', document_name: 'a.pdf' }
      ]
    }
  ])
})

t.test('embeddings request: floats asked of Mistral, dimensions renamed', async (t) => {
  const body: Record<string, unknown> = {
    model: 'e', input: 'x', encoding_format: 'base64', dimensions: 256, user: 'u'
  }
  t.same(translateEmbeddingsRequest(body), { includeUsage: false, base64Embeddings: true })
  t.same(body, { model: 'e', input: 'x', encoding_format: 'float', output_dimension: 256 })
  const mistralBody = { model: 'e', input: ['x'] }
  t.same(translateEmbeddingsRequest(mistralBody), { includeUsage: false, base64Embeddings: false })
  t.same(mistralBody, { model: 'e', input: ['x'] })
})

t.test('base64 embeddings are little-endian float32, as openai-node decodes them', async (t) => {
  const vector = [0.1, -0.25, 1 / 3]
  const out = JSON.parse(base64Embeddings(JSON.stringify({ object: 'list', data: [{ embedding: vector, index: 0 }] })))
  const bytes = Buffer.from(out.data[0].embedding, 'base64')
  t.same([0, 1, 2].map((i) => bytes.readFloatLE(i * 4)), vector.map(Math.fround))
})

t.test('stream with include_usage: the usage moves to a last chunk with empty choices', async (t) => {
  const input = sse(
    { ...HEAD, choices: [{ index: 0, delta: { content: 'hi' }, finish_reason: null }] },
    { ...HEAD, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }], usage: USAGE },
    '[DONE]'
  )
  const out = events(await shape(true, [input]))
  t.same(out, [
    { ...HEAD, choices: [{ index: 0, delta: { content: 'hi' }, finish_reason: null }] },
    { ...HEAD, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }] },
    { ...HEAD, choices: [], usage: USAGE },
    '[DONE]'
  ])
  t.equal(await shape(false, [input]), input, 'not asked: the bytes as they came')
})

t.test('stream split anywhere, even inside a character: the same result', async (t) => {
  const input = Buffer.from(sse(
    { ...HEAD, choices: [{ index: 0, delta: { content: 'Héllo 👋' }, finish_reason: null }] },
    { ...HEAD, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }], usage: USAGE },
    '[DONE]'
  ))
  const whole = await shape(true, [input.toString()])
  t.equal(await shape(true, [...input].map((byte) => Buffer.from([byte]))), whole)
})

t.test('streamed tool calls get index and type; calls in separate chunks get their own index', async (t) => {
  const call = (id: string, name: string) => ({ id, function: { name, arguments: '{}' } })
  const out = events(await shape(false, [sse(
    { ...HEAD, choices: [{ index: 0, delta: { tool_calls: [call('aaaaaaaa1', 'f'), call('aaaaaaaa2', 'g')] } }] },
    { ...HEAD, choices: [{ index: 0, delta: { tool_calls: [call('aaaaaaaa3', 'h')] }, finish_reason: 'tool_calls' }] },
    '[DONE]'
  )]))
  t.same(out[0].choices[0].delta.tool_calls.map((c: { index: number, type: string }) => [c.index, c.type]),
    [[0, 'function'], [1, 'function']])
  t.same(out[1].choices[0].delta.tool_calls.map((c: { index: number }) => c.index), [2], 'not 0 again')
  const given = events(await shape(false, [sse(
    { ...HEAD, choices: [{ index: 0, delta: { tool_calls: [{ ...call('aaaaaaaa1', 'f'), index: 4 }] } }] }
  )]))
  t.equal(given[0].choices[0].delta.tool_calls[0].index, 4, 'an index Mistral sent stays')
})

t.test('streamed tool calls for an OpenAI client: object arguments become JSON text; a Mistral client\'s stay',
  async (t) => {
    const call = { id: 'aaaaaaaa1', function: { name: 'f', arguments: { city: 'Paris' } } }
    const input = sse(
      { ...HEAD, choices: [{ index: 0, delta: { tool_calls: [call] }, finish_reason: 'tool_calls' }] },
      '[DONE]'
    )
    const [openAi] = events(await shape(false, [input], true))
    t.same(openAi.choices[0].delta.tool_calls,
      [{ id: 'aaaaaaaa1', function: { name: 'f', arguments: '{"city":"Paris"}' }, index: 0, type: 'function' }])
    const [mistral] = events(await shape(false, [input]))
    t.same(mistral.choices[0].delta.tool_calls[0].function.arguments, { city: 'Paris' },
      'the Mistral SDK reads an object as it is')
    const bytes = [...Buffer.from(input)].map((byte) => Buffer.from([byte]))
    t.equal(await shape(false, bytes, true), await shape(false, [input], true), 'split anywhere: the same')
  })

t.test('an error Mistral sends as an event gains the error object OpenAI clients throw on', async (t) => {
  const error = { object: 'error', message: 'Service overloaded', type: 'server_error', code: '3000' }
  const [event] = events(await shape(true, [sse(error)]))
  t.same(event.error, { message: 'Service overloaded', type: 'server_error', code: '3000', param: null })
  t.equal(event.message, 'Service overloaded', 'Mistral\'s own fields stay')
})

const THINK = {
  type: 'thinking', thinking: [{ type: 'text', text: 'The capital ' }, { type: 'text', text: 'is Paris.' }]
}
const text = (value: string) => ({ type: 'text', text: value })

t.test('a reasoning answer for OpenAI clients: text as content, thinking as reasoning_content', async (t) => {
  const answer = {
    id: 'abc',
    object: 'chat.completion',
    model: 'magistral-medium-latest',
    choices: [
      {
        index: 0,
        message: {
          role: 'assistant',
          content: [THINK, text('Par'), { type: 'reference', reference_ids: [1] }, text('is')],
          tool_calls: null
        },
        finish_reason: 'stop'
      },
      { index: 1, message: { role: 'assistant', content: [text('Lyon')] }, finish_reason: 'model_length' }
    ],
    usage: USAGE
  }
  const out = JSON.parse(openAiChatCompletion(JSON.stringify(answer)))
  t.same(out.choices[0].message,
    { role: 'assistant', content: 'Paris', reasoning_content: 'The capital is Paris.', tool_calls: null })
  t.same(out.choices[1].message, { role: 'assistant', content: 'Lyon' }, 'no thinking, no reasoning_content')
  t.equal(out.choices[1].finish_reason, 'length', 'model_length is OpenAI\'s length')
  t.same({ ...out, choices: undefined }, { ...answer, choices: undefined }, 'every other field as Mistral sent it')

  const lengthOnly = JSON.stringify({ choices: [{ message: { content: 'Paris' }, finish_reason: 'model_length' }] })
  t.equal(JSON.parse(openAiChatCompletion(lengthOnly)).choices[0].finish_reason, 'length', 'a string content too')
  const plain = '{ "choices": [ { "index": 0, "message": { "content": "Paris" }, "finish_reason": "stop" } ] }'
  t.equal(openAiChatCompletion(plain), plain, 'nothing to change: the bytes as they came, not re-serialised')
  t.equal(openAiChatCompletion('not json, "content": ['), 'not json, "content": [', 'not JSON: as it came')
})

t.test('a tool-calling answer for OpenAI clients: each call typed, object arguments as JSON text', async (t) => {
  // as Mistral answers (recorded): no `type`, and `arguments` may be an object (FunctionCall in Mistral's spec)
  const answer = {
    id: 'abc',
    object: 'chat.completion',
    choices: [{
      index: 0,
      message: {
        role: 'assistant',
        content: '',
        tool_calls: [
          { id: 'gSIMJiOkT', function: { name: 'get_weather', arguments: { city: 'Paris' } } },
          { id: 'hTJNkjPlU', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Lyon"}' } }
        ]
      },
      finish_reason: 'tool_calls'
    }],
    usage: USAGE
  }
  const out = JSON.parse(openAiChatCompletion(JSON.stringify(answer)))
  t.same(out.choices[0].message.tool_calls, [
    { id: 'gSIMJiOkT', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
    { id: 'hTJNkjPlU', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Lyon"}' } }
  ])
  t.same({ ...out, choices: undefined }, { ...answer, choices: undefined }, 'every other field as Mistral sent it')
  const spaced = '{"choices": [{"message": {"content": "", "tool_calls" :\n[{"id": "gSIMJiOkT", ' +
    '"function": {"name": "f", "arguments": "{}"}}]}}]}'
  const rewritten = JSON.parse(rewriteAnswer(openAiChatCompletion, Buffer.from(spaced)) as string)
  t.same(rewritten.choices[0].message.tool_calls,
    [{ id: 'gSIMJiOkT', type: 'function', function: { name: 'f', arguments: '{}' } }],
    'found in the bytes, however spaced')

  // Mistral's plain answers say `"tool_calls": null`: still not parsed, as before
  const plain = Buffer.from('{"choices":[{"message":{"content":"Paris","tool_calls":null},"finish_reason":"stop"}]}')
  t.equal(rewriteAnswer(openAiChatCompletion, plain), plain, 'the very Buffer, undecoded')
  const plainText = plain.toString().replace('"tool_calls":null', '"tool_calls" : null')
  t.equal(openAiChatCompletion(plainText), plainText, 'not re-serialised')
})

t.test('a reasoning stream for OpenAI clients: string deltas, thinking as reasoning_content', async (t) => {
  const input = sse(
    { ...HEAD, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] },
    { ...HEAD, choices: [{ index: 0, delta: { content: [THINK] }, finish_reason: null }] },
    { ...HEAD, choices: [{ index: 0, delta: { content: [text('Par')] }, finish_reason: null }] },
    { ...HEAD, choices: [{ index: 0, delta: { content: [text('is')] }, finish_reason: null }] },
    { ...HEAD, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'model_length' }], usage: USAGE },
    '[DONE]'
  )
  const out = events(await shape(false, [input], true))
  t.same(out.slice(1, -1).map((chunk: { choices: Array<{ delta: unknown }> }) => chunk.choices[0].delta), [
    { content: '', reasoning_content: 'The capital is Paris.' },
    { content: 'Par' },
    { content: 'is' },
    { content: '' }
  ])
  t.equal(out[4].choices[0].finish_reason, 'length', 'model_length is OpenAI\'s length')
  t.same(out[4].usage, USAGE, 'the usage stays, as include_usage was not asked')
  t.equal(out.at(-1), '[DONE]')
  const bytes = [...Buffer.from(input)].map((byte) => Buffer.from([byte]))
  t.equal(await shape(false, bytes, true), await shape(false, [input], true), 'split anywhere: the same')
  t.equal(await shape(false, [input]), input, 'a Mistral client\'s stream: the chunks as Mistral sent them')
  const spaced = 'data: {"choices": [{"delta": {"content": "Paris"}, "finish_reason": null}]}\n\n'
  t.equal(await shape(false, [spaced], true), spaced, 'an event without chunks or model_length: not re-serialised')
})

t.test('an OpenAI client\'s plain deltas: the tap\'s Buffers go on as they came, not decoded again', async (t) => {
  const deltas = ['Hel', 'lo ', 'wörld'].map((word) =>
    Buffer.from(sse({ ...HEAD, choices: [{ index: 0, delta: { content: word }, finish_reason: null }] })))
  const input = [...deltas, Buffer.from(sse('[DONE]'))]
  const out: Buffer[] = []
  const tap = createSseTap(openAiStreamShaping({ includeUsage: true, openAiClient: true }))
  // 'data' hands on each Buffer the tap pushed; an async iterator would join the ones buffered
  tap.on('data', (chunk: Buffer) => out.push(chunk))
  for (const chunk of input) tap.write(chunk)
  tap.end()
  await once(tap, 'end')
  t.equal(out.length, input.length)
  t.ok(out.every((chunk, i) => chunk === input[i]), 'each read is the very Buffer the tap was given')

  const shaping = openAiStreamShaping({ includeUsage: false, openAiClient: true })
  t.equal(shaping.write(deltas[0], false), deltas[0], 'one the tap did not call plain (it names the model): the same')
  const last = Buffer.from(sse({ ...HEAD, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }],
    usage: USAGE }))
  t.equal(shaping.write(last, false), last, 'usage not asked for: the last chunk as it came too')
})

t.test('an OpenAI client\'s stream: what needs reshaping is found in the bytes, however it is read', async (t) => {
  const reshaped = (includeUsage: boolean, chunk: string) => {
    const out = openAiStreamShaping({ includeUsage, openAiClient: true }).write(Buffer.from(chunk), true)
    return typeof out === 'string'
  }
  const spacedArray = 'data: {"choices": [{"delta": {"content" :\t[{"type": "text", "text": "Par"}]}}]}\n\n'
  t.ok(reshaped(false, spacedArray), 'an array content, however spaced')
  t.same(events(await shape(false, [spacedArray], true))[0].choices[0].delta, { content: 'Par' })
  t.ok(reshaped(false, sse({ choices: [{ delta: { content: '' }, finish_reason: 'model_length' }] })), 'model_length')
  t.ok(reshaped(false, sse({ choices: [{ delta: { tool_calls: [{ id: 'a', function: fn('f') }] } }] })), 'tool calls')
  t.notOk(reshaped(false, sse({ choices: [{ delta: { content: 'said "content": [ in a string' } }] })),
    'the words in a string: their quotes are escaped')

  // an event split before its marker: the second read alone holds no `"content"`; the start is held back
  const event = sse({ ...HEAD, choices: [{ index: 0, delta: { content: [text('Par')] }, finish_reason: null }] })
  const at = event.indexOf('tent"')
  const split = await shape(false, [sse({ ...HEAD, choices: [] }) + event.slice(0, at), event.slice(at)], true)
  t.same(events(split)[1].choices[0].delta, { content: 'Par' }, 'reshaped once whole')
})

t.test('whole answers: Mistral\'s bytes when the rewrite changes nothing, most chat answers undecoded', async (t) => {
  const plain = Buffer.from('{ "choices": [ { "message": { "content": "Paris" }, "finish_reason": "stop" } ] }')
  t.equal(rewriteAnswer(openAiChatCompletion, plain), plain, 'the very Buffer')
  const notUtf8 = Buffer.from(plain).fill(0xff, plain.indexOf('Paris'), plain.indexOf('Paris') + 1)
  t.equal(rewriteAnswer(openAiChatCompletion, notUtf8), notUtf8, 'not decoded: a byte no UTF-8 has is not replaced')
  const reasoning = Buffer.from(JSON.stringify({ choices: [{ message: { content: [text('Par')] } }] }))
  t.same(JSON.parse(rewriteAnswer(openAiChatCompletion, reasoning) as string).choices[0].message, { content: 'Par' })
  const lengthCut = Buffer.from('{"choices":[{"message":{"content":"Par"},"finish_reason":"model_length"}]}')
  t.equal(rewriteAnswer(openAiChatCompletion, Buffer.from(lengthCut)), lengthCut.toString().replace('model_', ''))
  const notJson = Buffer.from('not json, "content": [')
  t.equal(rewriteAnswer(openAiChatCompletion, notJson), notJson, 'decoded, and returned unchanged: the bytes')

  const flagged = Buffer.from(JSON.stringify({ results: [{ flagged: false, categories: { law: false } }] }))
  t.equal(rewriteAnswer(flaggedModerations, flagged), flagged, 'every result flagged already: the bytes')
  const unflagged = Buffer.from(JSON.stringify({ results: [{ categories: { law: true } }] }))
  t.same(JSON.parse(rewriteAnswer(flaggedModerations, unflagged) as string).results[0].flagged, true)
})

t.test('error bodies: every Mistral shape gets an error object with a readable message', async (t) => {
  const cases: Array<[unknown, number, string]> = [
    [{ detail: [{ type: 'extra_forbidden', loc: ['body', 'store'], msg: 'Extra inputs are not permitted' }] }, 422,
      'body.store: Extra inputs are not permitted'],
    [{ object: 'error', message: '{"detail":[{"loc":["body","messages"],"msg":"Field required"}]}' }, 422,
      'body.messages: Field required'],
    [{ object: 'error', message: 'Rate limit exceeded', type: 'rate_limited', code: '1' }, 429, 'Rate limit exceeded'],
    [{ message: 'Boom', error: null }, 500, 'Boom'],
    [{ detail: 'Not Found' }, 404, 'Not Found'],
    [{}, 503, 'Mistral answered 503']
  ]
  for (const [body, status, message] of cases) {
    const out = JSON.parse(withOpenAiError(JSON.stringify(body), status))
    t.equal(out.error?.message, message, JSON.stringify(body))
  }
  t.equal(withOpenAiError('not json', 500), 'not json')
  const wrapped = JSON.stringify({ error: { message: 'already', type: 'x' } })
  t.equal(withOpenAiError(wrapped, 400), wrapped, 'an error object already there is left alone')
})

t.test('reshaping a CRLF-framed stream: each event goes on once whole, with its blank line as it came', async (t) => {
  const crlf = sse(HEAD).replace(/\n/g, '\r\n')
  const tap = createSseTap(openAiStreamShaping({ includeUsage: true }))
  tap.write(Buffer.from(crlf + crlf.slice(0, 10)))
  t.equal((tap.read() as Buffer | null)?.toString(), crlf, 'the whole event at once, not at the end of the stream')
  tap.write(Buffer.from(crlf.slice(10)))
  t.equal((tap.read() as Buffer | null)?.toString(), crlf, 'the next once whole, its blank line as it came')
})
