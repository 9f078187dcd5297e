import t from 'tap'
import { checkServerVersion } from '../../src/db/client.js'

// migration 0003 declares UNIQUE NULLS NOT DISTINCT, which PostgreSQL parses from 15 on: on 13 or 14 the gateway
// would stop at a syntax error in the middle of its migrations
t.test('PostgreSQL 15 or later is accepted; an older server is refused before any migration, saying why', async (t) => {
  for (const [num, version] of [['150000', '15.0'], ['160004', '16.4 (Debian 16.4-1.pgdg120+2)'], ['180006', '18.6']]) {
    t.doesNotThrow(() => checkServerVersion(num, version), version)
  }
  for (const [num, version] of [['140012', '14.12 (Ubuntu 14.12-0ubuntu0.22.04.1)'], ['130020', '13.20'],
    ['90624', '9.6.24'], ['', 'unknown']]) {
    t.throws(() => checkServerVersion(num, version), {
      message: `PostgreSQL ${version} is too old: tramontane needs PostgreSQL 15 or later (its migrations use ` +
        'UNIQUE NULLS NOT DISTINCT). Upgrade the server DATABASE_URL points to, or leave DATABASE_URL unset to ' +
        'run on the embedded PostgreSQL'
    }, version)
  }
})
