import t from 'tap'
import { emptyUsage, type Usage } from '../../src/proxy/usage.js'
import { affordableOutputTokens, costOf, worstCaseMicros } from '../../src/pricing/cost.js'
import { completePrices, DEFAULT_PRICES, type PriceFamily, type UnitPrices } from '../../src/pricing/default-prices.js'

const usage = (fields: Partial<Usage>): Usage => ({ ...emptyUsage(), ...fields })
function shipped (model: string, family: PriceFamily, currency: 'USD' | 'EUR' = 'USD'): UnitPrices {
  const row = DEFAULT_PRICES.find((entry) => entry.model === model && entry.family === family)
  const partial = row?.prices[currency]
  if (!partial) throw new Error(`no ${currency} ${family} price for ${model}`)
  return completePrices(partial)
}

const small = shipped('mistral-small-2603', 'chat') // $0.15 in, $0.015 cached, $0.6 out per M
// 6000 uncached × 0.15 + 4000 cached × 0.015 + 2000 out × 0.6 per M = 900 + 60 + 1200 micro-units
const chatUsage = usage({ promptTokens: 10_000, cachedTokens: 4_000, completionTokens: 2_000 })

t.test('chat: uncached input, cached input at 10 %, output', async (t) => {
  t.same(small, { ...small, inputPerMTok: 150_000, cachedInputPerMTok: 15_000, outputPerMTok: 600_000 })
  t.same(costOf(chatUsage, small, { family: 'chat', markupBps: 0 }), { listMicros: 2160, billedMicros: 2160 })
  // FIM, agents and conversations are priced as chat
  for (const family of ['fim', 'agents_completion', 'conversation'] as const) {
    t.same(costOf(chatUsage, small, { family, markupBps: 0 }), { listMicros: 2160, billedMicros: 2160 }, family)
  }
  // more cached than prompt tokens (a bad report) never makes the uncached count negative
  t.same(costOf(usage({ promptTokens: 10, cachedTokens: 50 }), small, { family: 'chat', markupBps: 0 }),
    costOf(usage({ promptTokens: 10, cachedTokens: 10 }), small, { family: 'chat', markupBps: 0 }))
})

t.test('a third-party model uses its own cached price', async (t) => {
  const glm = shipped('zai-glm-5-2', 'chat', 'EUR')
  t.equal(glm.cachedInputPerMTok, 119_000)
  t.same(costOf(usage({ promptTokens: 1000, cachedTokens: 1000, completionTokens: 1000 }), glm,
    { family: 'chat', markupBps: 0 }), { listMicros: 119 + 3740, billedMicros: 119 + 3740 })
})

t.test('priority tier: 1.75× when the response says so', async (t) => {
  t.same(costOf(chatUsage, small, { family: 'chat', serviceTier: 'priority', markupBps: 0 }),
    { listMicros: 3780, billedMicros: 3780 })
  t.same(costOf({ ...chatUsage, serviceTier: 'priority' }, small, { family: 'chat', markupBps: 0 }),
    { listMicros: 3780, billedMicros: 3780 }, 'read from the usage when the options do not say')
  t.same(costOf(chatUsage, small, { family: 'chat', serviceTier: 'standard', markupBps: 0 }),
    { listMicros: 2160, billedMicros: 2160 })
})

t.test('batch 0.5× and regional 1.1×', async (t) => {
  t.equal(costOf(chatUsage, small, { family: 'chat', batch: true, markupBps: 0 }).listMicros, 1080)
  t.equal(costOf(chatUsage, small, { family: 'chat', regional: true, markupBps: 0 }).listMicros, 2376)
  t.equal(costOf(chatUsage, small, { family: 'chat', regional: true, serviceTier: 'priority', markupBps: 0 })
    .listMicros, 4158)
})

t.test('markup +20 %, discount -15 %, free', async (t) => {
  t.same(costOf(chatUsage, small, { family: 'chat', markupBps: 2000 }), { listMicros: 2160, billedMicros: 2592 })
  t.same(costOf(chatUsage, small, { family: 'chat', markupBps: -1500 }), { listMicros: 2160, billedMicros: 1836 })
  t.same(costOf(chatUsage, small, { family: 'chat', markupBps: -10_000 }), { listMicros: 2160, billedMicros: 0 })
  t.throws(() => costOf(chatUsage, small, { family: 'chat', markupBps: -10_001 }), RangeError)
  t.throws(() => costOf(chatUsage, small, { family: 'chat', markupBps: 1.5 }), RangeError)
})

