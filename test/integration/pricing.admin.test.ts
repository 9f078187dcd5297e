import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t from 'tap'
import { buildTestApp } from '../helpers/app.js'
import { createScratchDatabase } from '../helpers/database.js'

// model_prices is global, not per workspace, and tap runs files in parallel: these tests override a retired model
// nobody calls, or use random model names and XTS (the ISO 4217 code reserved for tests), and clean up after themselves
const RETIRED = 'magistral-small-2506' // shipped: $0.5 in, $1.5 out per M, USD only
const custom = () => `test-${randomBytes(5).toString('hex')}`

t.test('GET shows the effective book of a currency', async (t) => {
  const { admin } = await buildTestApp(t)
  const usd = await admin('GET', '/admin/v1/prices')
  t.equal(usd.statusCode, 200)
  t.equal(usd.json.currency, 'USD')
  t.same(usd.json.multipliers, { batchBps: 5000, priorityBps: 17_500, regionalBps: 11_000 })
  t.match(usd.json.data.find((row: { model: string }) => row.model === 'mistral-small-2603'), {
    family: 'chat', currency: 'USD', aliases: ['mistral-small-latest'], status: 'current', override: false,
    inputPerMTok: '0.150000', outputPerMTok: '0.600000', cachedInputPerMTok: '0.015000', updatedAt: null
  })
  const eurOcr = await admin('GET', '/admin/v1/prices?currency=EUR&family=ocr')
  t.equal(eurOcr.statusCode, 200)
  t.ok(eurOcr.json.data.length > 0)
  t.ok(eurOcr.json.data.every((row: { family: string, currency: string }) =>
    row.family === 'ocr' && row.currency === 'EUR'))
  t.equal((await admin('GET', '/admin/v1/prices?currency=usd')).statusCode, 400)
  t.equal((await admin('GET', '/admin/v1/prices?family=images')).statusCode, 400)
})

t.test('PUT overrides a shipped price, resolve uses it, DELETE restores the default; each change is audited',
  async (t) => {
    const { app, admin } = await buildTestApp(t)
    t.teardown(() => admin('DELETE', `/admin/v1/prices/${RETIRED}?currency=USD&family=chat`))
    const shipped = app.prices.resolve(RETIRED, 'chat', 'USD')
    t.match(shipped, { inputPerMTok: 500_000, outputPerMTok: 1_500_000, override: false })

    // an upper-case spelling writes the canonical row
    const put = await admin('PUT', `/admin/v1/prices/${RETIRED.toUpperCase()}`,
      { currency: 'USD', family: 'chat', inputPerMTok: '0.45', outputPerMTok: '1.234567', aliases: ['Magistral-Old'] })
    t.equal(put.statusCode, 200, put.body)
    t.match(put.json, {
      model: RETIRED, family: 'chat', currency: 'USD', override: true, status: 'retired', aliases: ['magistral-old'],
      inputPerMTok: '0.450000', outputPerMTok: '1.234567', cachedInputPerMTok: '0.045000', outputCeiling: 32_768
    })
    t.ok(put.json.updatedAt)

    const listed = await admin('GET', '/admin/v1/prices?currency=USD&family=chat')
    t.match(listed.json.data.find((row: { model: string }) => row.model === RETIRED),
      { override: true, inputPerMTok: '0.450000' })
    t.match(app.prices.resolve(RETIRED, 'chat', 'USD'),
      { inputPerMTok: 450_000, outputPerMTok: 1_234_567, cachedInputPerMTok: 45_000, override: true })
    t.equal(app.prices.resolve('MAGISTRAL-OLD', 'chat', 'USD'), app.prices.resolve(RETIRED, 'chat', 'USD'))

    const removed = await admin('DELETE', `/admin/v1/prices/${RETIRED}?currency=USD&family=chat`)
    t.equal(removed.statusCode, 204)
    t.match(app.prices.resolve(RETIRED, 'chat', 'USD'),
      { inputPerMTok: 500_000, outputPerMTok: 1_500_000, override: false })
    t.equal(app.prices.resolve('magistral-old', 'chat', 'USD'), undefined, 'the override alias went with it')
    t.equal((await admin('DELETE', `/admin/v1/prices/${RETIRED}?currency=USD&family=chat`)).statusCode, 404)

    const audit = await admin('GET', '/admin/v1/audit-log?limit=200')
    // newest first: the entries of this test's two changes
    const mine = audit.json.data.filter((entry: { targetId: string }) => entry.targetId === RETIRED)
    const update = mine.find((entry: { action: string }) => entry.action === 'model_price.update')
    const deletion = mine.find((entry: { action: string }) => entry.action === 'model_price.delete')
    t.match(update, { actor: 'admin', targetType: 'model_price', workspaceId: null, details: {
      currency: 'USD', family: 'chat', before: { inputPerMTok: '0.500000', override: false },
      after: { inputPerMTok: '0.450000', override: true }
    } })
    t.match(deletion, { details: { before: { override: true }, after: { inputPerMTok: '0.500000', override: false } } })
  })

