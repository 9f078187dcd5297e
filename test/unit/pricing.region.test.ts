import t from 'tap'
import { isRegionalHost } from '../../src/pricing/region.js'

t.test('the eu and us hosts are regional (billed 1.1×), the global host and anything else is not', async (t) => {
  t.equal(isRegionalHost('https://api.eu.mistral.ai'), true)
  t.equal(isRegionalHost('https://api.us.mistral.ai/'), true)
  t.equal(isRegionalHost('https://API.EU.MISTRAL.AI.'), true, 'case and a trailing dot do not matter')
  t.equal(isRegionalHost('https://api.mistral.ai'), false)
  t.equal(isRegionalHost('http://127.0.0.1:4010'), false)
  t.equal(isRegionalHost('https://api.eu.mistral.ai.example.com'), false, 'a look-alike host is not Mistral')
  t.equal(isRegionalHost('not a url'), false)
})
