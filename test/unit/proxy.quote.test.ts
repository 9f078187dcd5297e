import t from 'tap'
import type { Database } from '../../src/db/client.js'
import type { ModelPriceRow } from '../../src/db/schema.js'
import { costOf, worstCaseMicros } from '../../src/pricing/cost.js'
import { AUDIO_BYTES_PER_SECOND } from '../../src/pricing/estimate.js'
import { createPriceBook, type PriceBook } from '../../src/pricing/price-book.js'
import type { MeteredFamily } from '../../src/proxy/operations.js'
import { quoteCall } from '../../src/proxy/quote.js'

// before load() the book serves the shipped table: no database needed
const shipped = createPriceBook({ db: {} as Database })

/** A book with the operator's rows: `load()` reads them from this stand-in for drizzle's `select().from()`. */
async function bookWith (rows: Array<Partial<ModelPriceRow> & Pick<ModelPriceRow, 'model' | 'family'>>) {
  const full = rows.map((row): ModelPriceRow => ({
    id: row.model,
    currency: 'USD',
    inputPerMTok: 0,
    outputPerMTok: 0,
    cachedInputPerMTok: null,
    audioPerMinute: 0,
    pagesPer1000: 0,
    annotatedPagesPer1000: 0,
    charactersPerM: 0,
    outputCeiling: null,
    aliases: [],
    createdAt: new Date(0),
    updatedAt: new Date(0),
    ...row
  }))
  const db = { select: () => ({ from: async () => full }) } as unknown as Database
  const book = createPriceBook({ db })
  await book.load()
  return book
}

function quote (family: MeteredFamily, body: Record<string, unknown> | undefined, { audioBytes,
  prices = shipped }: { audioBytes?: number, prices?: PriceBook } = {}) {
  return quoteCall({ family, body, audioBytes, prices, currency: 'USD', markupBps: 0 })
}

const ocr = shipped.resolve('mistral-ocr-latest', 'ocr', 'USD')!
const pagesCost = (pages: number) => costOf({ promptTokens: 0, cachedTokens: 0, completionTokens: 0, audioSeconds: 0,
  pages, characters: 0 }, ocr, { family: 'ocr', markupBps: 0 }).billedMicros

t.test('OCR: a string of pages and ranges reserves the pages it names', async (t) => {
  t.equal(pagesCost(1), 4_000, '$4 per 1000 pages')
  const document = { model: 'mistral-ocr-latest', document: { type: 'document_url', document_url: 'https://x/d.pdf' } }
  const cases: Array<[unknown, number]> = [
    ['0-999', 1000],
    ['0-5', 6],
    ['0,2-4', 4],
    ['0,1,2', 3],
    [' 3 , 1-2 ', 3],
    ['0-4,2-6', 7], // overlapping ranges: each page once
    ['7', 1],
    ['0-99999999', 1000], // no document has more pages than Mistral processes in one call
    [[0, 1, 2], 3],
    [[4, 4, 4], 1],
    [[], 50], // an empty list selects nothing in particular: the whole document, as when `pages` is missing
    ['', 50],
    [null, 50],
    [undefined, 50],
    ['five', 50] // not Mistral's syntax: the default, as for a missing list
  ]
  for (const [pages, reserved] of cases) {
    const priced = quote('ocr', { ...document, pages })
    t.equal(priced.quote.cost, pagesCost(reserved), `pages ${JSON.stringify(pages)}: ${reserved} reserved`)
  }
})

t.test('transcription: an upload of unknown length reserves the most audio Mistral accepts', async (t) => {
  const voxtral = shipped.resolve('voxtral-mini-latest', 'transcription', 'USD')!
  const seconds = (audioSeconds: number) => costOf({ promptTokens: 0, cachedTokens: 0, completionTokens: 0,
    audioSeconds, pages: 0, characters: 0 }, voxtral, { family: 'transcription', markupBps: 0 }).billedMicros
  const form = { model: 'voxtral-mini-latest' }
  t.equal(quote('transcription', form, { audioBytes: 2_000_000 }).quote.cost,
    seconds(2_000_000 / AUDIO_BYTES_PER_SECOND), 'a known length: its seconds at 16 kbit/s')
  // chunked, or a file_url: no length (src/proxy/transcription-source.ts); 500 MB of audio (MISTRAL-NOTES §2.1) at
  // 16 kbit/s
  const unknown = quote('transcription', form).quote.cost
  t.equal(unknown, seconds(Math.ceil(500 * 1024 * 1024 / AUDIO_BYTES_PER_SECOND)))
  t.ok(unknown > seconds(60), 'more than the minute a chunked upload used to reserve')
  t.equal(quote('transcription', form, { audioBytes: NaN }).quote.cost, unknown, 'an unreadable length too')
  t.equal(quote('transcription', form, { audioBytes: 2_000 * 1024 * 1024 }).quote.cost, unknown,
    'no more than the most Mistral takes')
})

