import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import { SCRAPE_HEADERS, TEST_DATABASE_URL, gatewayEnv } from '../helpers/app.js'
import { startFakeMistral, type FakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'
import { call, startReplicas, type ReplicaWorkspace, type Replicas } from '../helpers/replicas.js'
import { proxiedDatabase, type TcpProxy } from '../helpers/tcp-proxy.js'

// Issue 5, "Proof": after a mixed run over two replicas (plain, streamed, client-aborted, upstream-cut and 429-retried
// calls) what the fake Mistral served = the ledger = the sum of the replicas' metrics = the monthly statement, to the
// token and to the micro-unit. Then the same with PostgreSQL unreachable for 30 s mid-run, and with one replica
// SIGKILLed mid-run (its metrics die with it; what it served is in the ledger all the same).

const CHAT = '/v1/chat/completions'
const body = (content: string, stream = false) =>
  ({ model: 'mistral-small-latest', messages: [{ role: 'user', content }], stream })

interface Stack {
  mistral: FakeMistral
  proxy: TcpProxy
  replicas: Replicas
  ws: ReplicaWorkspace
  env: Record<string, string>
}

async function stack (t: Test): Promise<Stack> {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  // PostgreSQL behind a proxy the test can cut
  const { proxy, url } = await proxiedDatabase(t, TEST_DATABASE_URL)
  const spool = mkdtempSync(join(tmpdir(), 'tmt-reconcile-'))
  t.teardown(() => rmSync(spool, { recursive: true, force: true }))
  // one spool folder for both replicas: a replica's restart finds what its killed self left there
  const env = { DATABASE_URL: url, USAGE_SPOOL_DIR: spool }
  const replicas = await startReplicas(t, mistral.url, env)
  const ws = await replicas.createWorkspace()
  return { mistral, proxy, replicas, ws, env }
}

/** Plain and streamed calls, alternating replicas; every one answered 200. */
async function traffic (t: Test, urls: string[], token: string, count: number, tag: string) {
  const replies = await Promise.all(Array.from({ length: count }, (_, i) =>
    call(urls[i % urls.length], token, CHAT, body(`${tag} ${i} ${'word '.repeat(i % 7)}`, i % 2 === 1))))
  t.same(replies.map((reply) => reply.status), Array(count).fill(200), `${tag}: ${count} calls answered`)
  return replies
}

/** Streams the client hangs up on after the first event (the fake holds them there, so no usage was sent). */
async function aborted (t: Test, { mistral, replicas, ws }: Stack, count: number) {
  const gate = mistral.holdStreams()
  await Promise.all(Array.from({ length: count }, async (_, i) => {
    const controller = new AbortController()
    const res = await fetch(replicas.urls[i % 2] + CHAT, {
      method: 'POST',
      headers: { authorization: `Bearer ${ws.token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body(`aborted ${i}`, true)),
      signal: controller.signal
    })
    const reader = (res.body as ReadableStream<Uint8Array>).getReader()
    await reader.read()
    controller.abort()
  }))
  await waitFor(() => mistral.received.filter((r) => r.aborted).length >= count, 'the fake saw the hang-ups')
  gate.release()
  t.pass(`${count} streams aborted by their client`)
}

/** Streams Mistral cuts after two events. */
async function cut (t: Test, { mistral, replicas, ws }: Stack, count: number) {
  for (let i = 0; i < count; i++) {
    mistral.faultNextStream({ after: 2, mode: 'cut', path: CHAT })
    const reply = await call(replicas.urls[i % 2], ws.token, CHAT, body(`cut ${i}`, true))
    t.equal(reply.status, 200, 'a cut stream started as a 200')
  }
}

/** Calls that meet a 429 with Retry-After: 1, are held by the gateway and succeed on the retry. */
async function retried (t: Test, { mistral, replicas, ws }: Stack, count: number) {
  for (let i = 0; i < count; i++) {
    mistral.enqueueRateLimit({ retryAfterSeconds: 1, filter: CHAT })
    const reply = await call(replicas.urls[i % 2], ws.token, CHAT, body(`retried ${i}`))
    t.equal(reply.status, 200, 'a 429-retried call succeeded')
  }
}

async function waitFor (ready: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs
  while (!(await ready())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`)
    await sleep(50)
  }
}

interface Sums { calls: number, prompt: number, completion: number, billed: number }

async function ledger (workspaceId: string) {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await client.connect()
  try {
    const { rows } = await client.query(
      'select estimated, status, prompt_tokens, completion_tokens, billed_cost_micros from usage_records ' +
      'where workspace_id = $1', [workspaceId])
    return rows as Array<{ estimated: boolean, status: number, prompt_tokens: number, completion_tokens: number,
      billed_cost_micros: string }>
  } finally {
    await client.end()
  }
}

const sumOf = (rows: Awaited<ReturnType<typeof ledger>>): Sums => ({
  calls: rows.length,
  prompt: rows.reduce((sum, row) => sum + Number(row.prompt_tokens), 0),
  completion: rows.reduce((sum, row) => sum + Number(row.completion_tokens), 0),
  billed: rows.reduce((sum, row) => sum + Number(row.billed_cost_micros), 0)
})

/** A counter's total over the replicas, for one workspace (and optionally one more label). */
async function metricTotal (urls: string[], name: string, slug: string, extra = '') {
  let total = 0
  for (const url of urls) {
    const text = await (await fetch(url + '/metrics', { headers: SCRAPE_HEADERS })).text()
    for (const line of text.split('\n')) {
      if (!line.startsWith(name + '{') || !line.includes(`workspace="${slug}"`) || !line.includes(extra)) continue
      total += Number(line.slice(line.lastIndexOf(' ') + 1))
    }
  }
  return total
}

/**
 * The three-way (four-way) reconciliation. The fake's side: every upstream 2xx of the workspace's key is one call
 * served; those that carried usage to the gateway (not aborted, not cut) are the exact tokens; the rest are the
 * calls the ledger can only estimate, and must say so.
 */
async function reconcile (t: Test, s: Stack, { metrics = true, expectedCalls }: { metrics?: boolean, expectedCalls: number }) {
  const served = s.mistral.received.filter((r) => r.apiKey === s.ws.mistralKey && r.path.startsWith(CHAT) &&
    r.status !== undefined && r.status < 300)
  t.equal(served.length, expectedCalls, `the fake served ${expectedCalls} calls`)
  const exact = served.filter((r) => r.usage !== undefined && !r.aborted && r.fault === undefined)
  const fake = {
    prompt: exact.reduce((sum, r) => sum + Number(r.usage?.prompt_tokens ?? 0), 0),
    completion: exact.reduce((sum, r) => sum + Number(r.usage?.completion_tokens ?? 0), 0)
  }
  const { records } = await s.replicas.settledUsage(s.ws, expectedCalls, 40_000)
  t.equal(records.length, expectedCalls, 'one ledger record per call served, none twice')
  const rows = await ledger(s.ws.id)
  const known = sumOf(rows.filter((row) => !row.estimated))
  const all = sumOf(rows)
  t.same({ calls: known.calls, prompt: known.prompt, completion: known.completion },
    { calls: exact.length, prompt: fake.prompt, completion: fake.completion },
    'fake = ledger, to the token, for every call whose usage Mistral sent')
  t.equal(all.calls - known.calls, served.length - exact.length, 'every other call is in the ledger, flagged estimated')

  const month = new Date().toISOString().slice(0, 7)
  const statement = (await s.replicas.admin('GET', `/admin/v1/workspaces/${s.ws.slug}/statements/${month}`)).json
  const lines = statement.lines as Array<{ calls: number, promptTokens: number, completionTokens: number }>
  t.same({
    calls: statement.totals.calls,
    prompt: lines.reduce((sum, line) => sum + line.promptTokens, 0),
    completion: lines.reduce((sum, line) => sum + line.completionTokens, 0),
    billed: statement.totals.billedCostMicros
  }, all, 'ledger = statement, to the token and the micro-unit')

  if (!metrics) return
  t.same({
    calls: await metricTotal(s.replicas.urls, 'tramontane_requests_total', s.ws.slug, 'operation="chat"'),
    prompt: await metricTotal(s.replicas.urls, 'tramontane_tokens_total', s.ws.slug, 'type="input"'),
    completion: await metricTotal(s.replicas.urls, 'tramontane_tokens_total', s.ws.slug, 'type="output"'),
    billed: await metricTotal(s.replicas.urls, 'tramontane_spend_micros_total', s.ws.slug)
  }, all, 'ledger = the sum of both replicas\' metrics')
}

// each test has its own stack (fake, PostgreSQL proxy, spool, replicas): the 30 s outage, first, runs beside the
// other two, one after the other
t.jobs = 2

t.test('PostgreSQL unreachable for 30 s mid-run: nothing lost, nothing twice', async (t) => {
  const s = await stack(t)
  await traffic(t, s.replicas.urls, s.ws.token, 10, 'before')
  s.proxy.cut()
  const cutAt = Date.now()
  let during = 0
  // calls keep coming through the outage (the token lookups were cached by the first calls)
  while (Date.now() - cutAt < 30_000) {
    await traffic(t, s.replicas.urls, s.ws.token, 6, `outage ${during / 6}`)
    during += 6
    await sleep(2_000)
  }
  await aborted(t, s, 2)
  await cut(t, s, 1)
  s.proxy.restore()
  t.comment(`${during} calls made while PostgreSQL was away for ${Date.now() - cutAt} ms`)
  await traffic(t, s.replicas.urls, s.ws.token, 6, 'after')
  await reconcile(t, s, { expectedCalls: 10 + during + 2 + 1 + 6 })
})

t.test('a mixed run over two replicas reconciles: fake = ledger = metrics = statement', async (t) => {
  const s = await stack(t)
  await traffic(t, s.replicas.urls, s.ws.token, 24, 'mixed')
  await aborted(t, s, 4)
  await cut(t, s, 2)
  await retried(t, s, 2)
  await traffic(t, s.replicas.urls, s.ws.token, 10, 'after')
  await reconcile(t, s, { expectedCalls: 24 + 4 + 2 + 2 + 10 })
})

t.test('a replica SIGKILLed mid-run: its restart replays what it had not written; nothing lost, nothing twice',
  async (t) => {
    const s = await stack(t)
    await traffic(t, s.replicas.urls, s.ws.token, 10, 'before')
    // PostgreSQL away so the victim's records are only in its spool, and two streams in flight on it when it dies
    s.proxy.cut()
    await traffic(t, s.replicas.urls, s.ws.token, 8, 'unwritten')
    const gate = s.mistral.holdStreams()
    // the second: the first serves the admin API the test reads the ledger through
    const victim = s.replicas.gateways[1]
    const inFlight = await Promise.all([0, 1].map(async (i) => {
      const res = await fetch(victim.url + CHAT, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.ws.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body(`in flight ${i}`, true))
      })
      const reader = (res.body as ReadableStream<Uint8Array>).getReader()
      await reader.read()
      reader.read().catch(() => {})
    }))
    t.equal(inFlight.length, 2, 'two streams in flight on the victim')
    // the 'unwritten' calls it served are in its spool: a call's record is appended there, synchronously, just before
    // its metrics count it
    await waitFor(async () => await metricTotal([victim.url], 'tramontane_requests_total', s.ws.slug,
      'operation="chat"') >= (10 + 8) / 2, 'the victim metered its share of the calls')
    process.kill(-victim.pid, 'SIGKILL')
    await victim.stop()
    gate.release()
    s.proxy.restore()
    const survivor = s.replicas.urls[0]
    await traffic(t, [survivor], s.ws.token, 4, 'survivor')
    // the victim's restart, on the same spool folder, replays its records and the estimates of its calls in flight
    const restarted = await startGatewayProcess(t, { ...gatewayEnv(s.mistral.url), LOG_LEVEL: 'warn', ...s.env })
    await traffic(t, [restarted.url], s.ws.token, 2, 'restarted')
    await reconcile(t, s, { metrics: false, expectedCalls: 10 + 8 + 2 + 4 + 2 })
    const rows = await ledger(s.ws.id)
    t.equal(rows.filter((row) => row.status === 0 && row.estimated).length, 2,
      'the two calls in flight at the kill are billed from their estimate, status 0')
  })
