import { Readable, type Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import t from 'tap'
import { streamErrorShaping } from '../../src/dialects/openai-stream-errors.js'
import { createJsonTap, createSseTap, type SseTap, type TapResult } from '../../src/proxy/usage-tap.js'
import { emptyUsage } from '../../src/proxy/usage.js'

type Tap = Transform & { result: TapResult }

/** Pushes each chunk through the tap as its own read and collects what comes out the other side. */
async function run (tap: Tap, chunks: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = []
  await pipeline(Readable.from(chunks), tap, async function (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) out.push(chunk)
  })
  return Buffer.concat(out)
}

const bytes = (text: string) => Buffer.from(text, 'utf8')
const byteByByte = (buffer: Buffer) => [...buffer].map((byte) => Buffer.from([byte]))
const crlf = (text: string) => text.replace(/\n/g, '\r\n')
const splitAt = (buffer: Buffer, ...offsets: number[]) =>
  [0, ...offsets].map((start, i) => buffer.subarray(start, offsets[i] ?? buffer.length))

const usageOf = (fields: Partial<NonNullable<TapResult['usage']>>) => ({ ...emptyUsage(), ...fields })

// MISTRAL-NOTES §2.4, chat: usage rides on the finish_reason chunk, then `data: [DONE]`
const CHAT_ID = '53ff66318a5a4b7c9b2c5b6b3d1c0f00'
const CHUNK_HEAD = `{"id":"${CHAT_ID}","object":"chat.completion.chunk","created":1750537996,` +
  '"model":"mistral-small-latest"'
const chunk = (rest: string) => `data: ${CHUNK_HEAD},${rest}}`
const CHAT_SSE = [
  chunk('"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null,"logprobs":null}]'),
  chunk('"choices":[{"index":0,"delta":{"content":"Héllo 👋 café"},"finish_reason":null,"logprobs":null}]'),
  chunk('"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop","logprobs":null}],' +
    '"usage":{"prompt_tokens":4,"total_tokens":36,"completion_tokens":32}'),
  'data: [DONE]'
].map((event) => event + '\n\n').join('')
const CHAT_USAGE = usageOf({ promptTokens: 4, completionTokens: 32, totalTokens: 36 })

t.test('chat SSE in one read: bytes unchanged, usage and model from the finish_reason chunk', async (t) => {
  const input = bytes(CHAT_SSE)
  const tap = createSseTap()
  const before = Date.now()
  const output = await run(tap, [input])
  t.ok(output.equals(input), 'output bytes equal input bytes')
  t.same(tap.result.usage, CHAT_USAGE)
  t.equal(tap.result.model, 'mistral-small-latest')
  t.equal(tap.result.events, 4, 'three chunks and [DONE]')
  t.equal(tap.result.streamError, false)
  t.equal(tap.result.streamed, true)
  t.type(tap.result.firstByteAt, 'number')
  t.ok(tap.result.firstByteAt! >= before && tap.result.firstByteAt! <= Date.now(), 'firstByteAt is when bytes came')
})

t.test('chat SSE byte by byte', async (t) => {
  const input = bytes(CHAT_SSE)
  const tap = createSseTap()
  const output = await run(tap, byteByByte(input))
  t.ok(output.equals(input), 'output bytes equal input bytes')
  t.same(tap.result.usage, CHAT_USAGE)
  t.equal(tap.result.model, 'mistral-small-latest')
  t.equal(tap.result.events, 4)
  t.equal(tap.result.streamError, false)
})

t.test('chat SSE split inside multi-byte UTF-8 characters', async (t) => {
  const input = bytes(CHAT_SSE)
  const e = input.indexOf(bytes('é')) // 2 bytes: C3 A9
  const wave = input.indexOf(bytes('👋')) // 4 bytes: F0 9F 91 8B
  t.ok(e > 0 && wave > e, 'fixture holds both characters')
  const tap = createSseTap()
  const output = await run(tap, splitAt(input, e + 1, wave + 1, wave + 3))
  t.ok(output.equals(input), 'output bytes equal input bytes')
  t.same(tap.result.usage, CHAT_USAGE)
  t.equal(tap.result.model, 'mistral-small-latest')
  t.equal(tap.result.events, 4)
})

