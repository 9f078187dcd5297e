import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import t from 'tap'
import {
  flaggedModerations, MISTRAL_MODERATION_MODEL, openAiModerations, translateModerationRequest
} from '../../src/dialects/openai-moderations.js'
import { streamErrorShaping } from '../../src/dialects/openai-stream-errors.js'
import { createSseTap } from '../../src/proxy/usage-tap.js'

// Moderations and in-stream errors for OpenAI clients, on their own (the errors in the usage tap's pass, where the
// gateway runs them); the openai SDK drives them in test/integration/openai.sdk.test.ts.

/** The chunks the shaper let through, each as it was pushed. */
async function through (chunks: Array<string | Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = []
  await pipeline(Readable.from(chunks.map((chunk) => Buffer.from(chunk))), createSseTap(streamErrorShaping()),
    async function (source: AsyncIterable<Buffer | string>) {
      for await (const chunk of source) out.push(Buffer.from(chunk))
    })
  return out
}

const CHUNK = 'data: {"id":"abc","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
const ERROR = { object: 'error', message: 'Service unavailable', type: 'server_error', param: null, code: '3000' }

t.test('stream errors: events without an error pass as the same bytes, as soon as they are whole', async (t) => {
  const shaper = createSseTap(streamErrorShaping())
  const read = () => (shaper.read() as Buffer | null)?.toString() ?? null
  const written = Buffer.from(CHUNK)
  shaper.write(written)
  const first = shaper.read() as Buffer
  t.equal(first.toString(), CHUNK, 'a whole event goes on at once')
  t.equal(first.buffer, written.buffer, 'as the very bytes that came in: nothing decoded or copied')
  shaper.write(CHUNK.slice(0, 20))
  t.equal(read(), null, 'half an event waits')
  shaper.write(CHUNK.slice(20) + 'data: [DONE]\n\n')
  t.equal(read(), CHUNK + 'data: [DONE]\n\n', 'and goes on with the rest of it')
})

t.test('stream errors: Mistral\'s error event gains OpenAI\'s error object, even split across reads', async (t) => {
  const event = `data: ${JSON.stringify(ERROR)}\n\n`
  const out = Buffer.concat(await through([CHUNK + event.slice(0, 12), event.slice(12)])).toString()
  const [first, second, ...rest] = out.split('\n\n')
  t.equal(first + '\n\n', CHUNK, 'the chunk before it is untouched')
  t.same(JSON.parse(second.slice(6)), {
    ...ERROR, error: { message: 'Service unavailable', type: 'server_error', code: '3000', param: null }
  })
  t.same(rest, [''], 'nothing after it')
})

t.test('stream errors: a named event keeps its name; an error already in OpenAI\'s shape and a chunk that merely ' +
  'mentions "error" are left alone', async (t) => {
  const named = `event: error\ndata: ${JSON.stringify(ERROR)}\n\n`
  const shaped = JSON.parse(Buffer.concat(await through([named])).toString().split('\ndata: ')[1])
  t.equal(shaped.error.message, 'Service unavailable')
  t.match(Buffer.concat(await through([named])).toString(), /^event: error\ndata: /)
  const openAi = `data: ${JSON.stringify({ error: { message: 'x', type: 'y' } })}\n\n`
  t.equal(Buffer.concat(await through([openAi])).toString(), openAi)
  const mention = 'data: {"choices":[{"delta":{"content":"the \\"error\\" word"}}]}\n\n'
  t.equal(Buffer.concat(await through([mention])).toString(), mention)
})

t.test('stream errors: a stream that ends mid-event lets the rest out as it came', async (t) => {
  const out = Buffer.concat(await through([CHUNK, 'data: {"id":"ab'])).toString()
  t.equal(out, CHUNK + 'data: {"id":"ab')
})

t.test('stream errors: CRLF-framed events go on as they are whole too, not at the end of the stream', async (t) => {
  const crlf = CHUNK.replace(/\n/g, '\r\n')
  const shaper = createSseTap(streamErrorShaping())
  shaper.write(Buffer.from(crlf + crlf.slice(0, 15)))
  t.equal((shaper.read() as Buffer | null)?.toString(), crlf, 'the whole event at once, its half held back')
  shaper.write(Buffer.from(crlf.slice(15)))
  t.equal((shaper.read() as Buffer | null)?.toString(), crlf, 'and the rest once whole')

  const error = `data: ${JSON.stringify(ERROR)}\r\n\r\n`
  const out = Buffer.concat(await through([crlf + error])).toString()
  t.ok(out.startsWith(crlf), 'the chunk before it as it came')
  t.ok(out.endsWith('\r\n\r\n'), 'the error event keeps its blank line, or no client would dispatch it')
  t.match(JSON.parse(out.slice(crlf.length).trim().slice(6)), { object: 'error', error: { message: 'Service unavailable' } })
})

