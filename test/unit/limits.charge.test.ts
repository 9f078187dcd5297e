import t from 'tap'
import { createAdmission } from '../../src/limits/admission.js'
import { createMemoryStore } from '../../src/limits/memory-store.js'
import { formatMoney } from '../../src/pricing/money.js'

// A batch job's charge (admission.charge) adds its cost to the spend caps' counters. A workspace without caps has
// none: its charge must not need the calendar of its time zone, which a replica with older zone data may not know.

// a POSIX rule PostgreSQL reads, which no IANA database has: Node does not know it
const UNKNOWN_ZONE = 'America/Foo-5'

function admission () {
  return createAdmission({
    store: createMemoryStore(),
    fallback: createMemoryStore(),
    ledger: { async spent () { return 0 }, async spentAmong () { return { spent: 0, recorded: [] } } },
    flushLedger: async () => {},
    log: { warn () {}, info () {}, error () {}, debug () {} } as never,
    formatMoney
  })
}

t.test('an uncapped workspace in a zone this Node does not know: its charge counts nowhere, and does not fail',
  async (t) => {
    const workspace = { id: 'w-uncapped', timezone: UNKNOWN_ZONE, caps: {} }
    await t.resolves(admission().charge({ id: 'batch-1', workspace, token: undefined, cost: 5, at: Date.now() }))
  })

t.test('a capped one: time_zone_unknown, as its calls get', async (t) => {
  const workspace = { id: 'w-capped', timezone: UNKNOWN_ZONE, caps: { monthly: 1_000_000 } }
  await t.rejects(admission().charge({ id: 'batch-2', workspace, token: undefined, cost: 5, at: Date.now() }),
    { code: 'time_zone_unknown', statusCode: 500 })
})

t.test('a lifetime cap alone counts in no calendar period: charged whatever the zone', async (t) => {
  const workspace = { id: 'w-lifetime', timezone: UNKNOWN_ZONE, caps: { lifetime: 1_000_000 } }
  await t.resolves(admission().charge({ id: 'batch-3', workspace, token: undefined, cost: 5, at: Date.now() }))
})
