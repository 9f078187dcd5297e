// Read before the call, to reserve its worst case against the spend caps: the real count comes back in `usage`.

/** Per message: role markers and the chat template's control tokens. */
const PER_MESSAGE = 8
/**
 * One image, audio clip or document: its URL's (or base64's) bytes say nothing about the tokens it costs, so each
 * counts as a 1024×1024 image would in 16-pixel patches. A guess, on the high side for most inputs.
 */
export const MEDIA_TOKENS = 4_096
/** where the inputs of chat, FIM, agents, conversations, embeddings, moderation and classification live */
const INPUT_FIELDS = ['messages', 'prompt', 'suffix', 'input', 'inputs', 'instructions'] as const
const MEDIA_KEYS = new Set(['image_url', 'document_url', 'input_audio', 'audio_url', 'file_url', 'url', 'file_id'])
/** bytes of compressed audio per second, on the low side (16 kbit/s speech codecs): more seconds reserved, not fewer */
export const AUDIO_BYTES_PER_SECOND = 2_000
/**
 * The most audio one chat call can hold: Voxtral's 32K-token context takes audio up to 40 minutes (the Voxtral
 * report, arXiv 2507.13264). An audio part given by URL, whose length cannot be known here, is reserved at this.
 */
export const MAX_CHAT_AUDIO_SECONDS = 40 * 60
/** structure, not text: the per-message allowance covers them */
const SKIPPED_KEYS = new Set(['role', 'type'])

/**
 * A conservative estimate of a request's prompt tokens from its JSON body: UTF-8 bytes of its texts / 2, plus 8 per
 * message, plus the bytes of `tools` and `response_format` (they are rendered into the prompt) / 2, plus
 * `MEDIA_TOKENS` per image, audio or document part. Conservative on purpose: BPE tokenizers spend well over 2 bytes
 * per token on natural text, so bytes / 2 over-reserves it; an over-reservation is refunded at settlement, an
 * under-reservation could let a call through that a cap should have stopped. It is not a bound: a byte-level
 * tokenizer can spend one token per byte on adversarial text.
 */
export function estimatePromptTokens (body: unknown): number {
  return estimatePrompt(body).tokens
}

/**
 * `estimatePromptTokens`, and the seconds of audio the prompt's `input_audio` parts may hold, which Voxtral chat bills
 * by the minute besides the tokens: base64 audio at `AUDIO_BYTES_PER_SECOND`, a URL at the most a call can hold, the
 * sum never above `MAX_CHAT_AUDIO_SECONDS`.
 */
export function estimatePrompt (body: unknown): { tokens: number, audioSeconds: number } {
  if (!isRecord(body)) return { tokens: 0, audioSeconds: 0 }
  const tally: Tally = { bytes: 0, media: 0, audioSeconds: 0 }
  let messages = 0
  for (const field of INPUT_FIELDS) {
    const value = body[field]
    if (value === undefined || value === null) continue
    if (Array.isArray(value)) messages += value.filter(isRecord).length
    walk(field, value, tally)
  }
  const rendered = jsonBytes(body.tools) + jsonBytes(body.response_format)
  return {
    tokens: Math.ceil((tally.bytes + rendered) / 2) + PER_MESSAGE * messages + MEDIA_TOKENS * tally.media,
    audioSeconds: Math.min(tally.audioSeconds, MAX_CHAT_AUDIO_SECONDS)
  }
}

interface Tally {
  bytes: number
  media: number
  audioSeconds: number
}

/** Sums the bytes of every string below `value`; iterative, so that a deeply nested body cannot blow the stack. */
function walk (key: string, value: unknown, tally: Tally) {
  const stack: Array<[string, unknown]> = [[key, value]]
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    const [name, node] = item
    if (SKIPPED_KEYS.has(name)) continue
    if (MEDIA_KEYS.has(name) && node !== null && node !== undefined) {
      tally.media++
      if (name === 'input_audio') tally.audioSeconds += audioSecondsOf(node)
    } else if (typeof node === 'string') {
      tally.bytes += Buffer.byteLength(node, 'utf8')
    } else if (Array.isArray(node)) {
      for (const element of node) stack.push([name, element]) // array elements keep their field's name
    } else if (isRecord(node)) {
      for (const [child, element] of Object.entries(node)) stack.push([child, element])
    }
  }
}

/**
 * An `input_audio` part, a string or `{ data, format }` (Mistral's docs show both): base64, bare or in a `data:` URL
 * (its decoded bytes at the low bitrate); else a URL or a shape unknown here (the most a call holds).
 */
function audioSecondsOf (audio: unknown): number {
  if (isRecord(audio) && typeof audio.data === 'string') return audioSecondsOf(audio.data)
  if (typeof audio !== 'string') return MAX_CHAT_AUDIO_SECONDS
  const base64 = audio.startsWith('data:') ? audio.slice(audio.indexOf(',') + 1) : audio
  if (/^[a-z][a-z0-9+.-]*:/i.test(base64)) return MAX_CHAT_AUDIO_SECONDS
  return Math.ceil(base64.length * 3 / 4 / AUDIO_BYTES_PER_SECOND)
}

function jsonBytes (value: unknown): number {
  return value === undefined || value === null ? 0 : Buffer.byteLength(JSON.stringify(value), 'utf8')
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}