t.test('moderation requests: no model or OpenAI\'s is translated; a Mistral model is not', async (t) => {
  for (const model of [undefined, null, 'omni-moderation-latest', 'omni-moderation-2024-09-26',
    'text-moderation-latest', 'text-moderation-stable']) {
    const body: Record<string, unknown> = { input: 'x', ...(model === undefined ? {} : { model }) }
    t.equal(translateModerationRequest(body), true, String(model))
    t.same(body, { input: 'x', model: MISTRAL_MODERATION_MODEL })
  }
  const mistral = { model: 'mistral-moderation-latest', input: ['a', 'b'] }
  t.equal(translateModerationRequest(mistral), false)
  t.same(mistral, { model: 'mistral-moderation-latest', input: ['a', 'b'] }, 'untouched')

  const parts = { input: [{ type: 'text', text: 'one' }, { type: 'text', text: 'two' }] }
  translateModerationRequest(parts)
  t.same(parts.input, 'one\ntwo', 'text parts are one input')
  t.throws(() => translateModerationRequest({ input: [{ type: 'image_url', image_url: { url: 'https://x' } }] }),
    { statusCode: 400, param: 'input', message: 'Mistral\'s moderation reads text only: send text inputs' })
})

t.test('moderation answers: flagged, and OpenAI\'s names beside Mistral\'s', async (t) => {
  const answer = {
    id: 'mod-1',
    model: 'mistral-moderation-2603',
    results: [
      {
        categories: { sexual: false, dangerous: false, criminal: true, selfharm: false, pii: false },
        category_scores: { sexual: 0.01, dangerous: 0.4, criminal: 0.9, selfharm: 0.02, pii: 0.03 }
      },
      {
        categories: { dangerous_and_criminal_content: false, hate_and_discrimination: false, law: true },
        category_scores: { dangerous_and_criminal_content: 0.2, hate_and_discrimination: 0.1, law: 0.8 }
      }
    ],
    usage: { prompt_tokens: 3, total_tokens: 3, completion_tokens: 0, request_count: 1 }
  }
  const out = JSON.parse(openAiModerations(JSON.stringify(answer)))
  t.same(out.results[0], {
    flagged: true,
    categories: { ...answer.results[0].categories, illicit: true, 'self-harm': false },
    category_scores: { ...answer.results[0].category_scores, illicit: 0.9, 'self-harm': 0.02 }
  }, 'illicit is dangerous or criminal, at the higher score; sexual is the same name in both')
  t.same(out.results[1], {
    flagged: true,
    categories: { ...answer.results[1].categories, hate: false, illicit: false },
    category_scores: { ...answer.results[1].category_scores, hate: 0.1, illicit: 0.2 }
  }, 'the first model\'s names map too; a flag of Mistral\'s own (law) sets flagged')
  t.same({ ...out, results: undefined }, { ...answer, results: undefined }, 'every other field as Mistral sent it')
  t.equal(openAiModerations('not json'), 'not json')
})

t.test('moderation answers to a request naming a Mistral model: flagged, and Mistral\'s names only', async (t) => {
  const answer = {
    id: 'mod-2',
    model: 'mistral-moderation-latest',
    results: [
      { categories: { violence_and_threats: true }, category_scores: { violence_and_threats: 0.9 } },
      { categories: { sexual: false, law: false }, category_scores: { sexual: 0.01, law: 0.1 } },
      { category_scores: { sexual: 0.01 } }
    ],
    usage: { prompt_tokens: 3, total_tokens: 3, completion_tokens: 0 }
  }
  const out = JSON.parse(flaggedModerations(JSON.stringify(answer)))
  t.same(out.results, [
    { flagged: true, ...answer.results[0] },
    { flagged: false, ...answer.results[1] },
    { flagged: false, ...answer.results[2] }
  ], 'flagged beside Mistral\'s own fields, no OpenAI category added')
  t.same({ ...out, results: undefined }, { ...answer, results: undefined }, 'every other field as Mistral sent it')
  const own = JSON.stringify({ results: [{ flagged: true, categories: { sexual: false } }] })
  t.equal(JSON.parse(flaggedModerations(own)).results[0].flagged, true, 'a flagged Mistral sent itself wins')
  t.equal(flaggedModerations('not json'), 'not json')
})