t.test('a character split across reads reaches the parser whole', async (t) => {
  // the model name is read back from the text, so a decoder that cut the character would show here
  const model = 'ft:mistral-small-latest:équipe-👋'
  const input = bytes(`data: {"model":"${model}","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n`)
  const wave = input.indexOf(bytes('👋'))
  const tap = createSseTap()
  const output = await run(tap, splitAt(input, input.indexOf(bytes('é')) + 1, wave + 1, wave + 2, wave + 3))
  t.ok(output.equals(input), 'output bytes equal input bytes')
  t.equal(tap.result.model, model)
  t.same(tap.result.usage, usageOf({ promptTokens: 1, completionTokens: 2, totalTokens: 3 }))
})

t.test('chat SSE with CRLF line endings, in one read and byte by byte', async (t) => {
  const input = bytes(crlf(CHAT_SSE))
  for (const [name, chunks] of [['one read', [input]], ['byte by byte', byteByByte(input)]] as const) {
    const tap = createSseTap()
    const output = await run(tap, [...chunks])
    t.ok(output.equals(input), `${name}: output bytes equal input bytes`)
    t.same(tap.result.usage, CHAT_USAGE, `${name}: usage`)
    t.equal(tap.result.model, 'mistral-small-latest', `${name}: model`)
    t.equal(tap.result.events, 4, `${name}: events`)
  }
})

t.test('the last usage seen wins', async (t) => {
  const input = bytes('data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n' +
    'data: {"model":"codestral-latest","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}\n\n')
  const tap = createSseTap()
  await run(tap, [input])
  t.same(tap.result.usage, usageOf({ promptTokens: 5, completionTokens: 7, totalTokens: 12 }))
  t.equal(tap.result.model, 'codestral-latest')
})

t.test('cached tokens from prompt_tokens_details.cached_tokens', async (t) => {
  const input = bytes(chunk('"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],' +
    '"usage":{"prompt_tokens":2000,"total_tokens":2010,"completion_tokens":10,' +
    '"prompt_tokens_details":{"cached_tokens":1920}}') + '\n\ndata: [DONE]\n\n')
  const tap = createSseTap()
  const output = await run(tap, byteByByte(input))
  t.ok(output.equals(input))
  t.same(tap.result.usage, usageOf({ promptTokens: 2000, cachedTokens: 1920, completionTokens: 10, totalTokens: 2010 }))
})

// MISTRAL-NOTES §2.4, conversations: named events, no [DONE], usage on conversation.response.done (§2.5 shape)
const CONVERSATION_SSE = [
  'event: conversation.response.started\n' +
    'data: {"type":"conversation.response.started","conversation_id":"conv_067f2a"}',
  'event: tool.execution.started\n' +
    'data: {"type":"tool.execution.started","output_index":0,"id":"tool_exec_1","name":"web_search"}',
  'event: message.output.delta\n' +
    'data: {"type":"message.output.delta","output_index":1,"id":"msg_1","content_index":0,' +
    '"model":"mistral-medium-latest","agent_id":"ag_1","role":"assistant","content":"The"}',
  'event: conversation.response.done\n' +
    'data: {"type":"conversation.response.done","usage":{"prompt_tokens":18709,"total_tokens":18892,' +
    '"completion_tokens":183,"connector_tokens":1500,"connectors":{"web_search":1500}}}'
].map((event) => event + '\n\n').join('')

t.test('conversation named events: usage from conversation.response.done', async (t) => {
  const input = bytes(CONVERSATION_SSE)
  for (const [name, chunks] of [['one read', [input]], ['byte by byte', byteByByte(input)]] as const) {
    const tap = createSseTap()
    const output = await run(tap, [...chunks])
    t.ok(output.equals(input), `${name}: output bytes equal input bytes`)
    t.same(tap.result.usage,
      usageOf({ promptTokens: 18709, completionTokens: 183, totalTokens: 18892, connectorTokens: 1500 }), name)
    t.equal(tap.result.events, 4, `${name}: events`)
    t.equal(tap.result.streamError, false, `${name}: no error`)
  }
})

// BUG (see report): the tap reads `model` only from events that carry usage, and conversation.response.done names
// none. Agent conversations have no model in the request either, so the ledger records model null
t.test('conversation stream: model from message.output.delta',
  async (t) => {
    const tap = createSseTap()
    await run(tap, [bytes(CONVERSATION_SSE)])
    t.equal(tap.result.model, 'mistral-medium-latest')
  })

