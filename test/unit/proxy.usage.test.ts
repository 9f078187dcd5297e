import t from 'tap'
import { emptyUsage, readModel, readUsage, type Usage } from '../../src/proxy/usage.js'

const usageOf = (fields: Partial<Usage>): Usage => ({ ...emptyUsage(), ...fields })

t.test('emptyUsage is all zeros and a fresh object each time', async (t) => {
  t.same(emptyUsage(), {
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
    totalTokens: 0,
    audioSeconds: 0,
    pages: 0,
    characters: 0,
    connectorTokens: 0,
    serviceTier: null
  })
  const one = emptyUsage()
  one.promptTokens = 9
  t.equal(emptyUsage().promptTokens, 0)
})

// MISTRAL-NOTES §2.5: UsageInfo (chat, fim, agents, embeddings, transcription)
t.test('UsageInfo with its nullable fields null', async (t) => {
  t.same(readUsage({
    model: 'mistral-small-latest',
    usage: { prompt_tokens: 4, completion_tokens: 32, total_tokens: 36, prompt_audio_seconds: null, service_tier: null }
  }), usageOf({ promptTokens: 4, completionTokens: 32, totalTokens: 36 }))
})

t.test('UsageInfo with a service tier: the tier that served the call is kept for pricing', async (t) => {
  t.same(readUsage({ usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, service_tier: 'priority' } }),
    usageOf({ promptTokens: 10, completionTokens: 5, totalTokens: 15, serviceTier: 'priority' }))
  t.equal(readUsage({ usage: { prompt_tokens: 1, service_tier: 'standard' } })?.serviceTier, 'standard')
  for (const tier of [null, 7, '', 'Priority!', 'x'.repeat(33), { tier: 'priority' }]) {
    t.equal(readUsage({ usage: { prompt_tokens: 1, service_tier: tier } })?.serviceTier, null, JSON.stringify(tier))
  }
})

t.test('the fuller internal UsageInfo: cached tokens from prompt_tokens_details', async (t) => {
  t.same(readUsage({
    usage: {
      prompt_tokens: 2048,
      completion_tokens: 100,
      total_tokens: 2148,
      prompt_audio_seconds: null,
      prompt_tokens_details: { cached_tokens: 1984, audio_tokens: 0, messages: [] },
      completion_tokens_details: { reasoning_tokens: 40 },
      prompt_token_details: { cached_tokens: 1 },
      num_cached_tokens: 7,
      request_count: 1
    }
  }), usageOf({ promptTokens: 2048, cachedTokens: 1984, completionTokens: 100, totalTokens: 2148 }))
})

t.test('cached tokens fall back to num_cached_tokens', async (t) => {
  const base = { prompt_tokens: 100, completion_tokens: 1, total_tokens: 101, num_cached_tokens: 64 }
  const expected = usageOf({ promptTokens: 100, cachedTokens: 64, completionTokens: 1, totalTokens: 101 })
  t.same(readUsage({ usage: base }), expected, 'no details')
  t.same(readUsage({ usage: { ...base, prompt_tokens_details: null } }), expected, 'details null')
  t.same(readUsage({ usage: { ...base, prompt_tokens_details: { cached_tokens: null } } }), expected,
    'cached_tokens null')
  t.same(readUsage({ usage: { ...base, prompt_tokens_details: { audio_tokens: 3 } } }), expected, 'no cached_tokens')
  t.equal(readUsage({ usage: { ...base, prompt_tokens_details: { cached_tokens: 0 } } })?.cachedTokens, 0,
    'an explicit 0 in the details wins')
  t.equal(readUsage({ usage: { ...base, prompt_tokens_details: 5 } })?.cachedTokens, 64, 'details not an object')
  t.equal(readUsage({ usage: { prompt_tokens: 3 } })?.cachedTokens, 0, 'neither present')
})

t.test('ConversationUsageInfo with connector tokens', async (t) => {
  t.same(readUsage({
    type: 'conversation.response.done',
    usage: {
      prompt_tokens: 18709, completion_tokens: 183, total_tokens: 18892, connector_tokens: 1500,
      connectors: { web_search: 1500 }
    }
  }), usageOf({ promptTokens: 18709, completionTokens: 183, totalTokens: 18892, connectorTokens: 1500 }))
  t.equal(readUsage({ usage: { prompt_tokens: 1, connector_tokens: null } })?.connectorTokens, 0, 'null → 0')
  t.equal(readUsage({ usage: { prompt_tokens: 1, connector_tokens: -3 } })?.connectorTokens, 0, 'negative → 0')
})

t.test('transcription usage: prompt_audio_seconds', async (t) => {
  t.same(readUsage({
    model: 'voxtral-mini-2507', text: 'Bonjour', language: 'fr', segments: [],
    usage: { prompt_audio_seconds: 93, prompt_tokens: 5, total_tokens: 1012, completion_tokens: 17 }
  }), usageOf({ promptTokens: 5, completionTokens: 17, totalTokens: 1012, audioSeconds: 93 }))
})

t.test('embeddings usage', async (t) => {
  t.same(readUsage({ object: 'list', data: [], model: 'mistral-embed',
    usage: { prompt_tokens: 6, total_tokens: 6, completion_tokens: 0 } }), usageOf({ promptTokens: 6, totalTokens: 6 }))
})

