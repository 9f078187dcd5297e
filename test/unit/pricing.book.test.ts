import t from 'tap'
import type { Database } from '../../src/db/client.js'
import { DEFAULT_PRICES, MULTIPLIERS, PRICE_FAMILIES } from '../../src/pricing/default-prices.js'
import { createPriceBook } from '../../src/pricing/price-book.js'

// before load() the book serves the shipped table: no database needed to resolve
const book = createPriceBook({ db: {} as Database })

t.test('the shipped table is well formed', async (t) => {
  const seen = new Map<string, string>()
  for (const row of DEFAULT_PRICES) {
    t.ok(row.prices.USD, `${row.model} has a USD price`)
    for (const name of [row.model, ...row.aliases]) {
      const key = `${row.family} ${name}`
      t.notOk(seen.has(key), `${key} names one model only (also ${seen.get(key)})`)
      seen.set(key, row.model)
      t.equal(name, name.toLowerCase())
    }
    for (const prices of Object.values(row.prices)) {
      for (const value of Object.values(prices ?? {})) t.ok(Number.isSafeInteger(value) && value >= 0)
    }
  }
  t.same(MULTIPLIERS, { batchBps: 5000, priorityBps: 17_500, regionalBps: 11_000 })
})

t.test('resolve: id, alias, case variants', async (t) => {
  const byId = book.resolve('mistral-small-2603', 'chat', 'USD')
  t.match(byId, { model: 'mistral-small-2603', inputPerMTok: 150_000, outputPerMTok: 600_000, cachedInputPerMTok: 15_000,
    override: false, status: 'current', outputCeiling: 32_768 })
  t.equal(book.resolve('mistral-small-latest', 'chat', 'USD'), byId)
  for (const variant of ['Mistral-Small-Latest', 'MISTRAL-SMALL-2603', 'mistral-SMALL-latest']) {
    t.equal(book.resolve(variant, 'chat', 'USD'), byId, `${variant} cannot dodge the price`)
  }
  t.equal(book.resolve('mistral-small-latest', 'fim', 'USD'), byId, 'FIM is priced as chat')
  t.equal(book.resolve('mistral-small-latest', 'agents_completion', 'USD'), byId)
  t.match(book.resolve('mistral-small-latest', 'chat', 'EUR'), { currency: 'EUR', inputPerMTok: 120_000 })
})

t.test('resolve: fine-tuned models fall back to their base', async (t) => {
  const base = book.resolve('mistral-small-2603', 'chat', 'USD')
  t.equal(book.resolve('ft:mistral-small-2603:7e2a91c4:20260801:b5d3', 'chat', 'USD'), base)
  t.equal(book.resolve('FT:Mistral-Small-Latest:abc', 'chat', 'USD'), base)
  t.equal(book.resolve('ft:unknown-base:abc', 'chat', 'USD'), undefined)
  t.equal(book.resolve('ft:', 'chat', 'USD'), undefined)
})

t.test('resolve: one id, two families, two prices', async (t) => {
  t.match(book.resolve('voxtral-mini-2507', 'transcription', 'USD'), { family: 'transcription', audioPerMinute: 2000 })
  t.match(book.resolve('voxtral-mini-2507', 'chat', 'USD'),
    { family: 'chat', audioPerMinute: 1000, inputPerMTok: 40_000 })
  t.match(book.resolve('voxtral-mini-latest', 'transcription', 'USD'), { model: 'voxtral-mini-2602' })
  t.equal(book.resolve('voxtral-mini-latest', 'chat', 'USD'), undefined)
  t.match(book.resolve('mistral-moderation-2411', 'classification', 'USD'), { family: 'moderation' })
  t.equal(book.resolve('mistral-small-2603', 'embeddings', 'USD'), undefined, 'a chat model has no embeddings price')
})

t.test('resolve: nothing unpriced', async (t) => {
  t.equal(book.resolve('gpt-4o', 'chat', 'USD'), undefined)
  t.equal(book.resolve('*', 'chat', 'USD'), undefined, 'no fallback row until an operator sets one')
  t.equal(book.resolve('mistral-small-2603', 'chat', 'GBP'), undefined, 'no conversion between currencies')
  t.equal(book.resolve('pixtral-large-2411', 'chat', 'EUR'), undefined, 'half a EUR price is no EUR price')
  t.equal(book.resolve('', 'chat', 'USD'), undefined)
})

t.test('list and canonical', async (t) => {
  const usd = book.list('USD')
  t.equal(usd.length, DEFAULT_PRICES.length)
  t.same([...new Set(usd.map((price) => price.family))], PRICE_FAMILIES)
  t.ok(book.list('EUR').length < usd.length)
  t.same(book.list('USD', 'speech').map((price) => price.model), ['voxtral-mini-tts-2603'])
  t.equal(book.canonical('Mistral-Large-Latest', 'chat'), 'mistral-large-2512')
  t.equal(book.canonical('my-model', 'chat'), 'my-model')
  t.equal(book.canonical('*', 'chat'), '*')
})
