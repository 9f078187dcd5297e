import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { FakeContext } from './context.js'
import { rateLimitHeaders } from './headers.js'
import { hexId, toolCallId, unixSeconds } from './ids.js'
import { agentSnapshot } from './stores.js'
import { completionUsage, countTokens, generatedWords, messagesText, type Usage, type UsageHints } from './usage.js'

interface CompletionBody extends UsageHints {
  model?: string
  agent_id?: string
  messages?: unknown
  prompt?: string
  suffix?: string
  stream?: boolean
  max_tokens?: number | null
  tools?: Array<{ function?: { name?: string } }>
  tool_choice?: unknown
}

interface Completion {
  id: string
  created: number
  model: string
  words: string[]
  toolCall?: { id: string, function: { name: string, arguments: string } }
  finishReason: 'stop' | 'length' | 'tool_calls'
  usage: Usage
}

/** The model used when an agent id is unknown to the fake: agents completions still answer, as in a smoke test. */
const DEFAULT_AGENT_MODEL = 'mistral-medium-latest'

export async function completionRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  app.post('/v1/chat/completions', function chat (request, reply) {
    const body = ctx.body<CompletionBody>(request)
    return answer(ctx, request, reply, plan(ctx, body, body.model ?? '', messagesText(body.messages)))
  })

  app.post('/v1/fim/completions', function fim (request, reply) {
    const body = ctx.body<CompletionBody>(request)
    return answer(ctx, request, reply, plan(ctx, body, body.model ?? '', (body.prompt ?? '') + (body.suffix ?? '')))
  })

  app.post('/v1/agents/completions', function agents (request, reply) {
    const body = ctx.body<CompletionBody>(request)
    const agent = ctx.stores.agents.get(body.agent_id ?? '')
    const snapshot = agent && agentSnapshot(agent)
    const instructions = typeof snapshot?.instructions === 'string' ? snapshot.instructions : ''
    // the response names the agent's model: that is what a gateway prices (MISTRAL-NOTES §2.2)
    const model = snapshot?.model ?? DEFAULT_AGENT_MODEL
    return answer(ctx, request, reply, plan(ctx, body, model, instructions + messagesText(body.messages)))
  })
}

function plan (ctx: FakeContext, body: CompletionBody, model: string, promptText: string): Completion {
  const limit = body.max_tokens ?? ctx.completionTokens
  const tool = wantsToolCall(body) ? body.tools?.[0]?.function?.name ?? 'tool' : undefined
  const toolCall = tool ? { id: toolCallId(), function: { name: tool, arguments: '{}' } } : undefined
  const words = toolCall ? [] : generatedWords(Math.min(ctx.completionTokens, limit))
  const completionTokens = toolCall ? countTokens(tool + toolCall.function.arguments) : words.length
  return {
    id: hexId(),
    created: unixSeconds(),
    model,
    words,
    toolCall,
    finishReason: toolCall ? 'tool_calls' : limit < ctx.completionTokens ? 'length' : 'stop',
    usage: completionUsage(countTokens(promptText), completionTokens, body)
  }
}

/** With tools on offer the fake calls the first one only when told to (`any`, `required` or a named function). */
function wantsToolCall (body: CompletionBody): boolean {
  if (!body.tools?.length) return false
  return body.tool_choice === 'any' || body.tool_choice === 'required' || typeof body.tool_choice === 'object'
}

async function answer (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply, completion: Completion) {
  const headers = rateLimitHeaders(3, { cost: completion.usage.total_tokens as number })
  if (ctx.body<CompletionBody>(request).stream === true) return stream(ctx, request, reply, completion, headers)
  const { id, created, model, words, toolCall, finishReason, usage } = completion
  const message = {
    role: 'assistant',
    tool_calls: toolCall ? [{ ...toolCall, type: 'function', index: 0 }] : null,
    content: words.join('')
  }
  ctx.reportUsage(request, model, usage, false)
  return reply.headers(headers).send({
    id,
    object: 'chat.completion',
    created,
    model,
    choices: [{ index: 0, message, finish_reason: finishReason, logprobs: null }],
    usage
  })
}

async function stream (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply, completion: Completion,
  headers: Record<string, string>) {
  const { id, created, model, words, toolCall, finishReason, usage } = completion
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }]
  })
  const sse = ctx.openStream(request, reply, headers)
  if (!await sse.data(chunk({ role: 'assistant', content: '' }))) return
  for (const word of words) if (!await sse.data(chunk({ content: word }))) return
  // usage rides on the finish_reason chunk, and a tool call arrives whole, without type or index (MISTRAL-NOTES §2.4)
  const delta = toolCall ? { tool_calls: [toolCall] } : { content: '' }
  if (!await sse.data({ ...chunk(delta, finishReason), usage })) return
  ctx.reportUsage(request, model, usage, true)
  if (await sse.data('[DONE]')) sse.end()
}