t.test('custom models, fine-tunes and the * fallback', async (t) => {
  const { app, admin } = await buildTestApp(t)
  const model = custom()
  const ft = `ft:${model}:abc:20260801:def`
  t.teardown(async () => {
    await admin('DELETE', `/admin/v1/prices/${model}?currency=XTS&family=chat`)
    await admin('DELETE', '/admin/v1/prices/*?currency=XTS&family=chat')
    await admin('DELETE', `/admin/v1/prices/${encodeURIComponent(ft)}?currency=XTS&family=chat`)
  })
  t.equal(app.prices.resolve('anything', 'chat', 'XTS'), undefined)

  const created = await admin('PUT', `/admin/v1/prices/${model}`,
    { currency: 'XTS', family: 'chat', inputPerMTok: '2', outputPerMTok: '8', cachedInputPerMTok: '0.5',
      outputCeiling: 4096 })
  t.equal(created.statusCode, 200, created.body)
  t.match(created.json, { status: 'custom', override: true, cachedInputPerMTok: '0.500000', outputCeiling: 4096 })
  t.match(app.prices.resolve(`ft:${model}:abc:20260801:def`, 'chat', 'XTS'), { model, inputPerMTok: 2_000_000 })

  // a fine-tune can have its own price, which beats its base's
  t.equal((await admin('PUT', `/admin/v1/prices/${encodeURIComponent(ft)}`,
    { currency: 'XTS', family: 'chat', inputPerMTok: '3', outputPerMTok: '9' })).statusCode, 200)
  t.match(app.prices.resolve(ft, 'chat', 'XTS'), { model: ft, inputPerMTok: 3_000_000 })

  const fallback = await admin('PUT', '/admin/v1/prices/*',
    { currency: 'XTS', family: 'chat', inputPerMTok: '10', outputPerMTok: '30' })
  t.equal(fallback.statusCode, 200, fallback.body)
  t.match(app.prices.resolve('some-new-model', 'chat', 'XTS'), { model: '*', inputPerMTok: 10_000_000 })
  t.match(app.prices.resolve(model, 'chat', 'XTS'), { model }, 'a known model keeps its own price')
  t.equal(app.prices.resolve('some-new-model', 'embeddings', 'XTS'), undefined, 'a fallback is per family')
  t.equal((await admin('DELETE', '/admin/v1/prices/*?currency=XTS&family=chat')).statusCode, 204)
  t.equal(app.prices.resolve('some-new-model', 'chat', 'XTS'), undefined)
})

