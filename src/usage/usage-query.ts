import { badRequest } from '../errors.js'
import { DIMENSIONS, type Bound, type Dimension } from './usage-groups.js'

/** The query string of a usage view, as the admin and the self-service routes accept it. */
export interface UsageQueryString {
  from?: string
  to?: string
  groupBy?: string
  format?: string
  limit?: number
}

export interface UsageQuery {
  from: Bound
  to: Bound
  dimensions: Dimension[]
  format: 'json' | 'csv'
  /** records listed when nothing is grouped */
  limit: number
}

export interface Month {
  /** `yyyy-mm` */
  id: string
  firstDay: string
  /** the first day of the next month */
  nextDay: string
}

const DAY_MS = 86_400_000
const DATE = /^(\d{4})-(\d{2})-(\d{2})$/
// an instant must say its offset: a bare local time would be read in whatever zone the server runs in
const DATE_TIME = /^(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(?:Z|[+-](\d{2}):(\d{2}))$/i
const MONTH = /^(\d{4})-(\d{2})$/

/** Reads and checks a usage query; a bad value is a 400 that names it. `accept` is the request's Accept header. */
export function parseUsageQuery (query: UsageQueryString, accept: string | undefined, now = Date.now()): UsageQuery {
  const to = query.to === undefined ? { at: new Date(now) } : parseBound(query.to, 'to')
  // by default the 30 days before `to`
  const from = query.from === undefined
    ? { at: new Date(('at' in to ? to.at.getTime() : Date.parse(to.day)) - 30 * DAY_MS) }
    : parseBound(query.from, 'from')
  return {
    from,
    to,
    dimensions: parseDimensions(query.groupBy),
    format: parseFormat(query.format, accept),
    limit: query.limit ?? 1000
  }
}

/** `yyyy-mm`, a calendar month (its days are the workspace's, however it is read). */
export function parseMonth (text: string): Month {
  const match = MONTH.exec(text)
  const year = Number(match?.[1])
  const month = Number(match?.[2])
  if (!match || month < 1 || month > 12 || year < 2000) {
    throw badRequest(`'${clip(text)}' is not a month: use yyyy-mm, e.g. 2026-03`, { param: 'month' })
  }
  const next = month === 12 ? `${year + 1}-01` : `${year}-${String(month + 1).padStart(2, '0')}`
  return { id: text, firstDay: `${text}-01`, nextDay: `${next}-01` }
}

/** The format asked for: `?format=` wins, else an Accept header that prefers CSV, else JSON. */
export function parseFormat (format: string | undefined, accept: string | undefined): 'json' | 'csv' {
  if (format === undefined) return accept !== undefined && /^\s*text\/csv\b/i.test(accept) ? 'csv' : 'json'
  if (format === 'json' || format === 'csv') return format
  throw badRequest(`format must be json or csv, not '${clip(format)}'`, { param: 'format' })
}

function parseBound (text: string, param: 'from' | 'to'): Bound {
  if (isDay(text)) return { day: text }
  // checked field by field: Date.parse rolls an impossible instant forward (30 February is 2 March, 24:00 the next day)
  const instant = DATE_TIME.exec(text)
  if (instant && isDay(instant[1]) && isClock(instant[2], instant[3], instant[4] ?? '00') &&
    isClock(instant[6] ?? '00', instant[7] ?? '00', '00')) {
    return { at: new Date(text) }
  }
  throw badRequest(`${param} must be a day (2026-03-01, from midnight in the workspace's time zone) or an instant ` +
    `with its offset (2026-03-01T00:00:00Z), not '${clip(text)}'`, { param })
}

/** `yyyy-mm-dd`, a day of the calendar, from 2000 on. */
function isDay (text: string): boolean {
  const date = DATE.exec(text)
  if (!date) return false
  const [year, month, day] = [Number(date[1]), Number(date[2]), Number(date[3])]
  const check = new Date(Date.UTC(year, month - 1, day))
  return check.getUTCMonth() === month - 1 && check.getUTCDate() === day && year >= 2000
}

/** hours 0-23, minutes and seconds 0-59 (no leap second: PostgreSQL and Date have none) */
const isClock = (hours: string, minutes: string, seconds: string) =>
  Number(hours) <= 23 && Number(minutes) <= 59 && Number(seconds) <= 59

function parseDimensions (groupBy: string | undefined): Dimension[] {
  if (groupBy === undefined || groupBy === '') return []
  const dimensions: Dimension[] = []
  for (const name of groupBy.split(',')) {
    if (!(DIMENSIONS as readonly string[]).includes(name)) {
      throw badRequest(`groupBy must be one or more of ${DIMENSIONS.join(', ')} (comma-separated), ` +
        `not '${clip(name)}'`, { param: 'groupBy' })
    }
    if (!dimensions.includes(name as Dimension)) dimensions.push(name as Dimension)
  }
  return dimensions
}

// an error message must not echo an arbitrarily long input
const clip = (text: string) => text.length > 40 ? `${text.slice(0, 40)}…` : text
