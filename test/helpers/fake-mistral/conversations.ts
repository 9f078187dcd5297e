import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { FakeContext } from './context.js'
import { sendNotFound } from './errors.js'
import { rateLimitHeaders } from './headers.js'
import { hexId, isoNow } from './ids.js'
import { agentSnapshot, type ConversationRecord } from './stores.js'
import { contentText, countTokens, generatedWords, type Usage } from './usage.js'

interface ConversationBody {
  inputs?: string | Array<{ content?: unknown }>
  model?: string
  agent_id?: string
  agent_version?: string | number
  instructions?: string
  tools?: unknown[]
  stream?: boolean
  completion_args?: { max_tokens?: number }
}

interface ConversationParams { conversation_id: string }

/** Tokens a built-in connector (web search, code interpreter…) is charged per call: a fixed, predictable number. */
export const CONNECTOR_TOKENS_PER_CALL = 128

export async function conversationRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  const conversations = ctx.stores.conversations

  app.post('/v1/conversations', async function start (request, reply) {
    const body = ctx.body<ConversationBody>(request)
    const agent = ctx.stores.agents.get(body.agent_id ?? '')
    const snapshot = agent && agentSnapshot(agent, body.agent_version ?? undefined)
    const conversation: ConversationRecord = {
      id: `conv_${hexId()}`,
      model: body.model ?? snapshot?.model ?? 'mistral-medium-latest',
      agentId: body.agent_id ?? null,
      instructions: body.instructions ?? (typeof snapshot?.instructions === 'string' ? snapshot.instructions : ''),
      tools: body.tools ?? (Array.isArray(snapshot?.tools) ? snapshot.tools : [])
    }
    conversations.set(conversation.id, conversation)
    return respond(ctx, request, reply, conversation, conversation.instructions)
  })

  app.post<{ Params: ConversationParams }>('/v1/conversations/:conversation_id',
    async function append (request, reply) {
      const conversation = conversations.get(request.params.conversation_id)
      if (!conversation) return sendNotFound(reply, 'Conversation not found')
      return respond(ctx, request, reply, conversation, '')
    })

  // a restart branches: the answer belongs to a new conversation
  app.post<{ Params: ConversationParams }>('/v1/conversations/:conversation_id/restart',
    async function restart (request, reply) {
      const original = conversations.get(request.params.conversation_id)
      if (!original) return sendNotFound(reply, 'Conversation not found')
      const conversation = { ...original, id: `conv_${hexId()}` }
      conversations.set(conversation.id, conversation)
      return respond(ctx, request, reply, conversation, '')
    })
}

function inputsText (inputs: ConversationBody['inputs']): string {
  if (typeof inputs === 'string') return inputs
  return Array.isArray(inputs) ? inputs.map((entry) => contentText(entry?.content)).join('') : ''
}

/** `ConversationUsageInfo`: built-in tools add `connector_tokens` and a per-connector call count. */
function conversationUsage (promptTokens: number, completionTokens: number, tools: unknown[]): Usage {
  const usage: Usage = {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens
  }
  const connectors = tools.map((tool) => (tool as { type?: string })?.type)
    .filter((type) => type && type !== 'function')
  if (connectors.length > 0) {
    usage.connector_tokens = connectors.length * CONNECTOR_TOKENS_PER_CALL
    usage.connectors = Object.fromEntries(connectors.map((type) => [type, 1]))
  }
  return usage
}

async function respond (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply,
  conversation: ConversationRecord, instructions: string) {
  const body = ctx.body<ConversationBody>(request)
  const limit = body.completion_args?.max_tokens ?? ctx.completionTokens
  const words = generatedWords(Math.min(ctx.completionTokens, limit))
  const usage = conversationUsage(countTokens(instructions + inputsText(body.inputs)), words.length, conversation.tools)
  const headers = rateLimitHeaders(3, { cost: usage.total_tokens as number })
  const message = { id: `msg_${hexId()}`, model: conversation.model, agent_id: conversation.agentId }
  if (body.stream === true) return stream(ctx, request, reply, { conversation, message, words, usage, headers })
  const now = isoNow()
  const entry = { object: 'entry', type: 'message.output', created_at: now, completed_at: now, ...message,
    role: 'assistant', content: words.join('') }
  ctx.reportUsage(request, conversation.model, usage, false)
  return reply.headers(headers).send({
    object: 'conversation.response', conversation_id: conversation.id, outputs: [entry], usage, guardrails: null
  })
}

interface StreamPlan {
  conversation: ConversationRecord
  message: { id: string, model: string, agent_id: string | null }
  words: string[]
  usage: Usage
  headers: Record<string, string>
}

/** Named events and no `[DONE]`: the stream ends when the connection does (MISTRAL-NOTES §2.4). */
async function stream (ctx: FakeContext, request: FastifyRequest, reply: FastifyReply, plan: StreamPlan) {
  const sse = ctx.openStream(request, reply, plan.headers)
  const send = (payload: Record<string, unknown> & { type: string }) => sse.event(payload.type, payload)
  const started = { type: 'conversation.response.started', created_at: isoNow(), conversation_id: plan.conversation.id }
  if (!await send(started)) return
  for (const word of plan.words) {
    const delta = { type: 'message.output.delta', created_at: isoNow(), output_index: 0, ...plan.message,
      content_index: 0, role: 'assistant', content: word }
    if (!await send(delta)) return
  }
  if (!await send({ type: 'conversation.response.done', created_at: isoNow(), usage: plan.usage })) return
  ctx.reportUsage(request, plan.conversation.model, plan.usage, true)
  sse.end()
}