t.test('transcription.done usage with prompt_audio_seconds', async (t) => {
  const input = bytes([
    'event: transcription.language\ndata: {"type":"transcription.language","audio_language":"fr"}',
    'event: transcription.text.delta\ndata: {"type":"transcription.text.delta","text":"Bonjour à tous"}',
    'event: transcription.segment\ndata: {"type":"transcription.segment","text":"Bonjour à tous","start":0,"end":1.2}',
    'event: transcription.done\ndata: {"type":"transcription.done","model":"voxtral-mini-2507",' +
      '"text":"Bonjour à tous","language":"fr","segments":[],' +
      '"usage":{"prompt_audio_seconds":7,"prompt_tokens":5,"total_tokens":19,"completion_tokens":14}}'
  ].map((event) => event + '\n\n').join(''))
  const tap = createSseTap()
  const output = await run(tap, byteByByte(input))
  t.ok(output.equals(input))
  t.same(tap.result.usage, usageOf({ promptTokens: 5, completionTokens: 14, totalTokens: 19, audioSeconds: 7 }))
  t.equal(tap.result.model, 'voxtral-mini-2507')
  t.equal(tap.result.events, 4)
})

t.test('speech.audio.done usage', async (t) => {
  const audio = Buffer.alloc(3000, 7).toString('base64')
  const input = bytes([
    `event: speech.audio.delta\ndata: {"type":"speech.audio.delta","audio_data":"${audio}"}`,
    `event: speech.audio.delta\ndata: {"type":"speech.audio.delta","audio_data":"${audio}"}`,
    'event: speech.audio.done\ndata: {"type":"speech.audio.done",' +
      '"usage":{"prompt_tokens":12,"completion_tokens":340,"total_tokens":352}}'
  ].map((event) => event + '\n\n').join(''))
  const tap = createSseTap()
  const output = await run(tap, splitAt(input, 100, 2500, 4100, input.length - 40))
  t.ok(output.equals(input))
  t.same(tap.result.usage, usageOf({ promptTokens: 12, completionTokens: 340, totalTokens: 352 }))
  t.equal(tap.result.events, 3)
  t.equal(tap.result.streamError, false)
})

t.test('a stream without usage leaves usage undefined', async (t) => {
  const input = bytes([
    chunk('"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]'),
    chunk('"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}]'),
    'data: [DONE]'
  ].map((event) => event + '\n\n').join(''))
  const tap = createSseTap()
  const output = await run(tap, [input])
  t.ok(output.equals(input))
  t.equal(tap.result.usage, undefined)
  t.equal(tap.result.events, 3)
  t.equal(tap.result.streamError, false)
})

t.test('"usage": null on a chunk is no usage', async (t) => {
  const tap = createSseTap()
  await run(tap, [bytes(chunk('"choices":[],"usage":null') + '\n\n')])
  t.equal(tap.result.usage, undefined)
  t.equal(tap.result.events, 1)
})

t.test('a last event without its blank line is read at the end', async (t) => {
  const last = chunk('"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],' +
    '"usage":{"prompt_tokens":4,"total_tokens":36,"completion_tokens":32}')
  const first = chunk('"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]') + '\n\n'
  for (const ending of ['', '\n', '\r\n']) {
    const input = bytes(first + last + ending)
    const tap = createSseTap()
    const output = await run(tap, byteByByte(input))
    t.ok(output.equals(input), `ending ${JSON.stringify(ending)}: bytes unchanged`)
    t.same(tap.result.usage, CHAT_USAGE, `ending ${JSON.stringify(ending)}: usage`)
    t.equal(tap.result.events, 2, `ending ${JSON.stringify(ending)}: events`)
  }
})

t.test('an empty stream: nothing learnt, no first byte', async (t) => {
  const tap = createSseTap()
  const output = await run(tap, [])
  t.equal(output.length, 0)
  t.same(tap.result,
    { usage: undefined, model: undefined, events: 0, firstByteAt: undefined, streamError: false, streamed: true })
})

