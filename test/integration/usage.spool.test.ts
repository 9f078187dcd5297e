import { randomUUID } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import { SCRAPE_HEADERS, TEST_ADMIN_TOKEN, TEST_DATABASE_URL, buildTestApp, gatewayEnv } from '../helpers/app.js'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { startGatewayProcess } from '../helpers/gateway-process.js'
import { call } from '../helpers/replicas.js'
import { proxiedDatabase } from '../helpers/tcp-proxy.js'
import { createSpool } from '../../src/usage/spool.js'

// Issue 5, "lossless and exactly once": a usage record is on disk before it is queued; PostgreSQL down, a SIGKILL or
// a restart loses none, and a replay never counts one twice.

const CHAT = '/v1/chat/completions'
const chat = (content: string, stream = false) =>
  ({ model: 'mistral-small-latest', messages: [{ role: 'user', content }], stream })

function scratchDir (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'tmt-spool-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A pid that no process holds: one of a child that has exited. */
function deadPid (): number {
  return spawnSync(process.execPath, ['-e', '0']).pid as number
}

function orphanFolder (dir: string, name: string, owner: { host: string, pid: number }, segments: string[][]) {
  const folder = join(dir, name)
  mkdirSync(folder, { recursive: true })
  writeFileSync(join(folder, 'owner'), JSON.stringify(owner))
  segments.forEach((lines, i) => writeFileSync(join(folder, `00000000${i + 1}.jsonl`), lines.map((l) => l + '\n').join('')))
  return folder
}

async function ledger (query: string, values: unknown[]) {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await client.connect()
  try {
    return (await client.query(query, values)).rows
  } finally {
    await client.end()
  }
}

const recordsOf = async (workspaceId: string) => (await ledger(
  'select request_id, status, estimated, prompt_tokens, completion_tokens, billed_cost_micros from usage_records ' +
  'where workspace_id = $1', [workspaceId])) as Array<{
  request_id: string, status: number, estimated: boolean, prompt_tokens: number, completion_tokens: number,
  billed_cost_micros: string
}>

t.test('the spool: segments leave the disk only when released; orphans are claimed once', async (t) => {
  const dir = scratchDir(t)
  const spool = createSpool({ dir })
  t.teardown(() => spool.close())
  spool.append('{"a":1}')
  spool.append('{"a":2}')
  const [own] = readdirSync(dir)
  t.same(readdirSync(join(dir, own)).sort(), ['000000001.jsonl', 'owner'], 'one segment beside the owner file')
  spool.seal()
  spool.append('{"a":3}')
  await spool.release()
  t.same(readdirSync(join(dir, own)).sort(), ['000000002.jsonl', 'owner'], 'the sealed segment is gone, the open one stays')
  // a segment holding the start of a call in flight outlives its release until the call ends
  spool.pin(2)
  spool.seal()
  await spool.release()
  t.same(readdirSync(join(dir, own)).sort(), ['000000002.jsonl', 'owner'], 'a pinned segment stays')
  spool.unpin(2)
  await spool.release()
  t.same(readdirSync(join(dir, own)), ['owner'], 'unpinned, the next release deletes it')

  // a live gateway's folder (this process, fresh heartbeat) is never taken
  const STALE_MS = 300
  const other = createSpool({ dir, staleMs: STALE_MS })
  t.teardown(() => other.close())
  t.same(other.claimOrphans(), [], 'nothing to claim while the owner lives')

  // a dead gateway of this host, which had itself claimed a folder before it died; a cut last line
  orphanFolder(dir, 'dead', { host: hostname(), pid: deadPid() }, [['{"r":1}', '{"r":2}'], ['{"r":3}', '{"r":']])
  orphanFolder(join(dir, 'dead'), 'claimed-older', { host: hostname(), pid: deadPid() }, [['{"r":0}']])
  // other hosts' gateways on a shared volume, each stamping its heartbeat with its own clock: one alive whose clock is
  // an hour behind this host's, one dead whose clock was an hour ahead, one dead on time
  const hour = 3_600_000
  const behind = orphanFolder(dir, 'alive-behind', { host: 'elsewhere', pid: 1 }, [['{"r":9}']])
  const touch = (folder: string, offsetMs: number) => {
    const at = new Date(Date.now() + offsetMs)
    utimesSync(join(folder, 'owner'), at, at)
  }
  touch(behind, -hour)
  touch(orphanFolder(dir, 'dead-ahead', { host: 'elsewhere', pid: 1 }, [['{"r":5}']]), hour)
  touch(orphanFolder(dir, 'dead-on-time', { host: 'elsewhere', pid: 1 }, [['{"r":4}']]), -60_000)

  t.same([...other.claimOrphans()].sort(), ['{"r":', '{"r":0}', '{"r":1}', '{"r":2}', '{"r":3}'].sort(),
    'at once: the dead folder of this host, also what it had claimed; another host\'s only once watched')
  // the live one's heartbeat goes on meanwhile, an hour behind
  await sleep(STALE_MS / 2)
  touch(behind, -hour + 1_000)
  await sleep(STALE_MS / 2 + 50)
  t.same([...other.claimOrphans()].sort(), ['{"r":4}', '{"r":5}'],
    'the other hosts\' folders whose heartbeat did not change while watched, whatever their clocks said')
  t.same(spool.claimOrphans(), [], 'a second claimer finds nothing: the rename moved them')
  t.ok(readdirSync(dir).includes('alive-behind'), 'the live folder of a host whose clock is behind stays')
  await other.release()
  const [otherOwn] = readdirSync(dir).filter((name) => name !== own && name !== 'alive-behind')
  t.same(readdirSync(join(dir, otherOwn)), ['owner'], 'released: the claimed folders are gone')
  other.close()
  t.notOk(readdirSync(dir).includes(otherOwn), 'a closed spool holding nothing removes its folder')
})

t.test('PostgreSQL unreachable: calls go on, records wait in the spool, and all reach the ledger once it returns',
  async (t) => {
    const { proxy, url } = await proxiedDatabase(t, TEST_DATABASE_URL)
    const spoolDir = scratchDir(t)
    const testApp = await buildTestApp(t, { DATABASE_URL: url, USAGE_SPOOL_DIR: spoolDir })
    const { app } = testApp
    const ws = await testApp.createWorkspace()
    const send = async (content: string, stream = false) => {
      const res = await app.inject({ method: 'POST', url: CHAT, headers: ws.headers, payload: chat(content, stream) })
      return { status: res.statusCode, requestId: res.headers['x-request-id'] as string }
    }
    const before = await send('before the outage')
    t.equal(before.status, 200)
    await app.usage.flush()

    proxy.cut()
    const during = []
    for (let i = 0; i < 10; i++) during.push(await send(`during the outage ${i}`, i % 2 === 1))
    t.same(during.map((reply) => reply.status), Array(10).fill(200), 'the proxy serves every call while PostgreSQL is away')
    await app.usage.flush() // fails: PostgreSQL is unreachable
    t.equal(app.usage.pending(), 10, 'the ten records wait')
    const [own] = readdirSync(spoolDir)
    const segments = readdirSync(join(spoolDir, own)).filter((name) => name.endsWith('.jsonl'))
    t.ok(segments.length > 0, `and they are on disk (${segments.join(', ')})`)
    t.same(await recordsOf(ws.id).then((rows) => rows.map((row) => row.request_id)), [before.requestId],
      'the ledger has only the call made before the outage')

    proxy.restore()
    const deadline = Date.now() + 15_000
    while (app.usage.pending() > 0 && Date.now() < deadline) await sleep(100)
    t.equal(app.usage.pending(), 0, 'the queue drained on its own once PostgreSQL answered')
    const rows = await recordsOf(ws.id)
    t.same(rows.map((row) => row.request_id).sort(), [before, ...during].map((reply) => reply.requestId).sort(),
      'every call has exactly one record')
    t.ok(rows.every((row) => row.prompt_tokens > 0 && row.completion_tokens > 0), 'with the tokens Mistral reported')
    t.same(readdirSync(join(spoolDir, own)).filter((name) => name.endsWith('.jsonl')), [],
      'the spool holds nothing once the records are in the ledger')
    const [daily] = await ledger('select sum(calls)::int as calls from usage_daily where workspace_id = $1', [ws.id])
    t.equal(daily.calls, 11, 'the daily rollup counts each call once')
  })

t.test('a gateway SIGKILLed while PostgreSQL is away loses nothing: its restart replays the spool, once', async (t) => {
  const mistral = await startFakeMistral()
  t.teardown(() => mistral.close())
  const { proxy, url } = await proxiedDatabase(t, TEST_DATABASE_URL)
  const spoolDir = scratchDir(t)
  const env = { ...gatewayEnv(mistral.url), DATABASE_URL: url, USAGE_SPOOL_DIR: spoolDir, LOG_LEVEL: 'warn' }
  const first = await startGatewayProcess(t, env)
  const admin = async (path: string, body: unknown) => {
    const res = await fetch(first.url + '/admin/v1' + path, {
      method: 'POST',
      headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify(body)
    })
    return res.json() as Promise<any>
  }
  const slug = `spool-${Date.now().toString(36)}`
  const workspace = await admin('/workspaces', { slug, name: 'Spool' })
  await admin(`/workspaces/${slug}/mistral-keys`, { name: 'default', key: `mk-${slug}` })
  const { token } = await admin(`/workspaces/${slug}/tokens`, { name: 'app' })
  t.equal((await call(first.url, token, CHAT, chat('warm the token cache'))).status, 200)
  const deadline = Date.now() + 10_000
  while ((await recordsOf(workspace.id)).length < 1 && Date.now() < deadline) await sleep(100)

  proxy.cut()
  const replies = []
  for (let i = 0; i < 8; i++) replies.push(await call(first.url, token, CHAT, chat(`unrecorded ${i}`, i % 2 === 0)))
  t.same(replies.map((reply) => reply.status), Array(8).fill(200))
  await sleep(300) // each of them settled: its record follows the answer by a moment
  // and one stream still in flight when the gateway dies: Mistral sent its first event, then holds
  const gate = mistral.holdStreams()
  t.teardown(() => gate.release())
  const inFlight = await fetch(first.url + CHAT, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(chat('cut by the kill', true))
  })
  const inFlightId = inFlight.headers.get('x-request-id')
  const reader = (inFlight.body as ReadableStream<Uint8Array>).getReader()
  t.ok((await reader.read()).value, 'the in-flight stream had started')
  reader.read().catch(() => {})
  process.kill(-first.pid, 'SIGKILL')
  t.equal(await first.stop(), null, 'killed, no exit code')
  t.equal((await recordsOf(workspace.id)).length, 1, 'none of the eight reached the ledger before the kill')

  proxy.restore()
  const second = await startGatewayProcess(t, env)
  const ids = replies.map((reply) => reply.headers.get('x-request-id'))
  let rows = await recordsOf(workspace.id)
  const replayDeadline = Date.now() + 15_000
  while (rows.length < 10 && Date.now() < replayDeadline) {
    await sleep(100)
    rows = await recordsOf(workspace.id)
  }
  t.equal(rows.length, 10, 'the restart replayed the nine records') || t.comment(second.output())
  const ended = rows.filter((row) => row.request_id !== inFlightId)
  t.ok(ids.every((id) => ended.some((row) => row.request_id === id)), 'each ended call under its own request id')
  t.ok(ended.every((row) => row.status === 200 && !row.estimated && row.completion_tokens > 0),
    'with what Mistral reported')
  const cut = rows.find((row) => row.request_id === inFlightId)
  t.match(cut, { status: 0, estimated: true, completion_tokens: 0 },
    'the call in flight is billed from its estimate, flagged estimated, status 0 (no answer known)')
  t.ok(Number(cut?.prompt_tokens) > 0 && Number(cut?.billed_cost_micros) > 0, 'at the prompt estimate\'s price')
  t.same(readdirSync(spoolDir).filter((name) => readdirSync(join(spoolDir, name)).some((f) => f.endsWith('.jsonl'))), [],
    'no segment is left once replayed')
})

