/**
 * The fake Mistral as a process of its own, for benchmarks and spawned gateways. Prints `{"url":…}` as one line
 * on stdout once listening, and exits on SIGTERM or SIGINT.
 *   PORT                            default 0 (any free port)
 *   FAKE_MISTRAL_COMPLETION_TOKENS  words per completion (default 12)
 *   FAKE_MISTRAL_STREAM_DELAY_MS    pause between SSE events (default 0)
 *   FAKE_MISTRAL_LATENCY_MS         pause before each answer (default 0)
 *   FAKE_MISTRAL_RECORD             '1' keeps every request in memory (default: counters only)
 */
import { startFakeMistral } from './fake-mistral.js'

function numberFrom (value: string | undefined): number | undefined {
  return value === undefined || value === '' ? undefined : Number(value)
}

const fake = await startFakeMistral({
  port: numberFrom(process.env.PORT) ?? 0,
  completionTokens: numberFrom(process.env.FAKE_MISTRAL_COMPLETION_TOKENS),
  streamDelayMs: numberFrom(process.env.FAKE_MISTRAL_STREAM_DELAY_MS),
  latencyMs: numberFrom(process.env.FAKE_MISTRAL_LATENCY_MS),
  recordRequests: process.env.FAKE_MISTRAL_RECORD === '1'
})
process.stdout.write(JSON.stringify({ url: fake.url }) + '\n')

async function shutdown () {
  await fake.close()
  process.exit(0)
}
process.once('SIGTERM', shutdown)
process.once('SIGINT', shutdown)
