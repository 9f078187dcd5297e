import pg from 'pg'
import t from 'tap'
import { TEST_DATABASE_URL, buildTestApp } from '../helpers/app.js'

// A workspace's time zone is checked with Node's zone data (its spend periods) and used by PostgreSQL (the ledger's
// daily rollups): a name one knows and the other does not would fail every ledger insert holding the workspace's
// records, and one they read differently would split its periods in two.

t.test('every zone Node lists is one PostgreSQL knows', async (t) => {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await client.connect()
  t.teardown(() => client.end())
  const names = [...Intl.supportedValuesOf('timeZone'), 'UTC', 'Etc/GMT+5', 'Asia/Calcutta', 'US/Eastern']
  const { rows } = await client.query(
    'select z from unnest($1::text[]) z where not exists (select 1 from pg_timezone_names where name = z)', [names])
  t.same(rows.map((row) => row.z), [], `all ${names.length} known to PostgreSQL`)
})

t.test('a workspace takes an IANA name or UTC, on creation and on a PATCH', async (t) => {
  const { admin } = await buildTestApp(t)
  for (const timezone of ['UTC', 'Etc/GMT+5', 'America/Argentina/Buenos_Aires', 'Asia/Kolkata']) {
    const created = await admin('POST', '/admin/v1/workspaces', {
      slug: `tz-${Math.random().toString(36).slice(2, 10)}`, name: 'zones', timezone
    })
    t.equal(created.statusCode, 201, timezone)
    t.equal(created.json.timezone, timezone)
  }
  const patched = await admin('POST', '/admin/v1/workspaces', { slug: `tz-${Math.random().toString(36).slice(2, 10)}`, name: 'z' })
  const refused = await admin('PATCH', `/admin/v1/workspaces/${patched.json.slug}`, { timezone: 'IST' })
  t.equal(refused.statusCode, 400, 'a PATCH is checked alike')
  t.equal(refused.json.param, 'timezone')
})

t.test('a name Node knows and PostgreSQL does not is refused', async (t) => {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await client.connect()
  t.teardown(() => client.end())
  const name = 'US/Pacific-New' // a link tzdata dropped in 2020, which ICU still takes
  const { rows } = await client.query('select exists (select 1 from pg_timezone_names where name = $1) as known', [name])
  let nodeKnows = true
  try {
    new Intl.DateTimeFormat('en', { timeZone: name }).format()
  } catch {
    nodeKnows = false
  }
  if (rows[0].known || !nodeKnows) {
    t.pass(`${name}: known to PostgreSQL, or unknown to Node, on this machine: nothing to refuse`)
    return
  }
  const { admin } = await buildTestApp(t)
  const refused = await admin('POST', '/admin/v1/workspaces', { slug: `tz-${Math.random().toString(36).slice(2, 10)}`, name: 'z', timezone: name })
  t.equal(refused.statusCode, 400)
  t.equal(refused.json.param, 'timezone')
})
