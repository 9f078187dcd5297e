import type { FastifyInstance, FastifyReply } from 'fastify'
import type { FakeContext } from './context.js'
import { sendNotFound } from './errors.js'
import { hexId, isoNow } from './ids.js'
import { agentSnapshot, agentView, type AgentRecord, type AgentSnapshot } from './stores.js'

type AgentBody = Record<string, unknown> & { model?: string }
interface AgentParams { agent_id: string }
interface Paging { page?: string, page_size?: string }

export async function agentRoutes (app: FastifyInstance, { ctx }: { ctx: FakeContext }) {
  const agents = ctx.stores.agents

  function withAgent (agentId: string, reply: FastifyReply, then: (agent: AgentRecord) => unknown) {
    const agent = agents.get(agentId)
    return agent ? then(agent) : sendNotFound(reply, `Agent not found: ${agentId}`)
  }

  app.post('/v1/agents', async function createAgent (request) {
    const body = ctx.body<AgentBody>(request)
    const now = isoNow()
    const snapshot = snapshotOf({}, body, { id: `ag_${hexId()}`, version: 0, created_at: now, updated_at: now })
    const agent: AgentRecord = { id: snapshot.id as string, versions: [snapshot], current: 0, aliases: new Map() }
    agents.set(agent.id, agent)
    return agentView(agent, snapshot)
  })

  app.get<{ Querystring: Paging }>('/v1/agents', async function listAgents (request) {
    const all = [...agents.values()].map((agent) => agentView(agent, agentSnapshot(agent) as AgentSnapshot))
    return page(all, request.query)
  })

  app.get<{ Params: AgentParams, Querystring: { agent_version?: string } }>('/v1/agents/:agent_id',
    async function getAgent (request, reply) {
      return withAgent(request.params.agent_id, reply, (agent) => {
        const snapshot = agentSnapshot(agent, request.query.agent_version)
        return snapshot ? agentView(agent, snapshot) : sendNotFound(reply, 'Agent version not found')
      })
    })

  // an update is a new version, which becomes the current one (Mistral docs, agents versioning)
  app.patch<{ Params: AgentParams }>('/v1/agents/:agent_id', async function updateAgent (request, reply) {
    return withAgent(request.params.agent_id, reply, (agent) => {
      const latest = agent.versions[agent.versions.length - 1]
      const snapshot = snapshotOf(latest, ctx.body<AgentBody>(request),
        { version: latest.version + 1, updated_at: isoNow() })
      agent.versions.push(snapshot)
      agent.current = snapshot.version
      return agentView(agent, snapshot)
    })
  })

  app.delete<{ Params: AgentParams }>('/v1/agents/:agent_id', async function deleteAgent (request, reply) {
    return withAgent(request.params.agent_id, reply, (agent) => {
      agents.delete(agent.id)
      return reply.code(204).send()
    })
  })

  app.patch<{ Params: AgentParams, Querystring: { version?: string } }>('/v1/agents/:agent_id/version',
    async function switchVersion (request, reply) {
      return withAgent(request.params.agent_id, reply, (agent) => {
        const snapshot = agentSnapshot(agent, Number(request.query.version))
        if (!snapshot) return sendNotFound(reply, 'Agent version not found')
        agent.current = snapshot.version
        return agentView(agent, snapshot)
      })
    })

  app.get<{ Params: AgentParams, Querystring: Paging }>('/v1/agents/:agent_id/versions',
    async function listVersions (request, reply) {
      return withAgent(request.params.agent_id, reply,
        (agent) => page(agent.versions.map((snapshot) => agentView(agent, snapshot)), request.query))
    })

  app.get<{ Params: AgentParams & { version: string } }>('/v1/agents/:agent_id/versions/:version',
    async function getVersion (request, reply) {
      return withAgent(request.params.agent_id, reply, (agent) => {
        const snapshot = agentSnapshot(agent, Number(request.params.version))
        return snapshot ? agentView(agent, snapshot) : sendNotFound(reply, 'Agent version not found')
      })
    })

  app.put<{ Params: AgentParams, Querystring: { alias?: string, version?: string } }>('/v1/agents/:agent_id/aliases',
    async function putAlias (request, reply) {
      return withAgent(request.params.agent_id, reply, (agent) => {
        const { alias = '', version } = request.query
        const snapshot = agentSnapshot(agent, Number(version))
        if (!snapshot) return sendNotFound(reply, 'Agent version not found')
        const now = isoNow()
        const entry = { alias, version: snapshot.version, created_at: agent.aliases.get(alias)?.created_at ?? now,
          updated_at: now }
        agent.aliases.set(alias, entry)
        return entry
      })
    })

  app.get<{ Params: AgentParams }>('/v1/agents/:agent_id/aliases', async function listAliases (request, reply) {
    return withAgent(request.params.agent_id, reply, (agent) => [...agent.aliases.values()])
  })

  app.delete<{ Params: AgentParams, Querystring: { alias?: string } }>('/v1/agents/:agent_id/aliases',
    async function deleteAlias (request, reply) {
      return withAgent(request.params.agent_id, reply, (agent) => {
        agent.aliases.delete(request.query.alias ?? '')
        return reply.code(204).send()
      })
    })
}

/** `Agent` in mistral-openapi.yaml: the body's fields over the previous version's, then the server's own. */
function snapshotOf (previous: Record<string, unknown>, body: AgentBody, own: Record<string, unknown>): AgentSnapshot {
  const snapshot: Record<string, unknown> = {
    instructions: null,
    tools: [],
    completion_args: {},
    guardrails: null,
    description: null,
    handoffs: null,
    metadata: null,
    object: 'agent',
    deployment_chat: false,
    source: 'api',
    version_message: null,
    ...previous,
    ...body,
    ...own
  }
  return snapshot as AgentSnapshot
}

/** `page` counts from 0, as the agents API does. */
function page<T> (items: T[], { page = '0', page_size: size = '20' }: Paging): T[] {
  return items.slice(Number(page) * Number(size), (Number(page) + 1) * Number(size))
}