t.test('bad input: 400 with the field named, 409 on an alias that names another model', async (t) => {
  const { admin } = await buildTestApp(t)
  const model = custom()
  t.teardown(() => admin('DELETE', `/admin/v1/prices/${model}?currency=XTS&family=chat`))
  const base = { currency: 'XTS', family: 'chat', inputPerMTok: '1', outputPerMTok: '2' }
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ ...base, inputPerMTok: '-1' }, 'inputPerMTok'],
    [{ ...base, inputPerMTok: '0.1234567' }, 'inputPerMTok'],
    [{ ...base, outputPerMTok: '1e3' }, 'outputPerMTok'],
    [{ ...base, outputPerMTok: '' }, 'outputPerMTok'],
    [{ ...base, cachedInputPerMTok: ' 1' }, 'cachedInputPerMTok'],
    [{ ...base, outputPerMTok: 1e-7 }, 'outputPerMTok'],
    [{ ...base, outputPerMTok: '99999999999999' }, 'outputPerMTok'],
    [{ currency: 'XTS', family: 'chat', inputPerMTok: '1' }, 'outputPerMTok'],
    [{ currency: 'XTS', family: 'ocr', pagesPer1000: '1' }, 'annotatedPagesPer1000'],
    [{ ...base, currency: 'xts' }, 'currency'],
    [{ ...base, family: 'images' }, 'family'],
    [{ ...base, extra: '1' }, 'extra'],
    [{ ...base, outputCeiling: 0 }, 'outputCeiling'],
    [{ ...base, outputCeiling: null }, 'outputCeiling'],
    [{ ...base, aliases: ['has space'] }, 'aliases']
  ]
  for (const [body, field] of cases) {
    const res = await admin('PUT', `/admin/v1/prices/${model}`, body)
    t.equal(res.statusCode, 400, JSON.stringify(body))
    t.equal(res.json.type, 'invalid_request_error')
    t.match(res.json.message, field, `names ${field}: ${res.json.message}`)
  }
  t.equal((await admin('PUT', '/admin/v1/prices/bad%20name', base)).statusCode, 400)
  t.equal((await admin('PUT', '/admin/v1/prices/*', { ...base, aliases: ['x'] })).statusCode, 400)
  t.equal((await admin('DELETE', `/admin/v1/prices/${model}?currency=XTS`)).statusCode, 400, 'family is required')

  const taken = await admin('PUT', `/admin/v1/prices/${model}`, { ...base, aliases: ['mistral-small-latest'] })
  t.equal(taken.statusCode, 409)
  t.match(taken.json.message, 'mistral-small-2603')
  // a JSON number becomes its shortest decimal string: exact, or refused as above
  const numeric = await admin('PUT', `/admin/v1/prices/${model}`, { ...base, inputPerMTok: 0.1, outputPerMTok: 0.3 })
  t.equal(numeric.statusCode, 200, numeric.body)
  t.match(numeric.json, { inputPerMTok: '0.100000', outputPerMTok: '0.300000' })
})

t.test('only the admin token opens the prices API', async (t) => {
  const { app, createWorkspace } = await buildTestApp(t)
  const { headers } = await createWorkspace()
  for (const request of [
    { method: 'GET' as const, url: '/admin/v1/prices' },
    { method: 'PUT' as const, url: `/admin/v1/prices/${custom()}`, payload: { currency: 'XTS', family: 'chat' } },
    { method: 'DELETE' as const, url: `/admin/v1/prices/${RETIRED}?currency=USD&family=chat` }
  ]) {
    t.equal((await app.inject(request)).statusCode, 401, `${request.method} without a token`)
    t.equal((await app.inject({ ...request, headers })).statusCode, 401, `${request.method} with a workspace token`)
  }
})