t.test('a record PostgreSQL refuses is set aside in the log; the records beside it reach the ledger', async (t) => {
  const testApp = await buildTestApp(t, { USAGE_SPOOL_DIR: scratchDir(t) })
  const { app } = testApp
  const one = await testApp.createWorkspace()
  const two = await testApp.createWorkspace()
  const send = async (ws: typeof one, body: Record<string, unknown>) =>
    (await app.inject({ method: 'POST', url: CHAT, headers: ws.headers, payload: body })).headers['x-request-id'] as string

  // a model name the ledger cannot hold as it came (a NUL, half a surrogate pair) is written without them
  const odd = await send(one, { ...chat('an odd model name'), model: 'ft:mistral-small-latest:x\u0000\ud800' })
  const plain = await send(two, chat('a plain call'))
  await app.usage.flush()
  t.equal(app.usage.pending(), 0, 'nothing waits')
  const [stored] = await ledger('select model from usage_records where request_id = $1', [odd])
  t.equal(stored?.model, 'ft:mistral-small-latest:x\ufffd', 'the odd name, as text the ledger holds')

  // a record PostgreSQL refuses (a NUL in its text: only the meter cleans it, and this one comes past the meter) goes
  // in the same batch as good ones, one of them with a count past an integer's 2^31 (a large batch job's)
  const base = (await ledger('select * from usage_records where request_id = $1', [plain]))[0]
  const refusedId = randomUUID()
  const good = [randomUUID(), randomUUID()]
  const row = (requestId: string, promptTokens: number, model = 'mistral-small-latest') => ({
    requestId, workspaceId: two.id, tokenId: base.token_id, keyName: 'default', operation: 'chat',
    model, pricedModel: 'mistral-small-latest', promptTokens, cachedTokens: 0,
    completionTokens: 1, totalTokens: promptTokens + 1, pages: 0, audioSeconds: 0, characters: 0, connectorTokens: 0,
    serviceTier: null, listCostMicros: 1, billedCostMicros: 1, estimated: false, streamed: false, status: 200,
    upstreamStatus: 200, latencyMs: 1, createdAt: new Date(), ttftMs: null
  })
  app.usage.record(row(good[0], 5))
  app.usage.record(row(refusedId, 7, 'mistral-small-latest\u0000'))
  app.usage.record(row(good[1], 3_000_000_000))
  await app.usage.flush()
  t.equal(app.usage.pending(), 0, 'the refused record does not hold the queue')
  const landed = await ledger('select request_id from usage_records where request_id = any($1)', [[...good, refusedId]])
  t.same(landed.map((r) => r.request_id).sort(), [...good].sort(), 'the records beside it are in the ledger')
  const line = testApp.logs.map((l) => JSON.parse(l)).find((l) => l.msg?.startsWith('usage record refused'))
  t.equal(line?.level, 50, 'the refused one is logged as an error')
  t.equal(line?.record?.requestId, refusedId, 'whole, for the operator to bill by hand')
  t.equal(line?.record?.model, 'mistral-small-latest\u0000')
  const [large] = await ledger('select prompt_tokens from usage_records where request_id = $1', [good[1]])
  t.equal(Number(large?.prompt_tokens), 3_000_000_000, 'a count past 2^31 is the ledger\'s')
})

