import pg from 'pg'

/** No connection the pool could give: PostgreSQL unreachable, its handshake or the pool's wait past its time. */
export class DatabaseConnectError extends Error {
  constructor (cause: unknown) {
    super('No connection to PostgreSQL', { cause })
    this.name = 'DatabaseConnectError'
  }
}

// getTransactionStatus(): in a transaction, or in a failed one
const IN_TRANSACTION = new Set<string | null>(['T', 'E'])
// drizzle's `begin`, its transaction's options after it
const BEGIN = /^\s*(?:begin|start\s+transaction)\b/i
// the severity of a refusal after which the session goes on; FATAL and PANIC end it. pg reads the localized field, so
// under a translated lc_messages every refusal counts as ending the session: a connection closed, none handed out dead
const SESSION_GOES_ON = 'ERROR'

/**
 * Whether PostgreSQL's refusal leaves a session to go on with. Class 08, connection exception, does not, whatever its
 * severity: a pooler (PgBouncer's query_wait_timeout) says ERROR, then closes the connection, and sends no
 * ReadyForQuery before it: a query sent meanwhile would wait for the close.
 */
function sessionGoesOn (err: pg.DatabaseError): boolean {
  return err.severity === SESSION_GOES_ON && !err.code?.startsWith('08')
}

/**
 * node-postgres' pool, whose checked-out connections are never lost nor handed out again broken. drizzle-orm 0.45's
 * `transaction()` sends `begin` before its try/finally, so a `begin` that fails never gives its connection back; and
 * after the driver's query_timeout a connection still waits for the answer it gave up on, so the rollback that follows
 * times out too and drizzle gives back, as healthy, a connection every later query waits behind. And a connection
 * lost while checked out emits an `error` nobody hears, which ends the process.
 *
 * So each checkout is a lease: the first failure that is not PostgreSQL's answer (the driver's timeout, a connection
 * lost), or a refusal that ends the session (FATAL: a backend terminated by a restart, a failover,
 * pg_terminate_backend; class 08 whatever its severity: a pooler giving up on the connection), on any statement,
 * gives the connection back to be closed at once, and later queries on the lease fail with that same error (a
 * rollback, then, tells the statement's cause, and is not waited for). A `begin` PostgreSQL refuses otherwise gives
 * the connection back too, as it was (out of any transaction), and later queries on the lease fail with the refusal:
 * the connection is the pool's again. A lease given back while its connection is still in a transaction is closed
 * too. Giving a lease back twice does nothing. `pool.query()` checks out on its own, and drops a connection on any
 * error already.
 */
export class LeasingPool extends pg.Pool {
  override connect (): Promise<pg.PoolClient>
  override connect (callback: (err: Error | undefined, client: pg.PoolClient | undefined,
    done: (release?: unknown) => void) => void): void

  override connect (callback?: (err: Error | undefined, client: pg.PoolClient | undefined,
    done: (release?: unknown) => void) => void): Promise<pg.PoolClient> | void {
    if (callback) return super.connect(callback)
    return super.connect().then(lease, (err: unknown) => { throw new DatabaseConnectError(err) })
  }
}

function lease (client: pg.PoolClient): pg.PoolClient {
  let released = false
  let failure: Error | undefined
  let refusedBegin: pg.DatabaseError | undefined

  const release = (err?: Error | boolean) => {
    if (released) return
    released = true
    client.off('error', fail)
    const stillInTransaction = IN_TRANSACTION.has(client.getTransactionStatus())
    client.release(failure ?? err ?? (stillInTransaction ? new Error('released inside a transaction') : undefined))
  }
  function fail (err: Error) {
    failure ??= err
    release()
  }
  // drizzle-orm 0.45's transaction() sends `begin` before its try/finally: nobody else gives this connection back
  function refuseBegin (err: pg.DatabaseError) {
    refusedBegin ??= err
    release()
  }
  client.on('error', fail)

  const query = async (...args: unknown[]) => {
    // a callback would be told of failures this lease never sees
    if (typeof args.at(-1) === 'function') throw new TypeError('A leased connection takes its queries as promises')
    if (failure) throw failure
    if (refusedBegin) throw refusedBegin
    try {
      return await (client.query as (...args: unknown[]) => Promise<unknown>)(...args)
    } catch (err) {
      // PostgreSQL's own answer (a constraint, a cancelled statement) leaves the connection in step; anything else
      // (no answer in time, a connection lost, a value the driver could not send, a session ended) may not have
      if (!(err instanceof pg.DatabaseError) || !sessionGoesOn(err)) fail(err as Error)
      else if (BEGIN.test(queryText(args[0]))) refuseBegin(err)
      throw err
    }
  }

  return new Proxy(client, {
    get (target, property) {
      if (property === 'query') return query
      if (property === 'release') return release
      const value: unknown = Reflect.get(target, property, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}

// a query is its text, or a config ({ text, values, ... }) as drizzle passes it
function queryText (query: unknown): string {
  const text = typeof query === 'string' ? query : (query as { text?: unknown } | null | undefined)?.text
  return typeof text === 'string' ? text : ''
}
