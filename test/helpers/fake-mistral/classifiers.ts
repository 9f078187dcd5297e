import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { FakeContext } from './context.js'
import { rateLimitHeaders } from './headers.js'
import { hexId } from './ids.js'
import { countTokens, messagesText } from './usage.js'

interface ClassifierBody {
  model?: string
  input?: unknown
}

/** Mistral Moderation 2's categories (`ModerationLLMV2CategoryThresholds` in mistral-openapi.yaml). */
export const MODERATION_CATEGORIES = [
  'sexual', 'hate_and_discrimination', 'violence_and_threats', 'dangerous', 'criminal', 'selfharm', 'health',
  'financial', 'law', 'pii', 'jailbreaking'
] as const

export async function classifierRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  app.post('/v1/moderations', function moderate (request, reply) {
    return classify(ctx, request, reply, textInputs(ctx.body<ClassifierBody>(request).input), moderation)
  })
  app.post('/v1/chat/moderations', function moderateChat (request, reply) {
    return classify(ctx, request, reply, chatInputs(ctx.body<ClassifierBody>(request).input), moderation)
  })
  app.post('/v1/classifications', function classifyText (request, reply) {
    return classify(ctx, request, reply, textInputs(ctx.body<ClassifierBody>(request).input), intent)
  })
  app.post('/v1/chat/classifications', function classifyChat (request, reply) {
    const input = ctx.body<ClassifierBody>(request).input
    const conversations = Array.isArray(input) ? input : [input]
    const texts = conversations.map((one) => messagesText((one as { messages?: unknown })?.messages))
    return classify(ctx, request, reply, texts, intent)
  })
}

function textInputs (input: unknown): string[] {
  return (Array.isArray(input) ? input : [input]).map((text) => (typeof text === 'string' ? text : ''))
}

/** One transcript, or a list of transcripts: one result each. */
function chatInputs (input: unknown): string[] {
  if (!Array.isArray(input)) return []
  return Array.isArray(input[0]) ? input.map(messagesText) : [messagesText(input)]
}

/** A category is flagged when the text names it: predictable, and enough to test `flagged` translation. */
function moderation (text: string) {
  const flagged = MODERATION_CATEGORIES.map((category) => [category, text.includes(category)] as const)
  return {
    categories: Object.fromEntries(flagged),
    category_scores: Object.fromEntries(flagged.map(([category, hit]) => [category, hit ? 0.99 : 0.0012]))
  }
}

/** A custom classifier with one target: questions score high on `question`. */
function intent (text: string) {
  const question = text.trim().endsWith('?') ? 0.97 : 0.03
  return { intent: { scores: { question, statement: Math.round((1 - question) * 100) / 100 } } }
}

function classify (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply, texts: string[],
  result: (text: string) => unknown) {
  const model = ctx.body<ClassifierBody>(request).model
  const promptTokens = texts.reduce((sum, text) => sum + countTokens(text), 0)
  // not in the spec, but real responses carry it (MISTRAL-NOTES §2.2, moderation docs example)
  const usage = { prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0, request_count: 1 }
  ctx.reportUsage(request, model, usage, false)
  return reply.headers(rateLimitHeaders(3, { cost: promptTokens }))
    .send({ id: `mod-${hexId()}`, model, results: texts.map(result), usage })
}
