const DAY_MS = 86_400_000

/**
 * How long a day's or a month's spend counter is kept after its first write. It is read while its period lasts and
 * written by the settlements of the period's last calls after that; its first write comes somewhere within its period
 * (at most 25 hours for a day, 31 days and an hour for a month), so it goes a day or more after the period ended. A
 * lifetime counter is kept. Without an expiry every capped scope would leave a counter a day behind it for good.
 */
export const COUNTER_TTL_MS = { day: 3 * DAY_MS, month: 35 * DAY_MS }

/** The expiry a spend counter gets at its first write, by its key (`…:spend:d:<day>`, `…:spend:m:<month>`). */
export function counterTtl (key: string): number | undefined {
  if (key.includes(':spend:d:')) return COUNTER_TTL_MS.day
  if (key.includes(':spend:m:')) return COUNTER_TTL_MS.month
  return undefined
}
