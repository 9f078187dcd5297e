import type { Admission } from './admission.js'
import { inspectLimits, type ScopeToInspect } from './inspect.js'
import type { RateLimits, SpendCaps, WorkspaceLimits } from './policy.js'

interface DescribedWorkspace {
  id: string
  timezone: string
  limits: unknown
  caps: unknown
}

interface DescribedToken {
  id: string
  limits: unknown
  caps: unknown
}

/**
 * A workspace's limits and caps, its per-model limits and those of the given tokens, each with what is used,
 * reserved and left and when it resets: what the operator sees at `GET /admin/v1/workspaces/{ws}/limits` and a
 * client at `GET /tramontane/v1/me` (its own token only). Tokens with no limits or caps of their own are left out.
 */
export async function describeLimits (admission: Admission, workspace: DescribedWorkspace,
  tokens: readonly DescribedToken[]) {
  const prefix = `tmt:{ws:${workspace.id}}`
  const limits = workspace.limits as WorkspaceLimits
  const scopes: ScopeToInspect[] = [{ name: 'workspace', p: `${prefix}:w`, limits, caps: workspace.caps as SpendCaps }]
  for (const [model, modelLimits] of Object.entries(limits.models ?? {})) {
    scopes.push({ name: `model:${model}`, p: `${prefix}:m:${model}`, limits: modelLimits })
  }
  for (const token of tokens) {
    if (Object.keys(token.limits as object).length === 0 && Object.keys(token.caps as object).length === 0) continue
    scopes.push({
      name: `token:${token.id}`,
      p: `${prefix}:t:${token.id}`,
      limits: token.limits as RateLimits,
      caps: token.caps as SpendCaps,
      tokenId: token.id
    })
  }
  const described = await inspectLimits({
    store: admission.store,
    ledger: admission.ledger,
    workspaceId: workspace.id,
    timezone: workspace.timezone,
    scopes
  })
  const pick = (kind: string) => Object.fromEntries(Object.entries(described)
    .filter(([name]) => name.startsWith(kind))
    .map(([name, value]) => [name.slice(kind.length), value]))
  return { workspace: described.workspace, models: pick('model:'), tokens: pick('token:') }
}
