import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { FakeContext } from './context.js'
import { rateLimitHeaders } from './headers.js'
import { ownedBy } from './stores.js'
import { generatedWords, type Usage } from './usage.js'

/** 16 kHz, 16-bit mono PCM: how many uploaded bytes make one second of audio. */
export const AUDIO_BYTES_PER_SECOND = 32_000
/** Length of audio given by `file_url`, which the fake never fetches */
export const URL_AUDIO_SECONDS = 30
/** Voxtral's encoder emits 12.5 audio tokens per second of audio */
const AUDIO_TOKENS_PER_SECOND = 12.5

export async function transcriptionRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  app.post('/v1/audio/transcriptions', async function transcribe (request, reply) {
    const { fields, files } = ctx.form(request)
    const upload = files.find((part) => part.field === 'file')
    // another organisation's file is one the key's does not have
    const named = fields.file_id
      ? ownedBy(ctx.stores, ctx.stores.files, fields.file_id, ctx.organisation(request))
      : undefined
    const bytes = upload?.bytes ?? named?.bytes
    const seconds = bytes === undefined ? URL_AUDIO_SECONDS : Math.max(1, Math.ceil(bytes / AUDIO_BYTES_PER_SECOND))
    const words = generatedWords(ctx.completionTokens)
    const text = words.join('')
    const promptTokens = Math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
    // transcription is billed per audio second: `prompt_audio_seconds` is the meter (MISTRAL-NOTES §2.6)
    const usage = { prompt_audio_seconds: seconds, prompt_tokens: promptTokens,
      total_tokens: promptTokens + words.length, completion_tokens: words.length }
    const segments = (fields.timestamp_granularities ?? '').includes('segment')
      ? [{ type: 'transcription_segment', text, start: 0, end: seconds }]
      : []
    const result = { model: fields.model ?? '', text, language: fields.language ?? 'en', segments, usage }
    const headers = rateLimitHeaders(3, { cost: usage.total_tokens })
    // streaming is asked for with a form field, not a JSON flag (MISTRAL-NOTES §2.2)
    if (fields.stream === 'true') return stream(ctx, request, reply, { result, words, headers })
    ctx.reportUsage(request, result.model, usage, false)
    return reply.headers(headers).send(result)
  })
}

interface Transcript {
  result: { model: string, text: string, language: string, segments: unknown[], usage: Usage }
  words: string[]
  headers: Record<string, string>
}

async function stream (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply,
  { result, words, headers }: Transcript) {
  const sse = ctx.openStream(request, reply, headers)
  const send = (payload: Record<string, unknown> & { type: string }) => sse.event(payload.type, payload)
  if (!await send({ type: 'transcription.language', audio_language: result.language })) return
  for (const word of words) if (!await send({ type: 'transcription.text.delta', text: word })) return
  for (const segment of result.segments) {
    if (!await send({ ...segment as object, type: 'transcription.segment' })) return
  }
  if (!await send({ type: 'transcription.done', ...result })) return
  ctx.reportUsage(request, result.model, result.usage, true)
  sse.end()
}
