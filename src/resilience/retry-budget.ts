/**
 * Retries as a share of calls (a token bucket per replica): each upstream call earns `percent`/100 of a retry, a
 * retry spends one, and a few are allowed up front so a quiet gateway can still retry a lone failure. During an outage
 * the gateway therefore sends at most (1 + percent/100) times the calls it was given, never a multiple of them.
 */
export function createRetryBudget (percent: number, burst = 3) {
  let balance = burst
  const ceiling = Math.max(burst, 10)
  return {
    earn () { balance = Math.min(ceiling, balance + percent / 100) },
    spend (): boolean {
      if (balance < 1) return false
      balance -= 1
      return true
    }
  }
}

export type RetryBudget = ReturnType<typeof createRetryBudget>