t.test('a model-less call is reserved at each field\'s dearest price, a cheap `*` row notwithstanding', async (t) => {
  const book = await bookWith([
    { model: '*', family: 'chat', inputPerMTok: 1, outputPerMTok: 1 },
    { model: '*', family: 'transcription', audioPerMinute: 1 }
  ])
  const rows = book.list('USD', 'chat').filter((row) => row.status !== 'retired')
  t.ok(rows.some((row) => row.model === '*'), 'the `*` row is in the family')

  const agent = { agent_id: 'ag_1', messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 1000 }
  const priced = quote('agents_completion', agent, { prices: book })
  const { promptTokens } = priced.quote
  const atRow = (row: typeof rows[number]) => worstCaseMicros({ price: row, markupBps: 0, promptTokens,
    maxOutputTokens: 1000 })
  const dearest = Math.max(...rows.map(atRow))
  t.ok(dearest > atRow(book.resolve('*', 'chat', 'USD')!), 'the `*` row is the cheap one')
  t.ok(priced.quote.cost >= dearest, `reserved ${priced.quote.cost} ≥ ${dearest}, the dearest row's cost`)
  const maxInput = Math.max(...rows.map((row) => row.inputPerMTok))
  const maxOutput = Math.max(...rows.map((row) => row.outputPerMTok))
  t.match(priced.price, { inputPerMTok: maxInput, outputPerMTok: maxOutput }, 'each field at its family maximum')

  // without max_tokens: the largest output ceiling of the family
  const unbounded = quote('agents_completion', { agent_id: 'ag_1', messages: agent.messages }, { prices: book })
  t.equal(unbounded.quote.maxTokens, Math.max(...rows.map((row) => row.outputCeiling)))

  // a conversation with an agent, and a transcription whose model is a form field streamed past, alike
  t.ok(quote('conversation', { agent_id: 'ag_1', inputs: 'Hello there' }, { prices: book }).quote.cost >=
    Math.max(...rows.map((row) => worstCaseMicros({ price: row, markupBps: 0, promptTokens: 0,
      maxOutputTokens: row.outputCeiling }))))
  const audio = book.list('USD', 'transcription').filter((row) => row.status !== 'retired')
  const dearestMinute = Math.max(...audio.map((row) => row.audioPerMinute))
  t.equal(quote('transcription', undefined, { audioBytes: 120 * AUDIO_BYTES_PER_SECOND, prices: book }).quote.cost,
    2 * dearestMinute, 'two minutes at the dearest per-minute price')

  // with a model named, its own price (or `*` for one the book does not know), as before
  t.equal(quote('chat', { model: 'gpt-4o', messages: agent.messages, max_tokens: 1000 }, { prices: book }).price?.model,
    '*')
})

t.test('a model-less call in a family with no price at all is refused', async (t) => {
  t.throws(() => quoteCall({ family: 'agents_completion', body: { agent_id: 'ag_1' },
    prices: shipped, currency: 'GBP', markupBps: 0 }), { code: 'model_not_priced' })
})

t.test('an unpriced model of any length is named in the error cut to 200 characters', async (t) => {
  const model = 'x'.repeat(100_000)
  const error = (() => {
    try {
      quote('chat', { model, messages: [{ role: 'user', content: 'Hi' }] })
    } catch (err) {
      return err as Error & { code: string }
    }
  })()
  t.equal(error?.code, 'model_not_priced')
  t.ok(error!.message.includes(`'${'x'.repeat(200)}…'`), 'the first 200 characters, and an ellipsis')
  t.ok(error!.message.length < 400, `a short message (${error!.message.length} characters)`)
})

t.test('a pages selection of any length is quoted at once: past a few thousand characters, at the most pages', async (t) => {
  const started = performance.now()
  const huge = quote('ocr', { model: 'mistral-ocr-latest', document: { type: 'document_url', document_url: 'https://x' },
    pages: '0,'.repeat(2_000_000) + '0' })
  const elapsed = performance.now() - started
  t.ok(elapsed < 50, `quoted in ${elapsed.toFixed(1)} ms`)
  t.equal(huge.quote.cost, pagesCost(1_000), 'reserved at 1,000 pages, the most a document has')
  t.equal(quote('ocr', { model: 'mistral-ocr-latest', pages: Array.from({ length: 100_000 }, () => 0) }).quote.cost,
    pagesCost(1_000), 'a list as long: the same')
})
