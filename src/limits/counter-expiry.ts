const DAY_MS = 86_400_000

/**
 * How long a day's or a month's spend counter is kept after its first write. It is read while its period lasts and
 * written by the settlements of the period's last calls after that. Its first write is an admission's seed within the
 * period, or a settlement's later: a local day lasts at most 27 hours (DST, an Antarctic station's), a month 31 days
 * and an hour, and a workspace's time zone may change by 26 hours mid-period; 3 days and 35 days leave at least 19
 * hours to spare. A lifetime counter is kept. Without an expiry every capped scope would leave a counter a day behind it.
 */
export const COUNTER_TTL_MS = { day: 3 * DAY_MS, month: 35 * DAY_MS }

/** The expiry a spend counter gets at its first write, by its key (`…:spend:d:<day>`, `…:spend:m:<month>`). */
export function counterTtl (key: string): number | undefined {
  if (key.includes(':spend:d:')) return COUNTER_TTL_MS.day
  if (key.includes(':spend:m:')) return COUNTER_TTL_MS.month
  return undefined
}
