import t from 'tap'
import { readJsonFacts } from '../../src/proxy/json-usage.js'
import { readModel, readUsage } from '../../src/proxy/usage.js'

/** What parsing the whole body says: the reference every shortcut must agree with. */
function parsedWhole (body: Buffer) {
  const payload = JSON.parse(body.toString('utf8'))
  return { usage: readUsage(payload), model: readModel(payload) }
}

// a pseudo-random sequence that is the same on every run, so a failure can be replayed
function randomSource (seed: number) {
  let state = seed
  return () => {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31
    return state / 2 ** 31
  }
}

const embedding = (random: () => number, size: number) => Array.from({ length: size }, () => random() * 2 - 1)
const tricky = ['"usage":{"prompt_tokens":999}', 'model', '"model":"fake"', '\\', '}', '{"', 'é "usage" ✓', '\n']

/** An answer of at least 100 kB whose members come in the given order, with traps in its strings and nesting. */
function answer (random: () => number, order: string[], spaced: boolean) {
  const members: Record<string, unknown> = {
    id: 'emb-1',
    object: 'list',
    model: 'mistral-embed',
    usage: { prompt_tokens: 1_234, total_tokens: 1_234, completion_tokens: 0 },
    data: Array.from({ length: 24 }, (_, index) => ({
      object: 'embedding',
      index,
      // strings that look like the members looked for, and a nested `usage` and `model` that are not them
      note: tricky[index % tricky.length],
      meta: { usage: { prompt_tokens: 7 }, model: 'nested' },
      embedding: embedding(random, 256)
    }))
  }
  const ordered = Object.fromEntries(order.map((name) => [name, members[name]]))
  return Buffer.from(spaced ? JSON.stringify(ordered, null, 2) : JSON.stringify(ordered))
}

t.test('a large answer: the members are found at either end, in any order, as a whole parse finds them', async (t) => {
  const random = randomSource(7)
  const orders = [
    ['id', 'object', 'data', 'model', 'usage'], // the order of the fake and of Mistral's docs
    ['id', 'object', 'model', 'usage', 'data'], // the order of the spec's schema
    ['usage', 'data', 'model', 'id'],
    ['model', 'data', 'usage'],
    ['data', 'usage', 'object', 'model', 'id']
  ]
  for (const order of orders) {
    for (const spaced of [false, true]) {
      const body = answer(random, order, spaced)
      t.ok(body.length > 64 * 1024, 'large enough for the shortcut')
      const facts = readJsonFacts(body)
      t.same(facts, parsedWhole(body), `${order.join(',')}${spaced ? ' (indented)' : ''}`)
      t.equal(facts?.usage?.promptTokens, 1_234)
      t.equal(facts?.model, 'mistral-embed')
    }
  }
})

t.test('a member in the middle, nested only, or missing: still the answer of a whole parse', async (t) => {
  const random = randomSource(11)
  const middle = answer(random, ['data', 'usage', 'model', 'id', 'object'], false)
  const body = JSON.parse(middle.toString('utf8'))
  // `usage` only inside the data: not the call's usage
  const nestedOnly = Buffer.from(JSON.stringify({ ...body, usage: undefined }))
  const noModel = Buffer.from(JSON.stringify({ ...body, model: undefined }))
  const ocr = Buffer.from(JSON.stringify({
    pages: body.data, model: 'mistral-ocr-latest', usage_info: { pages_processed: 3, doc_size_bytes: 10 }
  }))
  for (const [name, buffer] of Object.entries({ middle, nestedOnly, noModel, ocr })) {
    t.same(readJsonFacts(buffer), parsedWhole(buffer), name)
  }
  t.equal(readJsonFacts(nestedOnly)?.usage, undefined, 'a nested usage is not the call\'s')
  t.equal(readJsonFacts(ocr)?.usage?.pages, 3)
})

t.test('small, broken or foreign bodies', async (t) => {
  const chat = Buffer.from(JSON.stringify({ model: 'mistral-small-latest', usage: { prompt_tokens: 3, completion_tokens: 4 } }))
  t.match(readJsonFacts(chat), { model: 'mistral-small-latest', usage: { promptTokens: 3, completionTokens: 4, totalTokens: 7 } })
  const large = answer(randomSource(3), ['id', 'data', 'model', 'usage'], false)
  t.equal(readJsonFacts(large.subarray(0, large.length - 40)), undefined, 'cut short: not JSON')
  t.equal(readJsonFacts(Buffer.from('not json')), undefined)
  t.equal(readJsonFacts(Buffer.alloc(0)), undefined)
})

t.test('the bulk of a large answer is not parsed: only its ends are', async (t) => {
  for (const order of [['id', 'model', 'usage', 'data'], ['id', 'data', 'model', 'usage']]) {
    // a plain answer: no nested `usage` or `model`, no string "model" (with them, a whole parse reads the members)
    const plain = JSON.parse(answer(randomSource(5), order, false).toString('utf8'))
    for (const item of plain.data) { delete item.meta; delete item.note }
    const body = JSON.stringify(plain)
    // NaN is not JSON: a whole parse fails on it, the member reads never see it
    const unparsable = Buffer.from(body.replace(/"embedding":\[-?0\.\d+/g, '"embedding":[NaN'))
    t.throws(() => JSON.parse(unparsable.toString('utf8')))
    t.match(readJsonFacts(unparsable), { model: 'mistral-embed', usage: { promptTokens: 1_234 } }, order.join(','))
  }
})

t.test('a top-level member between two nested ones, a duplicated key, a large non-JSON body: as a whole parse', async (t) => {
  const bulk = embedding(randomSource(13), 6_000)
  const between = Buffer.from(JSON.stringify({
    model: 'm', a: { usage: { prompt_tokens: 1 } }, usage: { prompt_tokens: 5 }, b: { usage: { prompt_tokens: 2 } }, bulk
  }))
  t.equal(readJsonFacts(between)?.usage?.promptTokens, 5)
  t.same(readJsonFacts(between), parsedWhole(between))
  const duplicated = Buffer.from(`{"model":"m","usage":{"prompt_tokens":1},"bulk":${JSON.stringify(bulk)},"usage":{"prompt_tokens":9}}`)
  t.same(readJsonFacts(duplicated), parsedWhole(duplicated), 'the last of a duplicated key, as JSON.parse')
  const notJson = Buffer.from(`text "model":"m","usage":{"prompt_tokens":3} ${'x'.repeat(70_000)}`)
  t.equal(readJsonFacts(notJson), undefined, 'not an object: not JSON')
})
