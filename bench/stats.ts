export interface Percentiles {
  p50: number
  p90: number
  p99: number
  max: number
  count: number
}

/** Exact percentiles (nearest rank) of every recorded value, in the values' unit. */
export function percentiles (values: Float64Array | number[]): Percentiles {
  const sorted = Float64Array.from(values).sort()
  const at = (p: number) =>
    sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1] ?? NaN, count: sorted.length }
}

export function median (values: number[]): number {
  const finite = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (finite.length === 0) return NaN
  const middle = finite.length >> 1
  return finite.length % 2 === 1 ? finite[middle] : (finite[middle - 1] + finite[middle]) / 2
}

/** A growable array of float samples: a soak records a million latencies without a million boxed numbers. */
export function createSamples (initial = 16_384) {
  let values = new Float64Array(initial)
  let length = 0
  return {
    push (value: number) {
      if (length === values.length) {
        const grown = new Float64Array(values.length * 2)
        grown.set(values)
        values = grown
      }
      values[length++] = value
    },
    values: () => values.subarray(0, length)
  }
}

export const round = (value: number, digits = 3) => Number.isFinite(value) ? Number(value.toFixed(digits)) : null
