/**
 * What an admin change did to the fields it named, as the admin API shows them: `{ field: { from, to } }` for each
 * that changed (a PATCH that set a field to what it was records nothing for it). The views hold no secret.
 */
export function changesOf (before: Record<string, unknown>, after: Record<string, unknown>, fields: string[]):
Record<string, { from: unknown, to: unknown }> {
  const changes: Record<string, { from: unknown, to: unknown }> = {}
  for (const field of fields) {
    const from = before[field] ?? null
    const to = after[field] ?? null
    if (JSON.stringify(from) !== JSON.stringify(to)) changes[field] = { from, to }
  }
  return changes
}
