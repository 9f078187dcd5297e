import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'

// docs/errors.md lists every code the gateway answers with its status and type; this reads the code's own
// definitions (src/errors.ts's `define`, the `new GatewayError(...)` built elsewhere, the error handler's fallbacks)
// so that neither can change without the other.

const root = join(import.meta.dirname, '..', '..')
const CAP_KINDS = ['daily', 'monthly', 'lifetime']

function sources (dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) return sources(path)
    return path.endsWith('.ts') ? [path] : []
  })
}

/** `status type code` of every error the code can build. */
function codedErrors (): Set<string> {
  const found = new Set<string>()
  const text = sources(join(root, 'src')).map((path) => readFileSync(path, 'utf8')).join('\n')
  for (const [, status, type, code] of text.matchAll(/(?:define|new GatewayError)\((\d{3}), '([^']+)',\s*[`']([^'`]+)[`']/g)) {
    const codes = code === '${kind}_spend_cap_reached' ? CAP_KINDS.map((kind) => `${kind}_spend_cap_reached`) : [code]
    for (const each of codes) found.add(`${status} ${type} ${each}`)
  }
  // chosen at run time: a rate limit's code by its kind, and the error handler's own for what is not a GatewayError
  const admission = readFileSync(join(root, 'src/limits/admission.ts'), 'utf8')
  const handler = readFileSync(join(root, 'src/errors.ts'), 'utf8')
  for (const [file, marker, entry] of [
    [admission, "'concurrency_limit_exceeded' : 'rate_limit_exceeded'", '429 rate_limit_error concurrency_limit_exceeded'],
    [admission, "'concurrency_limit_exceeded' : 'rate_limit_exceeded'", '429 rate_limit_error rate_limit_exceeded'],
    [handler, "'payload_too_large' : 'invalid_request'", '413 invalid_request_error payload_too_large'],
    [handler, "code: 'internal_error'", '500 server_error internal_error']
  ]) {
    if (!file.includes(marker)) throw new Error(`the code no longer says ${marker}: update this test`)
    found.add(entry)
  }
  return found
}

/** `status type code` of every row of the docs' table. */
function documentedErrors (): Set<string> {
  const doc = readFileSync(join(root, 'docs/errors.md'), 'utf8')
  const rows = [...doc.matchAll(/^\| (\d{3}) \| `([^`]+)` \| `([^`]+)` \|/gm)]
  return new Set(rows.map(([, status, type, code]) => `${status} ${type} ${code}`))
}

t.test('docs/errors.md lists every error the code can answer, as the code answers it, and no other', async (t) => {
  const coded = codedErrors()
  const documented = documentedErrors()
  t.ok(coded.size >= 30, `the code's errors were found (${coded.size})`)
  t.same([...coded].filter((entry) => !documented.has(entry)).sort(), [], 'in the code, not in the docs')
  t.same([...documented].filter((entry) => !coded.has(entry)).sort(), [], 'in the docs, not in the code')
})
