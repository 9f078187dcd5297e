import { timeZoneUnknown } from '../errors.js'

/** A calendar period of a workspace's budget: its id goes into the Redis key, so nothing ever resets a counter. */
export interface Period {
  id: string
  /** first millisecond, UTC epoch */
  start: number
  /** first millisecond of the next period */
  end: number
}

export interface CalendarPeriods {
  day: Period
  month: Period
}

const formatters = new Map<string, Intl.DateTimeFormat>()
const cache = new Map<string, CalendarPeriods>()

/**
 * The day and the month that contain `instant` in `timeZone` (IANA). Cached until the day ends, so the hot path
 * pays for Intl once a day per time zone.
 */
export function calendarPeriods (instant: number, timeZone: string): CalendarPeriods {
  const cached = cache.get(timeZone)
  if (cached && instant >= cached.day.start && instant < cached.day.end) return cached
  const { year, month, day } = localDate(instant, timeZone)
  const periods: CalendarPeriods = {
    day: {
      id: `${year}-${pad(month)}-${pad(day)}`,
      start: localMidnight(year, month, day, timeZone),
      end: localMidnight(year, month, day + 1, timeZone)
    },
    month: {
      id: `${year}-${pad(month)}`,
      start: localMidnight(year, month, 1, timeZone),
      end: localMidnight(year, month + 1, 1, timeZone)
    }
  }
  cache.set(timeZone, periods)
  return periods
}

function formatter (timeZone: string): Intl.DateTimeFormat {
  let format = formatters.get(timeZone)
  if (!format) {
    try {
      format = new Intl.DateTimeFormat('en-US', {
        timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric'
      })
    } catch (err) {
      throw timeZoneUnknown(timeZone, err)
    }
    formatters.set(timeZone, format)
  }
  return format
}

function localParts (instant: number, timeZone: string) {
  const parts: Record<string, number> = {}
  for (const part of formatter(timeZone).formatToParts(instant)) {
    if (part.type !== 'literal') parts[part.type] = Number(part.value)
  }
  return parts
}

function localDate (instant: number, timeZone: string) {
  const parts = localParts(instant, timeZone)
  return { year: parts.year, month: parts.month, day: parts.day }
}

/**
 * The first instant of a local date: the first instant whose local date is not before it. A binary search over the
 * 28 hours around midnight UTC finds it whatever the zone does at midnight — where a DST change skips midnight
 * (Havana, Asunción, Santiago) the day begins at 01:00. Date.UTC normalises day 32 or month 13.
 */
function localMidnight (year: number, month: number, day: number, timeZone: string): number {
  const target = Date.UTC(year, month - 1, day)
  let low = target - 15 * 3_600_000 // no zone is ahead of UTC by more than 14 hours
  let high = target + 13 * 3_600_000 // nor behind it by more than 12
  while (high - low > 1) {
    const middle = Math.floor((low + high) / 2)
    const { year: y, month: m, day: d } = localDate(middle, timeZone)
    if (Date.UTC(y, m - 1, d) >= target) high = middle
    else low = middle
  }
  return high
}

function pad (value: number) {
  return value < 10 ? `0${value}` : String(value)
}
