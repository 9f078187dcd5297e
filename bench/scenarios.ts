export interface Scenario {
  path: string
  body: string
  streamed: boolean
  /** what a correct answer holds, checked once before measuring (a fast error is not a fast call) */
  check (text: string): boolean
}

/** Completion words of the fake (FAKE_MISTRAL_COMPLETION_TOKENS): 20 word chunks per stream, as issue #7 asks. */
export const COMPLETION_TOKENS = 20

const messages = [{ role: 'user', content: 'Write twenty words about the wind that blows over the Pyrenees.' }]
const inputs = Array.from({ length: 16 }, (_, i) => `Embedding input number ${i}: the tramontane is a cold north wind.`)

export const SCENARIOS: Record<string, Scenario> = {
  chat: {
    path: '/v1/chat/completions',
    body: JSON.stringify({ model: 'mistral-small-latest', messages }),
    streamed: false,
    check: (text) => JSON.parse(text).usage?.completion_tokens === COMPLETION_TOKENS
  },
  stream: {
    path: '/v1/chat/completions',
    body: JSON.stringify({ model: 'mistral-small-latest', messages, stream: true }),
    streamed: true,
    // a role chunk, the word chunks, the finish chunk with usage, then [DONE]
    check: (text) => countEvents(text) === COMPLETION_TOKENS + 3 && text.includes('data: [DONE]')
  },
  embeddings: {
    path: '/v1/embeddings',
    body: JSON.stringify({ model: 'mistral-embed', input: inputs }),
    streamed: false,
    check: (text) => JSON.parse(text).data?.length === inputs.length
  }
}

export function countEvents (text: string): number {
  return text.split('\n\n').filter((event) => event.startsWith('data:')).length
}