t.test('OCRUsageInfo: pages_processed', async (t) => {
  const ocr = { pages: [], model: 'mistral-ocr-latest', usage_info: { pages_processed: 12, doc_size_bytes: 3000 } }
  t.same(readUsage(ocr), usageOf({ pages: 12 }))
  t.same(readUsage({ usage_info: { pages_processed: null, doc_size_bytes: null } }), usageOf({}), 'null pages → 0')
  t.same(readUsage({ usage_info: { doc_size_bytes: 10 } }), usageOf({}), 'no pages → 0')
})

t.test('usage and usage_info together', async (t) => {
  t.same(readUsage({ usage: { prompt_tokens: 2, completion_tokens: 3 }, usage_info: { pages_processed: 4 } }),
    usageOf({ promptTokens: 2, completionTokens: 3, totalTokens: 5, pages: 4 }))
  t.same(readUsage({ usage: null, usage_info: { pages_processed: 4 } }), usageOf({ pages: 4 }), 'usage null')
  t.same(readUsage({ usage: { prompt_tokens: 2 }, usage_info: null }), usageOf({ promptTokens: 2, totalTokens: 2 }),
    'usage_info null')
})

t.test('null, negative, fractional and non-number values', async (t) => {
  t.same(readUsage({ usage: { prompt_tokens: null, completion_tokens: null, total_tokens: null } }), usageOf({}),
    'nulls → 0')
  t.same(readUsage({
    usage: { prompt_tokens: -4, completion_tokens: -1, total_tokens: -5, prompt_audio_seconds: -3,
      prompt_tokens_details: { cached_tokens: -2 } },
    usage_info: { pages_processed: -1 }
  }), usageOf({}), 'negatives → 0')
  t.same(readUsage({
    usage: { prompt_tokens: '12', completion_tokens: true, total_tokens: [36], prompt_audio_seconds: '7',
      prompt_tokens_details: { cached_tokens: '4' } },
    usage_info: { pages_processed: '3' }
  }), usageOf({}), 'strings, booleans and arrays → 0')
  t.same(readUsage({ usage: { prompt_tokens: Number.NaN, completion_tokens: Infinity, total_tokens: -Infinity } }),
    usageOf({}), 'NaN and infinities → 0')
  const fractions = { prompt_tokens: 12.4, completion_tokens: 2.6, total_tokens: 15, prompt_audio_seconds: 7.5 }
  t.same(readUsage({ usage: fractions }),
    usageOf({ promptTokens: 12, completionTokens: 3, totalTokens: 15, audioSeconds: 8 }), 'fractions round')
})

t.test('total is derived when missing, null, zero or invalid', async (t) => {
  for (const total of [undefined, null, 0, -1, 'x']) {
    const usage: Record<string, unknown> = { prompt_tokens: 7, completion_tokens: 12 }
    if (total !== undefined) usage.total_tokens = total
    t.same(readUsage({ usage }), usageOf({ promptTokens: 7, completionTokens: 12, totalTokens: 19 }), String(total))
  }
  t.equal(readUsage({ usage: { prompt_tokens: 7, completion_tokens: 12, total_tokens: 25 } })?.totalTokens, 25,
    'a reported total is kept as reported')
  t.same(readUsage({ usage: {} }), usageOf({}), 'an empty usage object is zero usage, not unknown usage')
})

t.test('no usage: undefined', async (t) => {
  for (const payload of [undefined, null, 0, 42, '', '{"usage":{"prompt_tokens":1}}', true, Symbol('x')]) {
    t.equal(readUsage(payload), undefined, String(payload))
  }
  t.equal(readUsage({}), undefined, 'an object without usage')
  t.equal(readUsage([]), undefined, 'an array')
  t.equal(readUsage({ usage: null }), undefined, 'usage null')
  t.equal(readUsage({ usage: 36 }), undefined, 'usage a number')
  t.equal(readUsage({ usage: 'prompt_tokens=4' }), undefined, 'usage a string')
  t.equal(readUsage({ usage_info: 3 }), undefined, 'usage_info a number')
  t.equal(readUsage({ usage: null, usage_info: null }), undefined, 'both null')
  t.equal(readUsage({ object: 'error', message: 'Rate limit exceeded', type: 'rate_limited', code: '1300' }), undefined,
    'an error body')
})

t.test('readModel', async (t) => {
  t.equal(readModel({ model: 'mistral-small-latest', usage: {} }), 'mistral-small-latest')
  t.equal(readModel({ model: 'ft:open-mistral-7b:587a6b29:20240514:7e773925' }),
    'ft:open-mistral-7b:587a6b29:20240514:7e773925')
  t.equal(readModel({ model: '' }), '', 'an empty string is still a string')
  t.equal(readModel({}), undefined, 'missing')
  t.equal(readModel({ model: null }), undefined, 'null')
  t.equal(readModel({ model: 42 }), undefined, 'a number')
  t.equal(readModel({ model: { id: 'mistral-small-latest' } }), undefined, 'an object')
  t.equal(readModel({ data: { model: 'nested' } }), undefined, 'only the top level counts')
  for (const payload of [undefined, null, 'mistral-small-latest', 7, false]) {
    t.equal(readModel(payload), undefined, String(payload))
  }
})
