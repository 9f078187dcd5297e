import type { FastifyReply } from 'fastify'

/** One entry of a FastAPI/pydantic 422, the spec's `HTTPValidationError` (MISTRAL-NOTES §3.1). */
export interface ValidationIssue {
  type: string
  loc: Array<string | number>
  msg: string
  input: unknown
  ctx?: Record<string, unknown>
}

/** Thrown where a reply can't be sent directly (a body parser); the error handler turns it into a FastAPI 422. */
export class ValidationFailure extends Error {
  readonly statusCode = 422
  constructor (readonly detail: ValidationIssue[]) {
    super(detail.map((issue) => issue.msg).join('; '))
  }
}

export function invalidJson (): ValidationFailure {
  return new ValidationFailure([
    { type: 'json_invalid', loc: ['body', 0], msg: 'JSON decode error', input: {}, ctx: { error: 'Expecting value' } }
  ])
}

/** Resource lookups fail the FastAPI way, `{"detail": "..."}`, as `{"detail":"Not Found"}` does for unknown paths. */
export function sendNotFound (reply: FastifyReply, detail: string): FastifyReply {
  return reply.code(404).send({ detail })
}