t.test('one rounding, at the end, half up', async (t) => {
  const large = shipped('mistral-large-2512', 'chat') // $0.5 in, $1.5 out per M
  // 0.5 + 1.5 = 2 micro-units; rounding each line first would say 1 + 2 = 3
  const chat = { family: 'chat', markupBps: 0 } as const
  t.equal(costOf(usage({ promptTokens: 1, completionTokens: 1 }), large, chat).listMicros, 2)
  // exactly half a micro-unit rounds up
  t.equal(costOf(usage({ promptTokens: 1 }), large, { family: 'chat', markupBps: 0 }).listMicros, 1)
  // 12345 tokens × $0.1/M = 1234.5 micro-units → 1235
  const embed = shipped('mistral-embed-2312', 'embeddings')
  t.equal(costOf(usage({ promptTokens: 12_345 }), embed, { family: 'embeddings', markupBps: 0 }).listMicros, 1235)
  // 0.45 → 0
  t.equal(costOf(usage({ promptTokens: 3 }), small, { family: 'chat', markupBps: 0 }).listMicros, 0)
  // the markup applies to the exact list amount, not to the rounded one: 1234.5 × 1.1 = 1357.95 → 1358
  t.same(costOf(usage({ promptTokens: 12_345 }), embed, { family: 'embeddings', markupBps: 1000 }),
    { listMicros: 1235, billedMicros: 1358 })
})

t.test('embeddings, moderation and classification: prompt tokens at the input price', async (t) => {
  const codestralEmbed = shipped('codestral-embed-2505', 'embeddings')
  t.equal(costOf(usage({ promptTokens: 1_000_000, completionTokens: 99 }), codestralEmbed,
    { family: 'embeddings', markupBps: 0 }).listMicros, 150_000)
  const moderation = shipped('mistral-moderation-2411', 'moderation')
  t.equal(costOf(usage({ promptTokens: 20_000 }), moderation, { family: 'moderation', markupBps: 0 }).listMicros, 2000)
  t.equal(costOf(usage({ promptTokens: 20_000 }), moderation, { family: 'classification', markupBps: 0 })
    .listMicros, 2000)
  t.equal(costOf(usage({ promptTokens: 20_000 }), shipped('mistral-moderation-2603', 'moderation'),
    { family: 'moderation', markupBps: 2000 }).billedMicros, 0, 'Moderation 2 is free')
})

t.test('OCR: per page, annotated or not', async (t) => {
  const ocr = shipped('mistral-ocr-4-1', 'ocr') // $4 / $5 per 1000 pages
  t.same(costOf(usage({ pages: 7 }), ocr, { family: 'ocr', markupBps: 0 }),
    { listMicros: 28_000, billedMicros: 28_000 })
  t.same(costOf(usage({ pages: 7 }), ocr, { family: 'ocr', annotated: true, markupBps: 0 }),
    { listMicros: 35_000, billedMicros: 35_000 })
  const ocr3 = shipped('mistral-ocr-2512', 'ocr', 'EUR') // €1.75 / €2.63 per 1000 pages
  t.equal(costOf(usage({ pages: 3 }), ocr3, { family: 'ocr', annotated: true, markupBps: 0 }).listMicros, 7890)
})

t.test('transcription: per-minute price × seconds / 60', async (t) => {
  const mini = shipped('voxtral-mini-2602', 'transcription') // $0.003 / min
  t.equal(costOf(usage({ audioSeconds: 90 }), mini, { family: 'transcription', markupBps: 0 }).listMicros, 4500)
  t.equal(costOf(usage({ audioSeconds: 61 }), mini, { family: 'transcription', markupBps: 0 }).listMicros, 3050)
  t.equal(costOf(usage({ audioSeconds: 7, promptTokens: 500 }), mini, { family: 'transcription', markupBps: 0 })
    .listMicros, 350, 'tokens of a transcription are not billed')
  // voxtral-mini-2507 is two prices: by the minute as a transcription, audio + tokens as chat
  const asTranscription = shipped('voxtral-mini-2507', 'transcription') // $0.002 / min
  const asChat = shipped('voxtral-mini-2507', 'chat') // $0.001 / min + $0.04 / M tokens
  t.equal(costOf(usage({ audioSeconds: 45 }), asTranscription, { family: 'transcription', markupBps: 0 }).listMicros,
    1500)
  t.equal(costOf(usage({ audioSeconds: 45, promptTokens: 100_000, completionTokens: 50_000 }), asChat,
    { family: 'chat', markupBps: 0 }).listMicros, 750 + 4000 + 2000)
})

