import type { IncomingHttpHeaders } from 'node:http'
import t from 'tap'
import { downstreamHeaders, upstreamHeaders } from '../../src/proxy/headers.js'

const CLIENT_TOKEN = 'tmt_CanaryCanaryCanaryCanaryCanaryCanaryCanaryCan01'
const MISTRAL_KEY = 'mk-0123456789abcdefABCDEF'

// what reaches the gateway from the Mistral SDK, the OpenAI SDK, a reverse proxy and a browser, all at once
const clientHeaders = (): IncomingHttpHeaders => ({
  host: 'gateway.example.com',
  connection: 'keep-alive',
  'keep-alive': 'timeout=5',
  'proxy-authorization': `Basic ${CLIENT_TOKEN}`,
  'proxy-connection': 'keep-alive',
  te: 'trailers',
  trailer: 'x-checksum',
  'transfer-encoding': 'chunked',
  upgrade: 'h2c',
  expect: '100-continue',
  authorization: `Bearer ${CLIENT_TOKEN}`,
  'x-api-key': CLIENT_TOKEN,
  cookie: `session=${CLIENT_TOKEN}; theme=dark`,
  'x-tramontane-key': 'prod',
  'x-tramontane-token': CLIENT_TOKEN,
  'x-stainless-lang': 'js',
  'x-stainless-package-version': '6.49.0',
  'x-stainless-retry-count': '0',
  forwarded: 'for=203.0.113.7;proto=https',
  'x-forwarded-for': '203.0.113.7, 10.0.0.2',
  'x-forwarded-host': 'gateway.example.com',
  'x-forwarded-proto': 'https',
  'x-forwarded-port': '443',
  'x-real-ip': '203.0.113.7',
  via: '1.1 nginx',
  'x-request-id': 'req-client-123',
  'accept-encoding': 'gzip, deflate, br',
  'openai-organization': 'org-abc',
  'openai-project': 'proj-abc',
  'content-type': 'application/json',
  'content-length': '123',
  accept: 'text/event-stream',
  'user-agent': 'speakeasy-sdk/typescript 2.6.1 2.884.13 1.0.0 @mistralai/mistralai',
  'mistral-correlation-id': 'corr-42',
  'x-affinity': 'session-7'
})

const STRIPPED = ['host', 'connection', 'keep-alive', 'proxy-authorization', 'proxy-connection', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'expect', 'cookie', 'x-api-key', 'x-tramontane-key', 'x-tramontane-token',
  'x-stainless-lang', 'x-stainless-package-version', 'x-stainless-retry-count', 'forwarded', 'x-forwarded-for',
  'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port', 'x-real-ip', 'via', 'x-request-id', 'accept-encoding',
  'openai-organization', 'openai-project']

t.test('upstream: only the allowed client headers and the Mistral key go to Mistral', async (t) => {
  const headers = upstreamHeaders(clientHeaders(), MISTRAL_KEY, false)
  t.same(headers, {
    'content-type': 'application/json',
    accept: 'text/event-stream',
    'user-agent': 'speakeasy-sdk/typescript 2.6.1 2.884.13 1.0.0 @mistralai/mistralai',
    'mistral-correlation-id': 'corr-42',
    'x-affinity': 'session-7',
    authorization: `Bearer ${MISTRAL_KEY}`
  })
  for (const name of STRIPPED) t.notOk(name in headers, `${name} is stripped`)
})

t.test('upstream: the client token appears nowhere in the output', async (t) => {
  for (const keepLength of [true, false]) {
    const headers = upstreamHeaders(clientHeaders(), MISTRAL_KEY, keepLength)
    const text = JSON.stringify(headers)
    t.notOk(text.includes(CLIENT_TOKEN), `keepLength ${keepLength}: no canary`)
    t.notOk(text.includes('Canary'), `keepLength ${keepLength}: not even part of it`)
    t.ok(text.includes(MISTRAL_KEY), `keepLength ${keepLength}: the Mistral key is there`)
  }
})

t.test('upstream: the Mistral key replaces any authorization, with or without one from the client', async (t) => {
  t.equal(upstreamHeaders({ authorization: `Bearer ${CLIENT_TOKEN}` }, MISTRAL_KEY, true).authorization,
    `Bearer ${MISTRAL_KEY}`)
  t.same(upstreamHeaders({}, MISTRAL_KEY, true), { authorization: `Bearer ${MISTRAL_KEY}` })
  t.same(upstreamHeaders({}, MISTRAL_KEY, true, 'AdminApiKey'), { authorization: `Bearer ${MISTRAL_KEY}` })
})

t.test('upstream: a DashboardUserContextAuth route gets the key in x-api-key, never the client\'s', async (t) => {
  t.same(upstreamHeaders({ authorization: `Bearer ${CLIENT_TOKEN}`, 'x-api-key': 'client-key' }, MISTRAL_KEY, true,
    'DashboardUserContextAuth'), { 'x-api-key': MISTRAL_KEY })
})

