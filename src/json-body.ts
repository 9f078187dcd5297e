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
