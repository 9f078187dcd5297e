import t from 'tap'
import { buildTestApp } from '../helpers/app.js'

// A client that puts its workspace token in a URL (`?token=`, or OAuth's `?access_token=`, RFC 6750 §2.3) leaks it to
// every proxy, access log and browser history on the way: the self-service routes refuse it with a 400 that says to
// use the Authorization header, and the value is never echoed nor logged.

t.test('a token in the query is refused, with or without the Authorization header, and never echoed or logged',
  async (t) => {
    const { app, logs, createWorkspace } = await buildTestApp(t)
    const ws = await createWorkspace()
    // the live token is the canary: its absence below means something
    const canary = ws.token
    const asked: Array<[string, Record<string, string>]> = [
      [`/tramontane/v1/usage?token=${canary}`, ws.headers],
      [`/tramontane/v1/usage?groupBy=model&token=${canary}&format=csv`, ws.headers],
      [`/tramontane/v1/me?token=${canary}`, ws.headers],
      [`/tramontane/v1/me?access_token=${canary}`, ws.headers],
      // no header: the token is only in the URL, and the client is told where it belongs rather than a bare 401
      [`/tramontane/v1/usage?token=${canary}`, {}],
      [`/tramontane/v1/me?access_token=${canary}`, {}],
      // not even a token: the parameter is refused whatever it holds (the view is always the caller's own)
      [`/tramontane/v1/usage?token=${ws.tokenId}`, ws.headers]
    ]
    for (const [url, headers] of asked) {
      const res = await app.inject({ method: 'GET', url, headers })
      const label = url.replace(canary, 'CANARY')
      t.equal(res.statusCode, 400, label)
      let json: unknown
      try { json = res.json() } catch {}
      t.match(json, {
        object: 'error',
        type: 'invalid_request_error',
        code: 'invalid_request',
        param: /^(access_)?token$/,
        message: /Authorization header/,
        request_id: res.headers['x-request-id'],
        error: { code: 'invalid_request', message: /Authorization header/ }
      }, label)
      t.notOk(res.body.includes(canary), `${label}: the token is not in the body`)
      t.notOk(JSON.stringify(res.headers).includes(canary), `${label}: nor in a header`)
    }
    const logText = logs.join('')
    t.ok(logText.includes('/tramontane/v1/usage'), 'request lines were written')
    t.notOk(logText.includes(canary), 'the token is in no log line')
    t.notOk(logText.includes(canary.slice(12)), 'nor any long part of it')

    const fine = await app.inject({ method: 'GET', url: '/tramontane/v1/usage?groupBy=model', headers: ws.headers })
    t.equal(fine.statusCode, 200, 'a query without it is served')
  })