t.test('a spool that cannot be written loses durability, not usage: calls go on, their records reach the ledger',
  async (t) => {
    const spoolDir = scratchDir(t)
    const testApp = await buildTestApp(t, { USAGE_SPOOL_DIR: spoolDir })
    const { app } = testApp
    const ws = await testApp.createWorkspace()
    const send = async (content: string, stream = false) => {
      const res = await app.inject({ method: 'POST', url: CHAT, headers: ws.headers, payload: chat(content, stream) })
      return { status: res.statusCode, requestId: res.headers['x-request-id'] as string }
    }
    const before = await send('the spool is writable')
    await app.usage.flush()
    const [own] = readdirSync(spoolDir)
    const folder = join(spoolDir, own)
    // the folder is gone (a cleanup, or another gateway took it for a dead one's) and a file stands in its place: no
    // segment can be opened there, nor the folder made again; a full or failing disk refuses writes the same way
    rmSync(folder, { recursive: true, force: true })
    writeFileSync(folder, '')

    const during = [await send('unwritable'), await send('unwritable, streamed', true), await send('unwritable again')]
    t.same(during.map((reply) => reply.status), [200, 200, 200], 'every call is served')
    const [record] = await ledger('select * from usage_records where request_id = $1', [before.requestId])
    const direct = {
      requestId: randomUUID(), workspaceId: ws.id, tokenId: record.token_id, keyName: 'default', operation: 'chat',
      model: 'mistral-small-latest', pricedModel: 'mistral-small-latest', promptTokens: 3, completionTokens: 4,
      totalTokens: 7, listCostMicros: 1, billedCostMicros: 1, status: 200, upstreamStatus: 200, latencyMs: 1,
      createdAt: new Date()
    }
    const pending = app.usage.pending()
    t.doesNotThrow(() => app.usage.begin(direct), 'begin does not throw')
    t.doesNotThrow(() => app.usage.record(direct), 'nor does record')
    t.equal(app.usage.pending(), pending + 1, 'the record is queued')
    await app.usage.flush()
    t.equal(app.usage.pending(), 0)
    t.same((await recordsOf(ws.id)).map((row) => row.request_id).sort(),
      [before, ...during].map((reply) => reply.requestId).concat(direct.requestId).sort(),
      'every record is in the ledger')
    const failures = testApp.logs.map((line) => JSON.parse(line)).filter((line) => line.msg?.startsWith('usage spool'))
    t.equal(failures.length, 1, 'one error for the whole streak of failures')
    t.match(failures[0], { level: 50, msg: /^usage spool write failed/, err: { code: 'ENOTDIR' } })
    const writable = async () => /^tramontane_usage_spool_writable 1$/m.test(
      (await app.inject({ method: 'GET', url: '/metrics', headers: SCRAPE_HEADERS })).body) ? 1 : 0
    t.equal(await writable(), 0, 'the spool\'s gauge says so, for the alert')

    rmSync(folder)
    const after = { ...direct, requestId: randomUUID() }
    app.usage.record(after)
    t.match(readdirSync(folder).sort(), ['000000', 'owner'].map((name) => new RegExp(`^${name}`)),
      'the next record makes the folder again, its owner file and a segment')
    t.match(testApp.logs.map((line) => JSON.parse(line)).filter((line) => line.msg?.startsWith('usage spool')).at(-1),
      { level: 30, msg: /^usage spool writable again/ })
    t.equal(await writable(), 1, 'and that it is writable again')
    await app.usage.flush()
    t.equal((await recordsOf(ws.id)).length, 6)
  })
