import { sql } from 'drizzle-orm'
import t from 'tap'
import { SCRAPE_HEADERS, buildTestApp } from '../helpers/app.js'
import { parseExposition } from '../helpers/exposition.js'

// A workspace's time zone must be known to both Node (its spend periods) and PostgreSQL (its usage rollup, views and
// statements). A name only one of them knows is refused with a 400 that says which one lacks it; a zone stored before
// these checks, which PostgreSQL does not know, still has its usage read (in UTC days, as migration 0008 rolls it up).

const slug = () => `tz-${Math.random().toString(36).slice(2, 10)}`

// a link tzdata dropped in 2020, which ICU still takes (and resolves to America/Los_Angeles)
const NODE_ONLY = 'US/Pacific-New'
// a POSIX rule PostgreSQL reads (a zone named "America/Foo", 5 hours west), which no IANA database has
const POSTGRES_ONLY = 'America/Foo-5'

function nodeKnows (name: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: name }).format()
    return true
  } catch {
    return false
  }
}

t.test('a name Node knows and PostgreSQL does not: a 400 that says so and names the zone to use', async (t) => {
  const { admin, app } = await buildTestApp(t)
  const result = await app.database.db.execute(sql`select exists (select 1 from pg_timezone_names
    where name = ${NODE_ONLY}) as known`) as unknown as { rows: Array<{ known: boolean }> }
  if (result.rows[0].known || !nodeKnows(NODE_ONLY)) {
    t.pass(`${NODE_ONLY}: known to PostgreSQL, or unknown to Node, on this machine: nothing to refuse`)
    return
  }
  const created = await admin('POST', '/admin/v1/workspaces', { slug: slug(), name: 'z', timezone: NODE_ONLY })
  const ws = await admin('POST', '/admin/v1/workspaces', { slug: slug(), name: 'z' })
  const patched = await admin('PATCH', `/admin/v1/workspaces/${ws.json.slug}`, { timezone: NODE_ONLY })
  for (const [label, res] of [['POST', created], ['PATCH', patched]] as const) {
    t.equal(res.statusCode, 400, label)
    t.match(res.json, {
      object: 'error',
      code: 'invalid_request',
      param: 'timezone',
      message: `timezone '${NODE_ONLY}' is not in PostgreSQL's time zone data (pg_timezone_names), which the usage ` +
        'views and statements read: use America/Los_Angeles, the same zone'
    }, label)
  }
  t.equal((await admin('GET', `/admin/v1/workspaces/${ws.json.slug}`)).json.timezone, 'UTC', 'nothing was stored')
})

t.test('a name PostgreSQL takes and Node does not: a 400 too', async (t) => {
  const { admin, app } = await buildTestApp(t)
  await app.database.db.execute(sql`select now() at time zone ${POSTGRES_ONLY}`) // PostgreSQL reads it
  t.notOk(nodeKnows(POSTGRES_ONLY), 'Node does not')
  const ws = await admin('POST', '/admin/v1/workspaces', { slug: slug(), name: 'z' })
  for (const res of [
    await admin('POST', '/admin/v1/workspaces', { slug: slug(), name: 'z', timezone: POSTGRES_ONLY }),
    await admin('PATCH', `/admin/v1/workspaces/${ws.json.slug}`, { timezone: POSTGRES_ONLY })
  ]) {
    t.equal(res.statusCode, 400)
    t.match(res.json, { param: 'timezone', message: `timezone '${POSTGRES_ONLY}' is not an IANA time zone name` })
  }
})

t.test('a stored zone PostgreSQL does not know: the self-service usage and /me still answer', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  const res = await s.app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: ws.headers,
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] }
  })
  t.equal(res.statusCode, 200)
  await s.app.usage.flush()
  // stored before the admin API asked PostgreSQL (the token's cached context is dropped by the PATCH below)
  await s.app.database.db.execute(sql`update workspaces set timezone = ${NODE_ONLY} where id = ${ws.id}`)
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { name: 'renamed' })).statusCode, 200)
  const today = new Date().toISOString().slice(0, 10)
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10)
  const usage = await s.app.inject({ method: 'GET', url: '/tramontane/v1/usage?groupBy=day', headers: ws.headers })
  t.equal(usage.statusCode, 200, usage.body.slice(0, 300))
  t.equal(usage.json().totals.calls, 1)
  const me = await s.app.inject({ method: 'GET', url: '/tramontane/v1/me', headers: ws.headers })
  t.equal(me.statusCode, 200, me.body.slice(0, 300))
  t.equal(me.json().workspace.timezone, NODE_ONLY)
  const byDay = await s.app.inject({
    method: 'GET', url: `/tramontane/v1/usage?from=${today}&to=${tomorrow}&groupBy=day`, headers: ws.headers
  })
  t.equal(byDay.statusCode, 200, byDay.body.slice(0, 300))
  t.same(byDay.json().groups.map((group: { day: string, calls: number }) => [group.day, group.calls]), [[today, 1]],
    'the call, on its UTC day')
})

