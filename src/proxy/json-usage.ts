import { readModel, readUsage, type Usage } from './usage.js'

/** What a whole JSON answer says about the call (undefined: the body is not JSON). */
export interface JsonFacts {
  usage: Usage | undefined
  model: string | undefined
}

// below this a body is parsed whole: a chat answer is a few kB, and parsing it is cheaper than being clever
const PARSE_WHOLE_BYTES = 64 * 1024
const QUOTE = 0x22
const BACKSLASH = 0x5c
const COLON = 0x3a

/**
 * The usage and model of a JSON answer. A large one (embeddings: 16 inputs make about 150 kB of floats; OCR pages) is not
 * parsed whole: its `usage` (`usage_info`) and `model` members sit at one end of it, before or after the bulk, and are
 * read there. Where they cannot be found so, the body is parsed whole.
 */
export function readJsonFacts (body: Buffer): JsonFacts | undefined {
  if (body.length > PARSE_WHOLE_BYTES) {
    const facts = memberFacts(body)
    if (facts) return facts
  }
  let payload: unknown
  try {
    payload = JSON.parse(body.toString('utf8'))
  } catch {
    return undefined
  }
  return { usage: readUsage(payload), model: readModel(payload) }
}

/**
 * The usage and model of a JSON answer too large to keep (over the JSON tap's limit: OCR with its page images), from
 * its first and last bytes alone, of the same length: each member is looked for on its side of the join, as
 * `topLevelMember` checks the shorter side. Undefined where they are not found so.
 */
export function readJsonEdgeFacts (head: Buffer, tail: Buffer): JsonFacts | undefined {
  if (head.length !== tail.length) throw new RangeError('the two ends must be of one length')
  return memberFacts(Buffer.concat([head, tail]))
}

function memberFacts (body: Buffer): JsonFacts | undefined {
  // an object, from its first byte to its last: anything else is left to the whole parse
  if (body[skipSpace(body, 0)] !== 0x7b || lastByte(body) !== 0x7d) return undefined
  const model = topLevelMember(body, '"model"')
  if (model === undefined || model === UNSURE || body[model.start] !== QUOTE) return undefined
  const payload: Record<string, unknown> = {}
  try {
    payload.model = JSON.parse(body.toString('utf8', model.start, model.end))
    for (const name of ['usage', 'usage_info']) {
      const member = topLevelMember(body, `"${name}"`)
      if (member === UNSURE) return undefined
      if (member) payload[name] = JSON.parse(body.toString('utf8', member.start, member.end))
    }
  } catch {
    return undefined
  }
  return { usage: readUsage(payload), model: readModel(payload) }
}

const UNSURE = 'unsure'

/**
 * Where the value of a member of the top-level object lies, found without walking the whole body: its key's last or
 * first occurrence (the last wins, as in JSON.parse), checked against the shorter side of the body (from the start up
 * to the key, or from the value to the end) to be at depth one. A quoted name followed by `:` can only be a key: a
 * quote inside a string is escaped. Undefined when the name is nowhere; UNSURE when it occurs more than twice, or
 * where neither occurrence is at depth one (the member could be between them).
 */
function topLevelMember (body: Buffer, quotedName: string): { start: number, end: number } | undefined | typeof UNSURE {
  const first = body.indexOf(quotedName)
  if (first === -1) return undefined
  const last = body.lastIndexOf(quotedName)
  if (first !== last && body.indexOf(quotedName, first + 1) !== last) return UNSURE
  for (const key of first === last ? [first] : [last, first]) {
    if (key === 0 || body[key - 1] === BACKSLASH) continue
    let start = skipSpace(body, key + quotedName.length)
    if (body[start] !== COLON) continue
    start = skipSpace(body, start + 1)
    const end = valueEnd(body, start)
    if (end === -1) continue
    const atDepthOne = key < body.length / 2
      ? depthAfter(body, 0, key, 0) === 1
      : closesLast(body, end)
    if (atDepthOne) return { start, end }
  }
  return UNSURE
}

/** The end (exclusive) of the string, object, array or scalar starting at `start`; -1 when it does not end. */
function valueEnd (body: Buffer, start: number): number {
  const first = body[start]
  if (first === QUOTE) {
    for (let at = start + 1; at < body.length; at++) {
      if (body[at] === BACKSLASH) at++
      else if (body[at] === QUOTE) return at + 1
    }
    return -1
  }
  if (first === 0x7b || first === 0x5b) return depthAfter(body, start, body.length, 0, true)
  let at = start
  while (at < body.length && body[at] !== 0x2c && body[at] !== 0x7d && body[at] !== 0x5d && !isSpace(body[at])) at++
  return at
}

/**
 * Walks `body[from, to)` from `depth`, strings and their escapes skipped. Returns the depth at `to` (-1 if a string is
 * still open there, or the depth fell below zero); with `untilClosed`, the index just past where the depth returns to
 * its start after opening, or -1.
 */
function depthAfter (body: Buffer, from: number, to: number, depth: number, untilClosed = false): number {
  let inString = false
  for (let at = from; at < to; at++) {
    const byte = body[at]
    if (inString) {
      if (byte === BACKSLASH) at++
      else if (byte === QUOTE) inString = false
    } else if (byte === QUOTE) inString = true
    else if (byte === 0x7b || byte === 0x5b) depth++
    else if (byte === 0x7d || byte === 0x5d) {
      depth--
      if (depth < 0) return -1
      if (untilClosed && depth === 0) return at + 1
    }
  }
  if (untilClosed || inString) return -1
  return depth
}

/**
 * From just after a value to the body's last non-space byte, a `}`, the depth comes back to where it started: in a
 * well-formed body, that value was a member of the top-level object, which that brace closes.
 */
function closesLast (body: Buffer, from: number): boolean {
  let end = body.length - 1
  while (end > from && isSpace(body[end])) end--
  return body[end] === 0x7d && depthAfter(body, from, end, 1) === 1
}

function lastByte (body: Buffer): number | undefined {
  let end = body.length - 1
  while (end > 0 && isSpace(body[end])) end--
  return body[end]
}

function skipSpace (body: Buffer, at: number): number {
  while (at < body.length && isSpace(body[at])) at++
  return at
}

const isSpace = (byte: number | undefined) => byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09
