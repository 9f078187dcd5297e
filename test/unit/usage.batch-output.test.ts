import t from 'tap'
import {
  addInlineOutputs, addJsonl, addLine, allModels, emptyTotals, familyOfEndpoint, TERMINAL_STATUSES
} from '../../src/usage/batch-output.js'

const chatLine = (prompt: number, completion: number, model = 'mistral-small-latest') => ({
  id: 'batch-1',
  custom_id: 'é',
  response: {
    status_code: 200,
    body: { model, usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion } }
  },
  error: null
})

async function * chunks (text: string, size: number) {
  const bytes = Buffer.from(text)
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size)
}

t.test('an output file read in chunks that split lines and characters', async (t) => {
  const lines = [
    JSON.stringify(chatLine(10, 5)),
    JSON.stringify({ custom_id: '2', response: { status_code: 400, body: { usage: { prompt_tokens: 99 } } } }),
    'not json',
    '',
    JSON.stringify({ id: 'batch-3', custom_id: '3', response: { status_code: 200, body: { model: 'x' } } }),
    JSON.stringify(chatLine(7, 3, 'other-model'))
  ]
  // one byte at a time: every line and the two-byte é are cut; the last line has no newline
  for (const size of [1, 7, 1 << 16]) {
    const totals = emptyTotals()
    await addJsonl(totals, chunks(lines.join('\n'), size))
    t.equal(totals.succeeded, 2, `size ${size}: the answered lines with usage`)
    const units = (prompt: number, completion: number) => ({
      promptTokens: prompt, completionTokens: completion, totalTokens: prompt + completion, cachedTokens: 0,
      audioSeconds: 0, pages: 0, characters: 0, connectorTokens: 0
    })
    t.same([...totals.byModel], [
      ['mistral-small-latest', { units: units(10, 5), annotatedPages: 0 }],
      ['other-model', { units: units(7, 3), annotatedPages: 0 }]
    ], 'each answer counts under the model it names')
    t.same(allModels(totals), { units: units(17, 8), annotatedPages: 0 }, 'and the job\'s sum is theirs')
  }
})

t.test('lines answered 2xx without a usage, and lines that are not JSON, are counted as unreadable', async (t) => {
  const totals = emptyTotals()
  const lines = [
    JSON.stringify(chatLine(1, 1)),
    JSON.stringify({ response: { status_code: 200, body: { model: 'x' } } }),
    JSON.stringify({ response: { status_code: 500, body: {} } }),
    JSON.stringify({ error: { message: 'no response at all' } }),
    '{"cut'
  ]
  await addJsonl(totals, chunks(lines.join('\n'), 5))
  t.same([totals.succeeded, totals.unreadable], [1, 2], 'an errored line is neither')
})

t.test('the results inline of a job, read in chunks that split anything', async (t) => {
  const answer = JSON.stringify({
    id: 'job',
    // strings whose brackets, quotes, escapes and keys must not count
    metadata: { note: 'a "}]" \\', outputs: [chatLine(1000, 1000)] },
    errors: [{ message: '"outputs": [{', count: 0 }],
    outputs: [chatLine(10, 5), { response: { status_code: 200, body: {} } }, chatLine(7, 3, 'other-model'), null],
    'outputs\\': [chatLine(1000, 1000)],
    tail: { outputs: [chatLine(1000, 1000)] }
  })
  for (const size of [1, 3, 1 << 16]) {
    const totals = emptyTotals()
    await addInlineOutputs(totals, chunks(answer, size))
    t.same([totals.succeeded, totals.unreadable], [2, 1], `size ${size}: the top-level outputs only`)
    t.same([...totals.byModel.keys()], ['mistral-small-latest', 'other-model'])
    t.same(allModels(totals).units.promptTokens, 17)
  }
  for (const empty of ['{"outputs":null}', '{"outputs":[]}', '{"id":"job"}', '[{"outputs":[1]}]']) {
    const totals = emptyTotals()
    await addInlineOutputs(totals, chunks(empty, 2))
    t.same([totals.succeeded, totals.unreadable], [0, 0], empty)
  }
})

t.test('an answer that names no model counts under the job\'s', async (t) => {
  const unnamed = { response: { status_code: 200, body: { usage: { prompt_tokens: 4, completion_tokens: 1 } } } }
  const withModel = emptyTotals('mistral-large-latest')
  addLine(withModel, unnamed)
  t.same([...withModel.byModel.keys()], ['mistral-large-latest'])
  const withoutModel = emptyTotals()
  addLine(withoutModel, unnamed)
  t.same([...withoutModel.byModel.keys()], [undefined], 'unknown when the job has none either')
})

t.test('OCR answers with annotations count their pages apart', async (t) => {
  const totals = emptyTotals()
  const ocr = (pages: number, body: Record<string, unknown>) => ({
    response: { status_code: 200, body: { usage_info: { pages_processed: pages }, ...body } }
  })
  addLine(totals, ocr(3, { document_annotation: null, pages: [{ images: [{ image_annotation: null }] }] }))
  addLine(totals, ocr(2, { document_annotation: '{"title":"x"}' }))
  addLine(totals, ocr(4, { pages: [{ images: [] }, { images: [{ image_annotation: '{}' }] }] }))
  t.equal(allModels(totals).units.pages, 9)
  t.equal(allModels(totals).annotatedPages, 6)
})

t.test('ends and endpoints as the spec names them', async (t) => {
  t.same([...TERMINAL_STATUSES].sort(), ['CANCELLED', 'FAILED', 'SUCCESS', 'TIMEOUT_EXCEEDED'])
  t.equal(familyOfEndpoint('/v1/chat/moderations'), 'moderation')
  t.equal(familyOfEndpoint('/v1/chat/classifications'), 'classification')
  t.equal(familyOfEndpoint('__proto__'), undefined, 'no inherited key is an endpoint')
  t.equal(familyOfEndpoint('constructor'), undefined)
  t.equal(familyOfEndpoint('/v1/audio/transcriptions'), 'transcription')
  t.equal(familyOfEndpoint('/v1/unknown'), undefined)
  t.equal(familyOfEndpoint(null), undefined)
})
