import { readFileSync } from 'node:fs'
import t from 'tap'

// a script that runs the compiled gateway builds it first from a checkout: `dist/` is not in git, and a stale one would
// run the last build's code against this checkout's migrations (the image has no `src/`, and its `dist/` is current)
t.test('every npm script that runs dist/ builds it first', async (t) => {
  const { scripts } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as
    { scripts: Record<string, string> }
  const compiled = Object.keys(scripts).filter((name) => /\bnode\b.*\bdist\//.test(scripts[name]))
  t.ok(compiled.length >= 3, `start, db:migrate, keys:rewrap at least (${compiled.join(', ')})`)
  for (const name of compiled) {
    t.match(scripts[`pre${name}`] ?? '', /npm run build/, `${name} has a pre${name} that builds`)
  }
})
