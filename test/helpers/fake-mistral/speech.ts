import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { FakeContext } from './context.js'
import { countTokens } from './usage.js'

interface SpeechBody {
  model?: string
  input?: string
  stream?: boolean
}

/** 50 ms of 24 kHz 16-bit mono per input character: enough bytes to look like audio, predictably. */
export const SPEECH_BYTES_PER_CHARACTER = 2400
/** characters of input per streamed `speech.audio.delta` */
export const SPEECH_CHARACTERS_PER_CHUNK = 50

export async function speechRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  app.post('/v1/audio/speech', async function speak (request, reply) {
    const body = ctx.body<SpeechBody>(request)
    const input = body.input ?? ''
    // the body decides, not Accept: the SDK asks for JSON even when it sets stream (MISTRAL-NOTES §2.4)
    if (body.stream === true) return stream(ctx, request, reply, body.model, input)
    // no usage here: a gateway has to count the input characters itself (MISTRAL-NOTES §2.5)
    return { audio_data: audioFor(input).toString('base64') }
  })
}

function audioFor (text: string): Buffer {
  const audio = Buffer.alloc(text.length * SPEECH_BYTES_PER_CHARACTER)
  for (let i = 0; i < audio.length; i++) {
    audio[i] = (i * 7 + text.charCodeAt(Math.floor(i / SPEECH_BYTES_PER_CHARACTER))) & 0xff
  }
  return audio
}

async function stream (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply, model: string | undefined,
  input: string) {
  const sse = ctx.openStream(request, reply)
  const chunks = Math.max(1, Math.ceil(input.length / SPEECH_CHARACTERS_PER_CHUNK))
  for (let i = 0; i < chunks; i++) {
    const text = input.slice(i * SPEECH_CHARACTERS_PER_CHUNK, (i + 1) * SPEECH_CHARACTERS_PER_CHUNK)
    const delta = { type: 'speech.audio.delta', audio_data: audioFor(text).toString('base64') }
    if (!await sse.event(delta.type, delta)) return
  }
  const promptTokens = countTokens(input)
  const usage = { prompt_tokens: promptTokens, total_tokens: promptTokens + chunks, completion_tokens: chunks,
    prompt_audio_seconds: null }
  if (!await sse.event('speech.audio.done', { type: 'speech.audio.done', usage })) return
  ctx.reportUsage(request, model, usage, true)
  sse.end()
}