t.test('a stored zone this replica\'s Node does not know: capped calls are refused with a code that names it', async (t) => {
  const s = await buildTestApp(t)
  const ws = await s.createWorkspace()
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { caps: { monthly: '100' } })).statusCode, 200)
  // as a replica with older zone data than the one that stored it would find it (the PATCH drops the cached context)
  await s.app.database.db.execute(sql`update workspaces set timezone = ${POSTGRES_ONLY} where id = ${ws.id}`)
  t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { name: 'renamed' })).statusCode, 200)
  const sentBefore = s.mistral.received.length
  const res = await s.app.inject({
    method: 'POST', url: '/v1/chat/completions', headers: ws.headers,
    payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] }
  })
  t.equal(res.statusCode, 500)
  t.match(res.json(), {
    object: 'error',
    type: 'server_error',
    code: 'time_zone_unknown',
    message: `This replica's Node does not know the workspace's time zone '${POSTGRES_ONLY}', which its daily and ` +
      'monthly spend caps count in: the operator must set a zone every replica knows, or update Node on this one',
    request_id: res.headers['x-request-id']
  })
  t.equal(s.mistral.received.length, sentBefore, 'nothing went to Mistral')
  const logged = s.logs.map((line) => JSON.parse(line) as { level: number, reqId?: string, err?: { message?: string } })
    .find((line) => line.reqId === res.headers['x-request-id'] && line.level >= 50)
  t.match(logged?.err?.message, `time zone '${POSTGRES_ONLY}'`, 'logged as an error, with the zone')
  const scraped = await s.app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })
  const samples = parseExposition(scraped.body)
  t.same(samples.filter((sample) => sample.name === 'tramontane_rate_limit_denials_total' &&
    sample.labels.workspace === ws.slug), [], 'the gateway\'s own fault, not a call it refused: no denial counted')
  // what the caps have used is read in the same periods
  for (const res of [
    await s.app.inject({ method: 'GET', url: '/tramontane/v1/me', headers: ws.headers }),
    await s.app.inject({ method: 'GET', url: `/admin/v1/workspaces/${ws.slug}/limits`, headers: s.adminHeaders })
  ]) {
    t.same([res.statusCode, res.json().code], [500, 'time_zone_unknown'], res.body.slice(0, 300))
  }
})

t.test('a stored zone this replica\'s Node does not know, no daily or monthly cap: /me and the limits still answer',
  async (t) => {
    const s = await buildTestApp(t)
    const ws = await s.createWorkspace()
    t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
      { limits: { rpm: 60 }, caps: { lifetime: '100' } })).statusCode, 200)
    await s.app.database.db.execute(sql`update workspaces set timezone = ${POSTGRES_ONLY} where id = ${ws.id}`)
    t.equal((await s.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`, { name: 'renamed' })).statusCode, 200)
    const me = await s.app.inject({ method: 'GET', url: '/tramontane/v1/me', headers: ws.headers })
    t.equal(me.statusCode, 200, me.body.slice(0, 300))
    t.equal(me.json().workspace.timezone, POSTGRES_ONLY)
    t.match(me.json().limits.workspace, {
      limits: { rpm: { limit: 60, used: 0, remaining: 60 } },
      caps: { lifetime: { cap: '100.000000', settled: '0.000000', resetsAt: null } }
    })
    const limits = await s.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)
    t.equal(limits.statusCode, 200, JSON.stringify(limits.json).slice(0, 300))
    t.match(limits.json.workspace, { limits: { rpm: { limit: 60 } }, caps: { lifetime: { cap: '100.000000' } } })
    // nor do its calls need the zone: a sliding rpm and a lifetime cap count in no calendar period
    const call = await s.app.inject({
      method: 'POST', url: '/v1/chat/completions', headers: ws.headers,
      payload: { model: 'mistral-small-latest', messages: [{ role: 'user', content: 'Hello' }] }
    })
    t.equal(call.statusCode, 200, call.body.slice(0, 300))
    t.equal(call.headers['x-ratelimit-remaining-requests'], '59', 'counted against its rpm')
  })
