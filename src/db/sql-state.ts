/**
 * The SQLSTATE code of an error PostgreSQL (or PGlite) raised, undefined for any other error (no connection, a bug):
 * drizzle wraps the driver's error, which carries the code, in its own.
 */
export function sqlState (err: unknown): string | undefined {
  const code = (err as { code?: unknown }).code ?? (err as { cause?: { code?: unknown } }).cause?.code
  return typeof code === 'string' ? code : undefined
}