t.test('a change on one replica reaches the others over the bus', async (t) => {
  const one = await buildTestApp(t)
  const two = await buildTestApp(t, {}, { mistral: one.mistral })
  const model = custom()
  t.teardown(() => one.admin('DELETE', `/admin/v1/prices/${model}?currency=XTS&family=embeddings`))
  t.equal(two.app.prices.resolve(model, 'embeddings', 'XTS'), undefined)
  const put = await one.admin('PUT', `/admin/v1/prices/${model}`,
    { currency: 'XTS', family: 'embeddings', inputPerMTok: '0.02' })
  t.equal(put.statusCode, 200, put.body)
  const deadline = Date.now() + 5000
  while (!two.app.prices.resolve(model, 'embeddings', 'XTS') && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.match(two.app.prices.resolve(model, 'embeddings', 'XTS'), { inputPerMTok: 20_000, override: true })
})

t.test('the routes are in the OpenAPI document', async (t) => {
  const { app } = await buildTestApp(t)
  const res = await app.inject({ method: 'GET', url: '/docs/json' })
  const paths = res.json().paths
  t.ok(paths['/admin/v1/prices'].get)
  t.ok(paths['/admin/v1/prices/{model}'].put)
  t.ok(paths['/admin/v1/prices/{model}'].delete)
})

t.test('a price change whose audit entry cannot be written does not happen', async (t) => {
  // a database of its own: the trigger below refuses audit rows, which other tests write on the shared one
  const databaseUrl = await createScratchDatabase(t)
  const { app, admin } = await buildTestApp(t, { DATABASE_URL: databaseUrl })
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query(`create function refuse_audit () returns trigger language plpgsql as $$
    begin raise exception 'the test refuses this audit row'; end $$`)
  const refusing = async (action: string, change: () => Promise<{ statusCode: number }>) => {
    await client.query(`create trigger refuse_audit before insert on audit_log for each row
      when (new.action = '${action}') execute function refuse_audit()`)
    try {
      return (await change()).statusCode
    } finally {
      await client.query('drop trigger refuse_audit on audit_log')
    }
  }
  const put = () => admin('PUT', `/admin/v1/prices/${RETIRED}`,
    { currency: 'USD', family: 'chat', inputPerMTok: '0.45', outputPerMTok: '1.25' })
  const remove = () => admin('DELETE', `/admin/v1/prices/${RETIRED}?currency=USD&family=chat`)
  const overrides = async () => (await client.query('select model from model_prices')).rows

  t.equal(await refusing('model_price.update', put), 500)
  t.same(await overrides(), [], 'no override was stored')
  t.match(app.prices.resolve(RETIRED, 'chat', 'USD'), { inputPerMTok: 500_000, override: false }, 'nor served')

  t.equal((await put()).statusCode, 200)
  t.equal(await refusing('model_price.delete', remove), 500)
  t.same(await overrides(), [{ model: RETIRED }], 'the override was not removed')
  t.match(app.prices.resolve(RETIRED, 'chat', 'USD'), { inputPerMTok: 450_000, override: true }, 'and still serves')
  const actions = ((await admin('GET', '/admin/v1/audit-log')).json.data as Array<{ action: string }>)
    .map((entry) => entry.action)
  t.same(actions, ['model_price.update'], 'the audit log holds the change made, and only it')
})

t.test('a committed change whose reload fails is still answered, announced, and reloaded once it can be', async (t) => {
  // a database of its own: the trigger below hides model_prices from every reader once the change commits, so that
  // the reload that follows the commit fails as if PostgreSQL had gone away in between
  const databaseUrl = await createScratchDatabase(t)
  const one = await buildTestApp(t, { DATABASE_URL: databaseUrl })
  const two = await buildTestApp(t, { DATABASE_URL: databaseUrl }, { mistral: one.mistral })
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  t.teardown(() => client.end())
  await client.query(`create function hide_prices () returns trigger language plpgsql as $$
    begin alter table model_prices rename to model_prices_hidden; return new; end $$`)
  const reloadFailing = async (action: string, change: () => Promise<{ statusCode: number, json: any }>) => {
    await client.query(`create trigger hide_prices after insert on audit_log for each row
      when (new.action = '${action}') execute function hide_prices()`)
    try {
      return await change()
    } finally {
      await client.query('drop trigger hide_prices on audit_log')
      await client.query('alter table if exists model_prices_hidden rename to model_prices')
    }
  }
  const served = async (want: (app: typeof one.app) => boolean) => {
    const deadline = Date.now() + 12_000
    while (!(want(one.app) && want(two.app)) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    return [want(one.app), want(two.app)]
  }
  const model = custom()
  const priced = (app: typeof one.app) => app.prices.resolve(model, 'embeddings', 'XTS')?.inputPerMTok === 20_000

  const put = await reloadFailing('model_price.update', () => one.admin('PUT', `/admin/v1/prices/${model}`,
    { currency: 'XTS', family: 'embeddings', inputPerMTok: '0.02' }))
  t.equal(put.statusCode, 200, 'the change is committed: it is answered as such')
  t.match(put.json, { model, currency: 'XTS', family: 'embeddings', inputPerMTok: '0.020000', override: true },
    'with the price committed')
  t.same(await served(priced), [true, true], 'both replicas serve it once the book can be read again')

  const removed = await reloadFailing('model_price.delete',
    () => one.admin('DELETE', `/admin/v1/prices/${model}?currency=XTS&family=embeddings`))
  t.equal(removed.statusCode, 204)
  t.same(await served((app) => !priced(app)), [true, true], 'and both stop serving it once it is removed')
  const actions = ((await one.admin('GET', '/admin/v1/audit-log')).json.data as Array<{ action: string }>)
    .map((entry) => entry.action).sort()
  t.same(actions, ['model_price.delete', 'model_price.update'], 'each change was audited once')
})