t.test('speech: per character', async (t) => {
  t.equal(costOf(usage({ characters: 1234 }), shipped('voxtral-mini-tts-2603', 'speech'),
    { family: 'speech', markupBps: 0 }).listMicros, 19_744) // $16 / M characters
  t.equal(costOf(usage({ characters: 1234 }), shipped('voxtral-mini-tts-2603', 'speech', 'EUR'),
    { family: 'speech', markupBps: 0 }).listMicros, 12_340) // €10 / M characters
})

t.test('worst case: every prompt token uncached, n choices at max_tokens each, the prompt paid once', async (t) => {
  t.equal(worstCaseMicros({ promptTokens: 1000, maxOutputTokens: 500, n: 2, price: small, markupBps: 0 }), 750)
  t.equal(worstCaseMicros({ promptTokens: 1000, maxOutputTokens: 500, n: 2, price: small, markupBps: 2000 }), 900)
  t.equal(worstCaseMicros({ promptTokens: 1000, maxOutputTokens: 500, price: small, markupBps: 0 }), 450, 'n = 1')
  t.equal(worstCaseMicros({ promptTokens: 1000, maxOutputTokens: 500, n: 2, price: small, markupBps: 0,
    priority: true }),
    1313) // 750 × 1.75 = 1312.5
})

t.test('affordable output tokens: the largest max_tokens whose worst case fits', async (t) => {
  // 180 for the prompt, 1.44 per output token (two choices, +20 %): (900 - 180) / 1.44 = 500
  t.equal(affordableOutputTokens(900, 1000, 2, small, 2000), 500)
  t.equal(affordableOutputTokens(100, 1000, 2, small, 2000), 0, 'not even the prompt fits')
  t.equal(affordableOutputTokens(0, 0, 1, small, 0), 0)
  t.equal(affordableOutputTokens(-5, 10, 1, small, 0), 0)
  t.equal(affordableOutputTokens(1000, 1000, 1, shipped('labs-leanstral-1-5', 'chat'), 0), Number.MAX_SAFE_INTEGER,
    'free output: no limit')
  t.equal(affordableOutputTokens(1000, 1000, 1, small, -10_000), Number.MAX_SAFE_INTEGER, 'a 100 % discount')

  // the round trip over many prices, prompts, markups and budgets: fits at the answer, not at one more
  const prices = DEFAULT_PRICES.filter((row) => row.family === 'chat').map((row) => completePrices(row.prices.USD))
  let seed = 42
  const next = (max: number) => {
    seed = (seed * 48_271) % 2_147_483_647 // MINSTD: the same cases on every run
    return seed % max
  }
  const failures: unknown[] = []
  let clamped = 0
  let refused = 0
  for (let i = 0; i < 2000; i++) {
    const price = prices[next(prices.length)]
    if (price.outputPerMTok === 0) continue
    const promptTokens = next(200_000)
    const n = 1 + next(4)
    const markupBps = next(6000) - 3000
    const priority = next(2) === 1
    const budget = next(1_000_000)
    const max = affordableOutputTokens(budget, promptTokens, n, price, markupBps, { priority })
    const worst = (tokens: number) =>
      worstCaseMicros({ promptTokens, maxOutputTokens: tokens, n, price, markupBps, priority })
    const holds = max === 0 ? worst(1) > budget : worst(max) <= budget && worst(max + 1) > budget
    if (!holds) failures.push({ price, promptTokens, n, markupBps, priority, budget, max })
    if (max === 0) refused++
    else clamped++
  }
  t.same(failures, [])
  t.ok(clamped > 100 && refused > 100, `both outcomes exercised (${clamped} clamped, ${refused} refused)`)
})
