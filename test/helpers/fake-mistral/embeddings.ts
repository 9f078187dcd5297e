import { createHash } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { FakeContext } from './context.js'
import { rateLimitHeaders } from './headers.js'
import { hexId } from './ids.js'
import { countTokens } from './usage.js'

interface EmbeddingBody {
  model?: string
  input?: string | string[]
  output_dimension?: number | null
  encoding_format?: 'float' | 'base64'
}

/** mistral-embed's size; codestral-embed takes `output_dimension` */
const DEFAULT_DIMENSION = 1024

export async function embeddingRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  app.post('/v1/embeddings', function embeddings (request, reply) {
    const body = ctx.body<EmbeddingBody>(request)
    const inputs = (Array.isArray(body.input) ? body.input : [body.input ?? '']).map(String)
    const dimension = body.output_dimension ?? DEFAULT_DIMENSION
    const promptTokens = inputs.reduce((sum, text) => sum + countTokens(text), 0)
    // real responses carry these extra keys too (MISTRAL-NOTES §2.2, batch docs example)
    const usage = {
      prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0, prompt_audio_seconds: null
    }
    const data = inputs.map((text, index) => ({
      object: 'embedding',
      embedding: encode(embeddingOf(text, dimension), body.encoding_format),
      index
    }))
    ctx.reportUsage(request, body.model, usage, false)
    return reply.headers(rateLimitHeaders(3, { cost: promptTokens }))
      .send({ id: hexId(), object: 'list', data, model: body.model, usage })
  })
}

/** A unit vector that depends only on the text, so equal inputs embed equally across calls. */
export function embeddingOf (text: string, dimension: number): number[] {
  const seed = createHash('sha256').update(text).digest()
  const raw = Array.from({ length: dimension }, (_, i) => Math.sin(seed[i % seed.length] * (i + 1)))
  const norm = Math.hypot(...raw) || 1
  return raw.map((value) => Math.round((value / norm) * 1e6) / 1e6)
}

/** `base64` is little-endian float32, as OpenAI clients expect to decode it */
function encode (vector: number[], format: EmbeddingBody['encoding_format']): number[] | string {
  if (format !== 'base64') return vector
  return Buffer.from(new Float32Array(vector).buffer).toString('base64')
}
