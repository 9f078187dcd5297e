import t from 'tap'
import { buildTestApp } from '../helpers/app.js'

// A URL Fastify's router cannot read (a broken percent-escape, a path parameter past its bound) is answered before any
// hook runs: it must still get the gateway's envelope, its request id and a request line (docs/errors.md).

const { app, logs, adminHeaders } = await buildTestApp(t)

const lineOf = (requestId: string) => logs.map((line) => JSON.parse(line))
  .find((line) => line.msg === 'request' && line.reqId === requestId)

for (const [where, url, headers] of [
  ['the proxy', '/v1/models/%E0%A4%A', {}],
  ['the admin API', '/admin/v1/workspaces/%zz', adminHeaders],
  ['self-service', '/tramontane/v1/usage/%zz', {}]
] as const) {
  t.test(`a broken percent-escape on ${where}: 400 invalid_request in the envelope`, async (t) => {
    const res = await app.inject({ method: 'GET', url, headers })
    const body = res.json()
    t.equal(res.statusCode, 400)
    t.match(body, { object: 'error', type: 'invalid_request_error', code: 'invalid_request', request_id: String })
    t.match(body.message, /percent-encoding/)
    t.equal(res.headers['x-request-id'], body.request_id, 'the request id, in the body and the header')
    t.match(lineOf(body.request_id), { status: 400 }, 'and a request line')
  })
}

t.test('a path parameter of 150 characters reaches its route (a model id may be 200)', async (t) => {
  const res = await app.inject({
    method: 'DELETE', url: `/admin/v1/prices/${'m'.repeat(150)}?currency=USD&family=chat`, headers: adminHeaders
  })
  t.not(res.statusCode, 414, 'not refused by the router')
  t.equal(res.json().code, 'not_found', 'the route answers: no such price')
})

t.test('a path parameter past 1024 characters: 400 in the envelope', async (t) => {
  const res = await app.inject({ method: 'DELETE', url: `/admin/v1/prices/${'m'.repeat(1025)}`, headers: adminHeaders })
  const body = res.json()
  t.equal(res.statusCode, 400)
  t.match(body, { code: 'invalid_request', message: /longer than 1024 characters/, request_id: String })
  t.equal(res.headers['x-request-id'], body.request_id)
})
