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
  reasoning_effort?: string | null
  prompt_mode?: string | null
  metadata?: { fake_tool_arguments?: unknown } | null
}

interface Completion {
  id: string
  created: number
  model: string
  words: string[]
  /** as Mistral sends one: no `type` nor `index`, and `arguments` a string or an object (FunctionCall) */
  toolCall?: { id: string, function: { name: string, arguments: string | Record<string, unknown> } }
  /** a reasoning model's thinking: its answer's content is then chunks, not a string */
  thinking?: string
  finishReason: 'stop' | 'length' | 'tool_calls'
  usage: Usage
}

/** What the fake's reasoning models think before they answer. */
export const FAKE_THINKING = 'The user wants a greeting; a short one will do.'

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
  const args = toolArguments(body)
  const toolCall = tool ? { id: toolCallId(), function: { name: tool, arguments: args } } : undefined
  const words = toolCall ? [] : generatedWords(Math.min(ctx.completionTokens, limit))
  const argsText = typeof args === 'string' ? args : JSON.stringify(args)
  const completionTokens = toolCall ? countTokens(tool + argsText) : words.length
  return {
    id: hexId(),
    created: unixSeconds(),
    model,
    words,
    toolCall,
    thinking: reasons(body, model) ? FAKE_THINKING : undefined,
    finishReason: toolCall ? 'tool_calls' : limit < ctx.completionTokens ? 'length' : 'stop',
    usage: completionUsage(countTokens(promptText), completionTokens, body)
  }
}

/** With tools on offer the fake calls the first one only when told to (`any`, `required` or a named function). */
function wantsToolCall (body: CompletionBody): boolean {
  if (!body.tools?.length) return false
  return body.tool_choice === 'any' || body.tool_choice === 'required' || typeof body.tool_choice === 'object'
}

/**
 * `{}` as text, or, when the request's `metadata.fake_tool_arguments` holds a JSON object as text, that object: the
 * object arguments Mistral's spec allows (FunctionCall.arguments), scripted by a test.
 */
function toolArguments (body: CompletionBody): string | Record<string, unknown> {
  const scripted = body.metadata?.fake_tool_arguments
  return typeof scripted === 'string' ? JSON.parse(scripted) as Record<string, unknown> : '{}'
}

/** Magistral always reasons; a model with the `reasoning` capability when asked to (MISTRAL-NOTES §2.4). */
function reasons (body: CompletionBody, model: string): boolean {
  const asked = body.prompt_mode === 'reasoning' || (typeof body.reasoning_effort === 'string' &&
    body.reasoning_effort !== 'none')
  return model.startsWith('magistral-') || asked
}

/** A ThinkChunk of mistral-openapi.yaml: the thinking as text chunks. */
const thinkChunk = (text: string) => ({ type: 'thinking', thinking: [{ type: 'text', text }] })

async function answer (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply, completion: Completion) {
  const headers = rateLimitHeaders(3, { cost: completion.usage.total_tokens as number })
  if (ctx.body<CompletionBody>(request).stream === true) return stream(ctx, request, reply, completion, headers)
  const { id, created, model, words, toolCall, thinking, finishReason, usage } = completion
  const text = words.join('')
  const message = {
    role: 'assistant',
    // without `type` or `index`, as Mistral answers (recorded: `[{"id":"gSIMJiOkT","function":{…}}]`)
    tool_calls: toolCall ? [toolCall] : null,
    // a reasoning model answers in chunks: its thinking, then its text (MISTRAL-NOTES §5.3)
    content: thinking === undefined ? text : [thinkChunk(thinking), { type: 'text', text }]
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
  const { id, created, model, words, toolCall, thinking, finishReason, usage } = completion
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }]
  })
  const sse = ctx.openStream(request, reply, headers)
  if (!await sse.data(chunk({ role: 'assistant', content: '' }))) return
  // a reasoning model streams chunks too: its thinking first, then its text (MISTRAL-NOTES §2.4)
  if (thinking !== undefined && !await sse.data(chunk({ content: [thinkChunk(thinking)] }))) return
  for (const word of words) {
    const content = thinking === undefined ? word : [{ type: 'text', text: word }]
    if (!await sse.data(chunk({ content }))) return
  }
  // usage rides on the finish_reason chunk, and a tool call arrives whole, without type or index (MISTRAL-NOTES §2.4)
  const delta = toolCall ? { tool_calls: [toolCall] } : { content: '' }
  if (!await sse.data({ ...chunk(delta, finishReason), usage })) return
  ctx.reportUsage(request, model, usage, true)
  if (await sse.data('[DONE]')) sse.end()
}
