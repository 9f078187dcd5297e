import type { MetricsOptions } from '../../src/metrics.js'

/**
 * What createMetrics reads at scrape time, all at rest (no spool, no queue, no cooling key): a test overrides what it
 * looks at. `facts` must be given, as a test reads spend and keys or none.
 */
export const restingMetrics: Omit<MetricsOptions, 'facts'> = {
  spoolDepth: () => 0,
  spoolOldestAge: () => 0,
  spoolWritable: () => true,
  upstreamQueued: () => 0,
  coolingKeys: () => 0,
  breakers: () => ({ open: 0, halfOpen: 0 }),
  quotas: () => []
}
