import { createOpenAICompatible } from '@ai-sdk/openai-compatible'
import { Mistral } from '@mistralai/mistralai'
import { generateText } from 'ai'
import OpenAI from 'openai'
import t from 'tap'
import { request } from 'undici'
import { buildTestApp, listen, type TestWorkspace } from '../helpers/app.js'
import { FAKE_THINKING, type ReceivedRequest } from '../helpers/fake-mistral.js'

// A reasoning model answers with content chunks, thinking then text (MISTRAL-NOTES §2.4, §5.3). OpenAI clients read
// `content` as a string: they get the text as `content` and the thinking as `reasoning_content` (§5.3, §5.4). The
// Mistral SDK, and any client that does not show itself as an OpenAI one, gets the chunks as Mistral sent them.
// The fake reasons when asked to (`reasoning_effort`), as mistral-small-2603 does.

const MODEL = 'mistral-small-latest'
/** the fake's twelve words */
const TEXT = 'Hello from the fake Mistral upstream: every word here is one token.'
const MESSAGES = [{ role: 'user' as const, content: 'The capital of France?' }]

const testApp = await buildTestApp(t)
const { mistral } = testApp
const url = await listen(testApp.app)

interface Client {
  ws: TestWorkspace
  openai: OpenAI
  mistralSdk: Mistral
  upstream (): ReceivedRequest[]
}

async function client (): Promise<Client> {
  const ws = await testApp.createWorkspace()
  return {
    ws,
    openai: new OpenAI({ apiKey: ws.token, baseURL: url + '/v1', maxRetries: 0 }),
    mistralSdk: new Mistral({ apiKey: ws.token, serverURL: url }),
    upstream: () => mistral.received.filter((r) => r.apiKey === ws.mistralKey)
  }
}

/** OpenAI's types have no `reasoning_content`: it is LiteLLM's name, which OpenAI-compatible clients read. */
type WithReasoning = { reasoning_content?: string }

t.test('openai-node, create: content is the text, reasoning_content the thinking', async (t) => {
  const c = await client()
  const completion = await c.openai.chat.completions.create({
    model: MODEL, messages: MESSAGES, reasoning_effort: 'high'
  })
  const message = completion.choices[0].message as typeof completion.choices[0]['message'] & WithReasoning
  t.equal(message.content, TEXT)
  t.equal(message.reasoning_content, FAKE_THINKING)
  t.equal(completion.choices[0].finish_reason, 'stop')
  const [sent] = c.upstream()
  t.equal(sent.status, 200)
  t.equal((sent.json as Record<string, unknown>).reasoning_effort, 'high', 'reasoning_effort passed as it is')
  t.same(completion.usage, sent.usage, 'usage as Mistral reported it')
})

t.test('openai-node, streamed: string deltas, the thinking as reasoning_content, the text whole at the end',
  async (t) => {
    const c = await client()
    const stream = await c.openai.chat.completions.create({
      model: MODEL, messages: MESSAGES, reasoning_effort: 'high', stream: true
    })
    const deltas: Array<OpenAI.Chat.Completions.ChatCompletionChunk.Choice.Delta & WithReasoning> = []
    for await (const chunk of stream) deltas.push(chunk.choices[0].delta)
    t.ok(deltas.every((delta) => typeof delta.content === 'string'), 'every content is a string')
    t.equal(deltas.map((delta) => delta.content).join(''), TEXT)
    t.equal(deltas.map((delta) => delta.reasoning_content ?? '').join(''), FAKE_THINKING)

    const runner = c.openai.chat.completions.stream({ model: MODEL, messages: MESSAGES, reasoning_effort: 'high' })
    const final = await runner.finalChatCompletion()
    t.equal(final.choices[0].message.content, TEXT, 'the stream helper assembles the text, not "[object Object]"')
    t.equal(final.choices[0].finish_reason, 'stop')
  })

t.test('openai-node: Mistral\'s model_length is OpenAI\'s length', async (t) => {
  const c = await client()
  mistral.enqueue(function contextFull (_req, res) {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({
      id: 'abc', object: 'chat.completion', created: 1, model: MODEL,
      choices: [{ index: 0, message: { role: 'assistant', content: 'Par' }, finish_reason: 'model_length' }],
      usage: { prompt_tokens: 4, completion_tokens: 1, total_tokens: 5 }
    }))
  }, { path: '/v1/chat/completions' })
  const completion = await c.openai.chat.completions.create({ model: MODEL, messages: MESSAGES })
  t.equal(completion.choices[0].finish_reason, 'length')
  t.equal(completion.choices[0].message.content, 'Par')
})