t.test('conversation.response.error event sets streamError', async (t) => {
  const input = bytes(
    'event: conversation.response.started\ndata: {"type":"conversation.response.started","conversation_id":"c"}\n\n' +
    'event: conversation.response.error\n' +
    'data: {"type":"conversation.response.error","message":"Internal server error","code":3000}\n\n')
  for (const [name, chunks] of [['one read', [input]], ['CRLF', [bytes(crlf(input.toString()))]]] as const) {
    const tap = createSseTap()
    const output = await run(tap, [...chunks])
    t.ok(output.equals(chunks[0]), `${name}: bytes unchanged`)
    t.equal(tap.result.streamError, true, name)
    t.equal(tap.result.usage, undefined, name)
    t.equal(tap.result.events, 2, name)
  }
})

t.test('a data-only error payload sets streamError', async (t) => {
  const payloads = [
    '{"error":{"message":"Service unavailable","type":"server_error","code":"1000"}}',
    '{"object":"error","message":"Internal error","type":"internal_error_proxy","param":null,"code":"1000"}'
  ]
  for (const payload of payloads) {
    const input = bytes(chunk('"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]') + '\n\n' +
      `data: ${payload}\n\n`)
    const tap = createSseTap()
    const output = await run(tap, byteByByte(input))
    t.ok(output.equals(input))
    t.equal(tap.result.streamError, true, payload)
    t.equal(tap.result.events, 2)
  }
})

t.test('content that merely says "error" is not a stream error', async (t) => {
  const contents = ['error', 'Syntax error on line 3', '\\"error\\": true', '{\\"error\\":\\"x\\"}', 'event: error']
  for (const content of contents) {
    const input = bytes(chunk(`"choices":[{"index":0,"delta":{"content":"${content}"},"finish_reason":null}]`) +
      '\n\n' + chunk('"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],' +
      '"usage":{"prompt_tokens":4,"total_tokens":36,"completion_tokens":32}') + '\n\ndata: [DONE]\n\n')
    const tap = createSseTap()
    const output = await run(tap, [input])
    t.ok(output.equals(input))
    t.equal(tap.result.streamError, false, content)
    t.same(tap.result.usage, CHAT_USAGE, content)
  }
})

// a chunk that carries `"error": null` is not an error (Portkey-style and some OpenAI-compatible relays emit it)
t.test('"error": null is not a stream error', async (t) => {
  const tap = createSseTap()
  await run(tap, [bytes(chunk('"choices":[],"error":null') + '\n\n')])
  t.equal(tap.result.streamError, false)
})

// JSON tap

const CHAT_JSON = JSON.stringify({
  id: 'cmpl-e5cc70bb28c444948073e77776eb30ef',
  object: 'chat.completion',
  created: 1702256327,
  model: 'mistral-large-latest',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Bonjour, ça va ? 👋', tool_calls: null },
    finish_reason: 'stop' }],
  usage: { prompt_tokens: 16, completion_tokens: 34, total_tokens: 50, prompt_tokens_details: { cached_tokens: 0 } }
})

t.test('with a shaping, the tap reads the bytes Mistral sent and relays what the shaping made of them', async (t) => {
  const seen: Array<[string, boolean]> = []
  // marks every read it is given and what is left at the end, so that the test sees each call and its order
  const shaping = {
    write (chunk: Buffer, plain: boolean) {
      seen.push([chunk.toString(), plain])
      return `<${seen.length}>`
    },
    end () { return '<end>' },
    drop () { seen.push(['<drop>', false]) }
  }
  const events = CHAT_SSE.split(/(?<=\n\n)/).map(bytes)
  const cases = [
    { reads: [bytes(CHAT_SSE)], plain: [false] },
    { reads: splitAt(bytes(CHAT_SSE), 7, 200, 201), plain: [false, false, false, false] },
    // one event a read: the first names the model (read for it), the third has the usage; the others are plain
    { reads: events, plain: [false, true, false, true] }
  ]
  for (const { reads, plain } of cases) {
    seen.length = 0
    const tap = createSseTap(shaping)
    const output = await run(tap, reads)
    t.same(seen, reads.map((read, i) => [String(read), plain[i]]),
      `${reads.length} read(s): the shaping gets every read as it came, once, told which are plain`)
    t.equal(output.toString(), reads.map((_, i) => `<${i + 1}>`).join('') + '<end>', 'and only its output goes on')
    t.same(tap.result.usage, CHAT_USAGE, 'usage from Mistral\'s bytes, whatever the shaping sent')
    t.equal(tap.result.model, 'mistral-small-latest')
    t.equal(tap.result.events, 4)
  }
  const quiet = createSseTap({ write: () => undefined, end: () => undefined, drop () {} })
  t.equal((await run(quiet, [bytes(CHAT_SSE)])).length, 0, 'a shaping that holds everything back sends nothing')
  t.same(quiet.result.usage, CHAT_USAGE)
})

