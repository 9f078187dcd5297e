import { existsSync } from 'node:fs'
import t from 'tap'
import { migrationsFolder } from '../../src/db/client.js'

t.test('the migrations folder is a file path, also under a folder whose name needs escaping in a URL', async (t) => {
  t.equal(migrationsFolder('file:///srv/My%20Projects/tram%C3%B3ntane/dist/src/db/client.js'),
    '/srv/My Projects/tramóntane/migrations', 'built: dist/src/db/ → the checkout root')
  t.equal(migrationsFolder('file:///srv/My%20Projects/tramontane/src/db/client.ts'),
    '/srv/My Projects/tramontane/migrations', 'from src/ (tsx)')
  t.ok(existsSync(`${migrationsFolder()}/meta/_journal.json`), 'this checkout\'s own is found')
})
