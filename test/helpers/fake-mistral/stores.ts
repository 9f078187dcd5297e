/** What the fake remembers between requests, so that create-then-get works as it does upstream. */
export interface FileRecord {
  id: string
  object: 'file'
  bytes: number
  created_at: number
  filename: string
  purpose: string
  sample_type: string
  source: string
  num_lines: number | null
  mimetype: string | null
  signature: string | null
  expires_at: number | null
  visibility: string
}

export type AgentSnapshot = Record<string, unknown> & { version: number, model: string }

export interface AgentAlias {
  alias: string
  version: number
  created_at: string
  updated_at: string
}

export interface AgentRecord {
  id: string
  versions: AgentSnapshot[]
  current: number
  aliases: Map<string, AgentAlias>
}

export interface ConversationRecord {
  id: string
  model: string
  agentId: string | null
  instructions: string
  tools: unknown[]
}

export type Library = Record<string, unknown> & { id: string, total_size: number, nb_documents: number }
export type LibraryDocument = Record<string, unknown> & { id: string, library_id: string, size: number }
export type BatchJob = Record<string, unknown> & { id: string, status: string, created_at: number }

export interface Stores {
  files: Map<string, FileRecord>
  /** bytes of files the fake made itself; any other file downloads as `filePatternByte` */
  fileContents: Map<string, Buffer>
  agents: Map<string, AgentRecord>
  conversations: Map<string, ConversationRecord>
  libraries: Map<string, Library>
  documents: Map<string, LibraryDocument>
  batchJobs: Map<string, BatchJob>
  /** the organisation of each API key a test named; every other key is of DEFAULT_ORGANISATION */
  organisations: Map<string, string>
  /** the organisation of each batch job and file (none noted: DEFAULT_ORGANISATION's) */
  owners: Map<string, string>
}

export const DEFAULT_ORGANISATION = 'default'

export function organisationOf (stores: Stores, apiKey: string | undefined): string {
  return (apiKey === undefined ? undefined : stores.organisations.get(apiKey)) ?? DEFAULT_ORGANISATION
}

/**
 * The job or file with this id if the organisation holds it: Mistral answers another organisation's key 404, as for
 * one it does not have.
 */
export function ownedBy<T> (stores: Stores, records: Map<string, T>, id: string, organisation: string): T | undefined {
  return heldBy(stores, id, organisation) ? records.get(id) : undefined
}

export function heldBy (stores: Stores, id: string, organisation: string): boolean {
  return (stores.owners.get(id) ?? DEFAULT_ORGANISATION) === organisation
}

export function createStores (): Stores {
  return {
    files: new Map(),
    fileContents: new Map(),
    agents: new Map(),
    conversations: new Map(),
    libraries: new Map(),
    documents: new Map(),
    batchJobs: new Map(),
    organisations: new Map(),
    owners: new Map()
  }
}

/** The agent as a given version (a number, or an alias) or its current version. */
export function agentSnapshot (agent: AgentRecord, version?: string | number): AgentSnapshot | undefined {
  if (version === undefined || version === '') return agent.versions.find((v) => v.version === agent.current)
  const number = agent.aliases.get(String(version))?.version ?? Number(version)
  return agent.versions.find((v) => v.version === number)
}

/** An agent as the API shows it: the snapshot plus the list of every version. */
export function agentView (agent: AgentRecord, snapshot: AgentSnapshot): Record<string, unknown> {
  return { ...snapshot, versions: agent.versions.map((v) => v.version) }
}