t.test('a cut stream ends with the gateway\'s event, read on its own, never glued to half of Mistral\'s', async (t) => {
  const events = CHAT_SSE.split(/(?<=\n\n)/)
  const half = events[1].slice(0, 60)
  const ours = 'data: {"object":"error","type":"upstream_error","code":"upstream_cut","error":{"code":"upstream_cut"}}\n\n'
  /** Mistral's reads, then the cut: the gateway's event in place of the rest. */
  async function cutAfter (tap: SseTap, reads: string[]): Promise<string> {
    const out: Buffer[] = []
    tap.on('data', (chunk: Buffer) => out.push(chunk))
    const ended = new Promise((resolve) => tap.once('end', resolve))
    for (const read of reads) tap.write(bytes(read))
    tap.endCut(ours)
    await ended
    return Buffer.concat(out).toString()
  }

  const shaped = createSseTap(streamErrorShaping())
  t.equal(await cutAfter(shaped, [events[0], half]), events[0] + ours,
    'shaped: the half event the shaping held back is dropped')
  t.equal(shaped.result.streamError, true, 'the tap saw the error event')
  t.equal(shaped.result.events, 1, 'one event of Mistral\'s, whole; the gateway\'s is not one')

  const relayed = createSseTap()
  t.equal(await cutAfter(relayed, [events[0], half]), events[0] + half + '\n\n' + ours,
    'unshaped: the half event already relayed is closed off before the gateway\'s')
  t.equal(relayed.result.streamError, true)

  const atBoundary = createSseTap()
  t.equal(await cutAfter(atBoundary, [events[0]]), events[0] + ours, 'a cut between events adds nothing')

  const before = createSseTap(streamErrorShaping())
  t.equal(await cutAfter(before, []), ours, 'a cut before any byte: only the gateway\'s event')
  t.equal(before.result.firstByteAt, undefined, 'which is not Mistral\'s first byte')
  t.equal(before.result.events, 0)
})

t.test('JSON tap: chat completion body, in one read and split inside a character', async (t) => {
  const input = bytes(CHAT_JSON)
  const wave = input.indexOf(bytes('👋'))
  for (const [name, chunks] of [['one read', [input]], ['split', splitAt(input, 10, wave + 2)]] as const) {
    const tap = createJsonTap()
    const before = Date.now()
    const output = await run(tap, [...chunks])
    t.ok(output.equals(input), `${name}: bytes unchanged`)
    t.same(tap.result.usage, usageOf({ promptTokens: 16, completionTokens: 34, totalTokens: 50 }), name)
    t.equal(tap.result.model, 'mistral-large-latest', name)
    t.equal(tap.result.events, 1, name)
    t.equal(tap.result.streamError, false, name)
    t.equal(tap.result.streamed, false, name)
    t.ok(tap.result.firstByteAt! >= before && tap.result.firstByteAt! <= Date.now(), `${name}: firstByteAt`)
  }
})

t.test('JSON tap: embeddings body', async (t) => {
  const input = bytes(JSON.stringify({
    id: 'embd-aad6fc62b17349b192ef09225058bc45',
    object: 'list',
    data: [{ object: 'embedding', embedding: [-0.0165, 0.0701, 0.0314], index: 0 }],
    model: 'mistral-embed',
    usage: { prompt_tokens: 6, total_tokens: 6, completion_tokens: 0 }
  }))
  const tap = createJsonTap()
  const output = await run(tap, byteByByte(input))
  t.ok(output.equals(input))
  t.same(tap.result.usage, usageOf({ promptTokens: 6, totalTokens: 6 }))
  t.equal(tap.result.model, 'mistral-embed')
  t.equal(tap.result.events, 1)
})

