import { resolveSchema, strictRequestBody, type Schema } from '../../fixtures/mistral/request-fields.js'
import type { ValidationIssue } from './errors.js'

type Loc = Array<string | number>

/**
 * What pydantic would say of a JSON body on a strict route, in FastAPI's `detail` format: missing required fields and
 * `extra_forbidden` ones, at the top and inside (messages, tool calls, tools, content parts), for every object the
 * spec declares `additionalProperties: false`. Values are not checked against their types: only shapes, which is
 * where OpenAI clients and Mistral disagree. Routes without an entry accept anything.
 */
export function bodyIssues (method: string, route: string, body: unknown): ValidationIssue[] {
  // the fake's routes name their parameters as fastify does (`:id`), the spec's paths as OpenAPI does (`{id}`)
  const rules = strictRequestBody(`${method} ${route.replace(/:(\w+)/g, '{$1}')}`)
  if (!rules) return []
  if (body === undefined) return [{ type: 'missing', loc: ['body'], msg: 'Field required', input: null }]
  if (!isObject(body)) {
    return [{
      type: 'model_attributes_type',
      loc: ['body'],
      msg: 'Input should be a valid dictionary or object to extract fields from',
      input: body
    }]
  }
  const issues: ValidationIssue[] = []
  check(rules.schema, body, ['body'], issues)
  return issues
}

const TOOL_CALL_ID = /^[a-zA-Z0-9]{9}$/
const EXTRA_FORBIDDEN = 'Extra inputs are not permitted'

/**
 * What Mistral answers after validation passed, for a tool-call id not of its own form: the 400 with code 3280
 * (MISTRAL-NOTES §3.1), which is how a conversation started with OpenAI's `call_…` ids fails when sent as is.
 */
export function toolCallIdError (method: string, route: string, body: unknown): Record<string, unknown> | undefined {
  if (method !== 'POST' || (route !== '/v1/chat/completions' && route !== '/v1/agents/completions')) return undefined
  const messages = isObject(body) && Array.isArray(body.messages) ? body.messages : []
  for (const message of messages) {
    if (!isObject(message)) continue
    const ids = message.role === 'tool'
      ? [message.tool_call_id]
      : Array.isArray(message.tool_calls) ? message.tool_calls.map((call) => isObject(call) ? call.id : undefined) : []
    const bad = ids.find((id) => typeof id === 'string' && !TOOL_CALL_ID.test(id))
    if (bad !== undefined) {
      return {
        object: 'error',
        message: `Tool call id was ${String(bad)} but must be a-z, A-Z, 0-9, with a length of 9.`,
        type: 'invalid_function_call',
        param: null,
        code: '3280',
        raw_status_code: 400
      }
    }
  }
  return undefined
}

function check (raw: Schema, value: unknown, loc: Loc, issues: ValidationIssue[]): void {
  const schema = resolveSchema(raw)
  const union = schema.oneOf ?? schema.anyOf
  if (Array.isArray(union)) return checkUnion(schema, union, value, loc, issues)
  if (isObject(value) && (schema.properties !== undefined || schema.additionalProperties !== undefined)) {
    for (const field of schema.required ?? []) {
      if (!(field in value)) issues.push({ type: 'missing', loc: [...loc, field], msg: 'Field required', input: value })
    }
    const extra = schema.additionalProperties
    for (const [field, item] of Object.entries(value)) {
      const property = schema.properties?.[field]
      const at = [...loc, field]
      if (property !== undefined) check(property, item, at, issues)
      else if (extra === false) issues.push({ type: 'extra_forbidden', loc: at, msg: EXTRA_FORBIDDEN, input: item })
      else if (isObject(extra)) check(extra, item, at, issues)
    }
    return
  }
  if (Array.isArray(value) && isObject(schema.items)) {
    value.forEach((item, index) => check(schema.items as Schema, item, [...loc, index], issues))
  }
}

/**
 * A tagged union picks its branch by the tag (pydantic puts the tag in `loc`: `messages.0.user.name`); an untagged one
 * takes the first branch of the value's JSON type that raises nothing, else reports the first such branch's issues.
 */
function checkUnion (schema: Schema, branches: Schema[], value: unknown, loc: Loc, issues: ValidationIssue[]): void {
  const tagName = schema.discriminator?.propertyName
  if (tagName !== undefined && isObject(value) && value[tagName] !== undefined) {
    const mapping = schema.discriminator?.mapping ?? {}
    const tag = String(value[tagName])
    const target = mapping[tag]
    if (target === undefined) {
      const expected = Object.keys(mapping).map((name) => `'${name}'`).join(', ')
      issues.push({
        type: 'union_tag_invalid',
        loc,
        msg: `Input tag '${tag}' found using '${tagName}' does not match any of the expected tags: ${expected}`,
        input: value,
        ctx: { discriminator: `'${tagName}'`, tag, expected_tags: expected }
      })
      return
    }
    return check({ $ref: target }, value, [...loc, tag], issues)
  }
  const fitting = branches.filter((branch) => fits(resolveSchema(branch), value))
  if (fitting.length === 0) return
  let firstIssues: ValidationIssue[] | undefined
  for (const branch of fitting) {
    const found: ValidationIssue[] = []
    check(branch, value, loc, found)
    if (found.length === 0) return
    firstIssues ??= found
  }
  issues.push(...(firstIssues ?? []))
}

/** Whether a branch is of the value's JSON type; a branch that does not say is given the benefit of the doubt. */
function fits (schema: Schema, value: unknown): boolean {
  const kind = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value
  const declared = schema.type ?? (schema.const !== undefined ? typeof schema.const : undefined) ??
    (schema.properties !== undefined ? 'object' : schema.items !== undefined ? 'array' : undefined)
  if (declared === undefined) return true
  const types = Array.isArray(declared) ? declared : [declared]
  return types.some((type) => type === kind || (type === 'integer' && kind === 'number'))
}

function isObject (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}