t.test('upstream: content-length is kept only when the body is relayed as received', async (t) => {
  t.equal(upstreamHeaders(clientHeaders(), MISTRAL_KEY, true)['content-length'], '123')
  t.notOk('content-length' in upstreamHeaders(clientHeaders(), MISTRAL_KEY, false))
  const kept = upstreamHeaders(clientHeaders(), MISTRAL_KEY, true)
  t.same(Object.keys(kept).sort(), ['accept', 'authorization', 'content-length', 'content-type',
    'mistral-correlation-id', 'user-agent', 'x-affinity'])
})

t.test('upstream: every x-tramontane-*, x-stainless-* and proxy-* header goes, lookalikes stay', async (t) => {
  const headers = upstreamHeaders({
    'x-tramontane-anything': '1',
    'x-stainless-os': 'Linux',
    'x-stainless-arch': 'x64',
    'x-stainless-runtime': 'node',
    'proxy-foo': '1',
    'x-tramontanes': 'kept: not the prefix',
    'x-stainless': 'kept: no dash',
    'x-custom-tramontane-x': 'kept'
  }, MISTRAL_KEY, true)
  t.same(headers, {
    'x-tramontanes': 'kept: not the prefix',
    'x-stainless': 'kept: no dash',
    'x-custom-tramontane-x': 'kept',
    authorization: `Bearer ${MISTRAL_KEY}`
  })
})

t.test('upstream: multi-valued headers pass as arrays, undefined values are dropped', async (t) => {
  const headers = upstreamHeaders({ 'x-tag': ['a', 'b'], 'x-undefined': undefined, accept: 'application/json' },
    MISTRAL_KEY, true)
  t.same(headers, { 'x-tag': ['a', 'b'], accept: 'application/json', authorization: `Bearer ${MISTRAL_KEY}` })
})

t.test('upstream: the input is left untouched', async (t) => {
  const input = clientHeaders()
  upstreamHeaders(input, MISTRAL_KEY, false)
  t.same(input, clientHeaders())
})

// BUG (see report): RFC 9110 §7.6.1, which headers.ts cites, makes every field named in Connection hop-by-hop too
t.test('upstream: fields named in Connection are stripped',
  async (t) => {
    const headers = upstreamHeaders({ connection: 'close, x-session-secret', 'x-session-secret': CLIENT_TOKEN },
      MISTRAL_KEY, true)
    t.notOk('x-session-secret' in headers)
    t.notOk(JSON.stringify(headers).includes(CLIENT_TOKEN))
  })

// what Mistral sends back (MISTRAL-NOTES §3.1, §3.3)
const mistralHeaders = (): Record<string, string | string[] | undefined> => ({
  'content-type': 'application/json',
  'content-length': '512',
  connection: 'keep-alive',
  'keep-alive': 'timeout=5',
  'transfer-encoding': 'chunked',
  trailer: 'x-checksum',
  upgrade: 'h2c',
  'proxy-authenticate': 'Basic',
  'set-cookie': ['__cf_bm=abc; path=/; HttpOnly', '_cfuvid=def; path=/'],
  'x-request-id': 'mistral-req-1',
  'mistral-correlation-id': '01927b7a-7a7a-7a7a-7a7a-7a7a7a7a7a7a',
  'x-ratelimit-limit-tokens-minute': '5000000',
  'x-ratelimit-remaining-tokens-minute': '4999911',
  'x-ratelimit-tokens-query-cost': '52',
  'x-ratelimit-limit-req-minute': '720',
  'x-ratelimit-remaining-req-minute': '717',
  'x-kong-request-id': 'kong-1',
  'x-envoy-upstream-service-time': '120',
  'retry-after': '3',
  'x-missing': undefined
})

t.test('downstream: hop-by-hop, set-cookie and x-request-id are dropped, the rest is kept', async (t) => {
  t.same(downstreamHeaders(mistralHeaders()), {
    'content-type': 'application/json',
    'content-length': '512',
    'mistral-correlation-id': '01927b7a-7a7a-7a7a-7a7a-7a7a7a7a7a7a',
    'x-ratelimit-limit-tokens-minute': '5000000',
    'x-ratelimit-remaining-tokens-minute': '4999911',
    'x-ratelimit-tokens-query-cost': '52',
    'x-ratelimit-limit-req-minute': '720',
    'x-ratelimit-remaining-req-minute': '717',
    'x-kong-request-id': 'kong-1',
    'x-envoy-upstream-service-time': '120',
    'retry-after': '3'
  })
})

t.test('downstream: no cookie of Cloudflare\'s reaches the client', async (t) => {
  const headers = downstreamHeaders(mistralHeaders())
  t.notOk('set-cookie' in headers)
  t.notOk(JSON.stringify(headers).includes('__cf_bm'))
  t.notOk(JSON.stringify(headers).includes('_cfuvid'))
  t.notOk('x-request-id' in headers, 'the gateway sets its own request id')
})

t.test('downstream: an SSE reply keeps its content type', async (t) => {
  t.same(downstreamHeaders({ 'content-type': 'text/event-stream; charset=utf-8', 'transfer-encoding': 'chunked' }),
    { 'content-type': 'text/event-stream; charset=utf-8' })
  t.same(downstreamHeaders({}), {})
})