// the provider sends no OpenAI SDK headers, so it gets Mistral's chunks, which it reads itself (since 2.x)
t.test('the AI SDK\'s OpenAI-compatible provider: the text, and the thinking as its reasoning', async (t) => {
  const c = await client()
  const provider = createOpenAICompatible({ name: 'tramontane', baseURL: url + '/v1', apiKey: c.ws.token })
  const result = await generateText({
    model: provider.chatModel(MODEL),
    messages: MESSAGES,
    providerOptions: { tramontane: { reasoningEffort: 'high' } }
  })
  t.equal(result.text, TEXT)
  t.equal(result.reasoningText, FAKE_THINKING)
  t.equal(c.upstream()[0].status, 200)
})

t.test('the Mistral SDK on the same answers: the chunks as Mistral sent them', async (t) => {
  const c = await client()
  const thinking = { type: 'thinking', thinking: [{ type: 'text', text: FAKE_THINKING }] }
  const completion = await c.mistralSdk.chat.complete({ model: MODEL, messages: MESSAGES, reasoningEffort: 'high' })
  t.same(completion.choices[0].message?.content, [thinking, { type: 'text', text: TEXT }])

  const events = []
  const stream = await c.mistralSdk.chat.stream({ model: MODEL, messages: MESSAGES, reasoningEffort: 'high' })
  for await (const event of stream) events.push(event.data.choices[0].delta.content)
  t.same(events[1], [thinking], 'the thinking as a chunk')
  t.same(events[2], [{ type: 'text', text: 'Hello' }], 'the text as chunks')
  t.notOk(events.some((content) => typeof content === 'string' && content.length > 0), 'no text joined into a string')
})

t.test('plain HTTP, without an OpenAI SDK\'s headers or fields: the chunks as Mistral sent them', async (t) => {
  const c = await client()
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${c.ws.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: MESSAGES, reasoning_effort: 'high' })
  })
  t.equal(res.statusCode, 200)
  const answer = await res.body.json() as { choices: Array<{ message: { content: unknown } }> }
  t.same(answer.choices[0].message.content,
    [{ type: 'thinking', thinking: [{ type: 'text', text: FAKE_THINKING }] }, { type: 'text', text: TEXT }])
})

// most answers need nothing of the reshaping: they cost an OpenAI client no copy, and reach it byte for byte. A byte no
// UTF-8 has (in a name, where it harms no client) shows it: decoded and encoded again, it would become U+FFFD
t.test('openai-node\'s answers that need no reshaping: Mistral\'s bytes, and its content-length', async (t) => {
  const c = await client()
  const usage = { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 }
  const headers = {
    authorization: `Bearer ${c.ws.token}`, 'content-type': 'application/json', 'x-stainless-lang': 'js'
  }
  /** the JSON's bytes, its `@` made a byte no UTF-8 has */
  const bytes = (json: string) => {
    const out = Buffer.from(json)
    out[json.indexOf('@')] = 0xff
    return out
  }
  const answer = bytes(JSON.stringify({
    id: 'abc', object: 'chat.completion', created: 1, model: MODEL,
    choices: [{ index: 0, message: { role: 'assistant', content: 'Paris', name: '@' }, finish_reason: 'stop' }],
    usage
  }))
  mistral.enqueue(function plainAnswer (_req, res) {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': answer.length })
    res.end(answer)
  }, { path: '/v1/chat/completions' })
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST', headers, body: JSON.stringify({ model: MODEL, messages: MESSAGES })
  })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-length'], String(answer.length), 'Mistral\'s content-length')
  t.same(Buffer.from(await res.body.arrayBuffer()), answer, 'byte for byte')

  const head = { id: 'abc', object: 'chat.completion.chunk', created: 1, model: MODEL }
  const stream = bytes([
    { ...head, choices: [{ index: 0, delta: { role: 'assistant', content: 'Par', name: '@' }, finish_reason: null }] },
    { ...head, choices: [{ index: 0, delta: { content: 'is' }, finish_reason: 'stop' }], usage }
  ].map((event) => `data: ${JSON.stringify(event)}\n\n`).join('') + 'data: [DONE]\n\n')
  mistral.enqueue(function plainStream (_req, res) {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.end(stream)
  }, { path: '/v1/chat/completions' })
  const streamed = await request(`${url}/v1/chat/completions`, {
    method: 'POST', headers, body: JSON.stringify({ model: MODEL, messages: MESSAGES, stream: true })
  })
  t.equal(streamed.statusCode, 200)
  t.same(Buffer.from(await streamed.body.arrayBuffer()), stream, 'a stream too: its events as they came')
  t.equal(c.upstream().length, 2)
})
