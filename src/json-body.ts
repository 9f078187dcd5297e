import type { IncomingHttpHeaders } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { invalidJson } from './errors.js'

/**
 * JSON bodies for the routes of one plugin: an empty body is no body (clients send `content-type: application/json`
 * on a DELETE), and a malformed one is our 400, whose message never echoes the body.
 */
export function acceptJsonBodies (app: FastifyInstance, bodyLimit: number) {
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit }, (_request, text, done) => {
    if ((text as string).length === 0) return done(null, undefined)
    try {
      done(null, JSON.parse(text as string))
    } catch {
      done(invalidJson('The request body is not valid JSON'), undefined)
    }
  })
}

// an `application/…+json` media type, parameters or not
const JSON_SUFFIX = /^\s*application\/[^\s;/]+\+json\s*(;|$)/i

/**
 * Mistral (FastAPI) reads a body sent with no content type, or with an `application/…+json` one, as JSON
 * (fastapi/routing.py). For an operation that takes JSON the gateway reads it as JSON too, or it would meter a call
 * whose model and max_tokens it cannot see: its content type becomes `application/json`, before the body is parsed.
 */
export function readAsFastApiDoes (headers: IncomingHttpHeaders): void {
  const type = headers['content-type']
  if (type === undefined || JSON_SUFFIX.test(type)) headers['content-type'] = 'application/json'
}