t.test('JSON tap: OCR body counts pages', async (t) => {
  const input = bytes(JSON.stringify({
    pages: [{ index: 0, markdown: '# Facture n° 12', images: [], dimensions: { dpi: 200, height: 2200, width: 1700 } }],
    model: 'mistral-ocr-2505-completion',
    document_annotation: null,
    usage_info: { pages_processed: 3, doc_size_bytes: 48213 }
  }))
  const tap = createJsonTap()
  const output = await run(tap, [input])
  t.ok(output.equals(input))
  t.same(tap.result.usage, usageOf({ pages: 3 }))
  t.equal(tap.result.model, 'mistral-ocr-2505-completion')
  t.equal(tap.result.events, 1)
})

t.test('JSON tap: an OCR answer over 64 MiB (its page images) is relayed whole and metered from its ends', async (t) => {
  const image = 'A'.repeat(66 * 1024 * 1024)
  const input = bytes(JSON.stringify({
    pages: [{ index: 0, markdown: '# Scan', images: [{ id: 'img-0.jpeg', image_base64: image }] }],
    model: 'mistral-ocr-2505-completion',
    document_annotation: null,
    usage_info: { pages_processed: 240, doc_size_bytes: 48213 }
  }))
  const reads = splitAt(input, ...Array.from({ length: Math.floor(input.length / 65536) }, (_, i) => (i + 1) * 65536))
  const tap = createJsonTap()
  const output = await run(tap, reads)
  t.equal(output.length, input.length, 'every byte relayed')
  t.same(tap.result.usage, usageOf({ pages: 240 }), 'the pages Mistral counted, from the last bytes')
  t.equal(tap.result.model, 'mistral-ocr-2505-completion')
})

t.test('JSON tap: invalid JSON is relayed, not metered, and does not throw', async (t) => {
  for (const text of ['{"usage":{"prompt_tokens":4', '<html>502 Bad Gateway</html>', 'data: [DONE]\n\n']) {
    const input = bytes(text)
    const tap = createJsonTap()
    const output = await run(tap, [input])
    t.ok(output.equals(input), `${text}: bytes unchanged`)
    t.equal(tap.result.usage, undefined, text)
    t.equal(tap.result.model, undefined, text)
    t.equal(tap.result.events, 0, text)
    t.type(tap.result.firstByteAt, 'number')
  }
})

t.test('JSON tap: an error body has no usage', async (t) => {
  const input = bytes('{"object":"error","message":"Rate limit exceeded","type":"rate_limited","param":null,' +
    '"code":"1300","raw_status_code":429}')
  const tap = createJsonTap()
  const output = await run(tap, [input])
  t.ok(output.equals(input))
  t.equal(tap.result.usage, undefined)
  t.equal(tap.result.model, undefined)
})

t.test('JSON tap: empty body', async (t) => {
  const tap = createJsonTap()
  const output = await run(tap, [])
  t.equal(output.length, 0)
  t.same(tap.result,
    { usage: undefined, model: undefined, events: 0, firstByteAt: undefined, streamError: false, streamed: false })
})

t.test('an event ended by LF then CRLF is an event: its usage is read', async (t) => {
  const usage = { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 }
  const tap = createSseTap()
  const body = `data: ${JSON.stringify({ id: 'a', model: 'm', choices: [], usage })}\n\r\ndata: [DONE]\n\r\n`
  tap.end(Buffer.from(body))
  for await (const _ of tap) { /* read through */ }
  t.match(tap.result.usage, { promptTokens: 3, completionTokens: 5 })
})

t.test('usage that reached the tap is read though the client never read it (a slow client that then left)', async (t) => {
  const usage = { prompt_tokens: 3, completion_tokens: 2000, total_tokens: 2003 }
  const tap = createSseTap()
  // far more than the tap buffers before its reader takes any: the last event, with the usage, waits unread
  for (let i = 0; i < 2000; i++) {
    tap.write(bytes(`data: ${JSON.stringify({ id: 'a', model: 'm', choices: [{ index: 0, delta: { content: 'word ' } }] })}\n\n`))
  }
  tap.write(bytes(`data: ${JSON.stringify({ id: 'a', model: 'm', choices: [], usage })}\n\ndata: [DONE]\n\n`))
  tap.end()
  t.ok(tap.writableLength > 0, 'bytes wait in the tap, untransformed')
  tap.destroy()
  t.match(tap.result.usage, { promptTokens: 3, completionTokens: 2000 }, 'the usage was read as it arrived')
  t.equal(tap.result.events, 2002)
})
