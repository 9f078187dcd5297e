import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { startFakeMistral } from '../helpers/fake-mistral.js'
import { call, startReplicas, statusCounts, type ReplicaWorkspace, type Reply } from '../helpers/replicas.js'

// Issue #3, rate limits across replicas: requests per minute, tokens per minute reserved and reconciled, concurrent
// calls. Two gateway processes share one Redis; between them and the fake Mistral sits a counting proxy, so that the
// test sees what the upstream sees of each workspace (its Mistral key) and can slow one workspace's calls.

const MESSAGES = [{ role: 'user', content: 'Hi' }]
// the gateway's estimate of that prompt: bytes / 2 + 8 a message (src/pricing/estimate.ts)
const ESTIMATED_PROMPT = 1 + 8

/** Counts each Mistral key's calls in flight upstream, and holds those of the keys given a delay. */
async function countingProxy (target: string) {
  const inFlight = new Map<string, number>()
  const peak = new Map<string, number>()
  const delays = new Map<string, number>()
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const key = /^Bearer\s+(\S+)/.exec(req.headers.authorization ?? '')?.[1] ?? ''
    const now = (inFlight.get(key) ?? 0) + 1
    inFlight.set(key, now)
    peak.set(key, Math.max(peak.get(key) ?? 0, now))
    let counted = true
    const done = () => {
      if (counted) inFlight.set(key, (inFlight.get(key) ?? 1) - 1)
      counted = false
    }
    res.once('close', done)
    setTimeout(() => {
      const upstream = request(target + req.url, { method: req.method, headers: req.headers }, (answer) => {
        // counted out before the last byte leaves: the gateway cannot admit a next call before it has it
        answer.once('end', done)
        res.writeHead(answer.statusCode ?? 502, answer.headers)
        answer.pipe(res)
      })
      upstream.once('error', () => res.destroy())
      req.pipe(upstream)
    }, delays.get(key) ?? 0)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    peak,
    delays,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  }
}

const mistral = await startFakeMistral()
t.teardown(() => mistral.close())
const proxy = await countingProxy(mistral.url)
t.teardown(() => proxy.close())
const replicas = await startReplicas(t, proxy.url)

const chat = (ws: ReplicaWorkspace, i: number, body: Record<string, unknown> = {}) =>
  call(replicas.urls[i % replicas.urls.length], ws.token, '/v1/chat/completions',
    { model: 'mistral-small-latest', messages: MESSAGES, max_tokens: 20, ...body })
const limitsOf = async (ws: ReplicaWorkspace) =>
  (await replicas.admin('GET', `/admin/v1/workspaces/${ws.slug}/limits`)).json
const upstreamOf = (ws: ReplicaWorkspace) => mistral.received.filter((request) => request.apiKey === ws.mistralKey)

/** The 429 of a rate limit: envelope, Retry-After in whole seconds, retry-after-ms, x-ratelimit-* */
function isRateDenial (t: Test, reply: Reply, what: string, code = 'rate_limit_exceeded') {
  t.equal(reply.status, 429, `${what}: 429`)
  t.equal(reply.json?.type, 'rate_limit_error', `${what}: rate_limit_error`)
  t.equal(reply.json?.code, code, `${what}: ${code}`)
  t.match(reply.headers.get('retry-after'), /^[1-9]\d*$/, `${what}: Retry-After in whole seconds`)
  t.match(reply.headers.get('retry-after-ms'), /^[1-9]\d*$/, `${what}: retry-after-ms`)
  t.equal(reply.headers.get('x-should-retry'), 'true', `${what}: x-should-retry true`)
}

// RPM: the burst runs first; the minute it must wait passes while the other limits are tested, and the last test
// collects the retries the first one scheduled
const rpm: {
  ws?: ReplicaWorkspace
  firstAdmittedAt?: number
  early?: Promise<Reply & { plannedAt: number }>
  retried?: Promise<Reply & { plannedAt: number }>
  retryAfter?: number
  deniedAt?: number
} = {}

t.test('rpm 60 across two replicas: a burst of 200 admits exactly 60', async (t) => {
  const ws = await replicas.createWorkspace({ limits: { rpm: 60 } })
  rpm.ws = ws
  const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => chat(ws, i)))
  const admitted = replies.filter((reply) => reply.status === 200)
  const denied = replies.filter((reply) => reply.status !== 200)
  t.comment(`statuses ${JSON.stringify(statusCounts(replies))}`)
  t.equal(admitted.length, 60, 'exactly 60 admitted')
  t.equal(upstreamOf(ws).length, 60, 'Mistral saw 60 calls')
  const header = (reply: Reply, name: string) => reply.headers.get(name) ?? ''
  t.same(admitted.map((reply) => Number(header(reply, 'x-ratelimit-remaining-requests'))).sort((a, b) => a - b),
    Array.from({ length: 60 }, (_, i) => i), 'x-ratelimit-remaining-requests: 59 down to 0 across both replicas')
  t.ok(admitted.every((reply) => header(reply, 'x-ratelimit-limit-requests') === '60' &&
    /^\d+s$/.test(header(reply, 'x-ratelimit-reset-requests'))), 'admitted: x-ratelimit-limit/reset-requests')
  isRateDenial(t, denied[0], 'first denial')
  t.ok(denied.every((reply) => reply.status === 429 && reply.json?.code === 'rate_limit_exceeded' &&
    reply.json?.param === 'rpm' && /^[1-9]\d*$/.test(header(reply, 'retry-after')) &&
    /^[1-9]\d*$/.test(header(reply, 'retry-after-ms')) && header(reply, 'x-ratelimit-limit-requests') === '60' &&
    header(reply, 'x-ratelimit-remaining-requests') === '0' &&
    /^\d+s$/.test(header(reply, 'x-ratelimit-reset-requests'))),
  `all ${denied.length} denials: 429 rate_limit_exceeded, Retry-After, retry-after-ms, x-ratelimit-*`)
  const seconds = denied.map((reply) => Number(reply.headers.get('retry-after')))
  t.ok(seconds.every((s) => s >= 55 && s <= 61),
    `Retry-After ${Math.min(...seconds)}-${Math.max(...seconds)} s: the minute of the oldest call`)

  // the earliest moment any denial said the room would be back, by its whole seconds and by its milliseconds
  rpm.firstAdmittedAt = Math.min(...admitted.map((reply) => reply.sentAt))
  const byMs = Math.min(...denied.map((reply) => reply.doneAt + Number(header(reply, 'retry-after-ms'))))
  // the denial whose Retry-After promised the room back first: the strictest claim to check
  const first = denied.reduce((soonest, reply) => reply.doneAt + 1000 * Number(header(reply, 'retry-after')) <
    soonest.doneAt + 1000 * Number(header(soonest, 'retry-after')) ? reply : soonest)
  rpm.retryAfter = Number(header(first, 'retry-after'))
  rpm.deniedAt = first.doneAt
  const at = (plannedAt: number) => sleep(Math.max(0, plannedAt - Date.now()))
    .then(async () => ({ ...await chat(ws, 1), plannedAt }))
  // 2 s before the window allows it, a call is still refused (and a refusal takes nothing)
  rpm.early = at(byMs - 2000)
  // that denial's Retry-After, slept: the retry succeeds
  rpm.retried = at(first.doneAt + 1000 * rpm.retryAfter)
})

t.test('tpm: reserved before the call, reconciled after it with what Mistral reported', async (t) => {
  const ws = await replicas.createWorkspace({ limits: { tpm: 100_000 } })
  // one call alone: its reservation is the prompt estimate + max_tokens
  const first = await chat(ws, 0, { max_tokens: 50 })
  t.equal(first.status, 200, 'served')
  t.equal(first.headers.get('x-ratelimit-limit-tokens'), '100000', 'x-ratelimit-limit-tokens')
  t.equal(first.headers.get('x-ratelimit-remaining-tokens'), String(100_000 - ESTIMATED_PROMPT - 50),
    'reserved: prompt estimate + max_tokens')
  t.match(first.headers.get('x-ratelimit-reset-tokens'), /^\d+s$/, 'x-ratelimit-reset-tokens')

  // then 40 calls at once over both replicas, streamed and not, with other prompts and max_tokens, n 2 on some
  const replies = await Promise.all(Array.from({ length: 40 }, (_, i) => chat(ws, i, {
    messages: [{ role: 'user', content: 'x'.repeat(4 * i + 1) }],
    max_tokens: 5 + 3 * i,
    stream: i % 2 === 0,
    ...(i % 5 === 0 ? { n: 2 } : {})
  })))
  t.same(statusCounts(replies), { 200: 40 }, 'all served')
  const reported = () => upstreamOf(ws).reduce((sum, request) => sum + Number(request.usage?.total_tokens ?? 0), 0)
  t.equal(upstreamOf(ws).length, 41, 'Mistral answered 41 calls')
  // settlement runs after the response: wait for the counter to come down from the reservations
  let used = -1
  for (const deadline = Date.now() + 5_000; Date.now() < deadline; await sleep(50)) {
    used = (await limitsOf(ws)).workspace.limits.tpm.used
    if (used === reported()) break
  }
  t.equal(used, reported(), `tpm used ${used} = the ${reported()} total_tokens Mistral reported`)
  const reserved = ESTIMATED_PROMPT + 50 +
    replies.reduce((sum, _, i) => sum + 1 + 2 * i + 8 + (5 + 3 * i) * (i % 5 === 0 ? 2 : 1), 0)
  t.comment(`reserved ${reserved} tokens in all (estimates), reconciled to ${used}`)
})

t.test('tpm: reservations of calls in flight count; settled calls give back what they did not use', async (t) => {
  const ws = await replicas.createWorkspace({ limits: { tpm: 1000 } })
  // three streams of max_tokens 300 reserve 3 × 309 = 927 of 1000, and are held open after their first event
  const gate = mistral.holdStreams()
  const streams = Array.from({ length: 3 }, (_, i) => chat(ws, i, { max_tokens: 300, stream: true }))
  for (const deadline = Date.now() + 5_000; upstreamOf(ws).length < 3 && Date.now() < deadline;) await sleep(20)
  const fourth = await chat(ws, 1, { max_tokens: 300 })
  isRateDenial(t, fourth, 'a fourth call while three are in flight')
  t.equal(fourth.headers.get('x-ratelimit-limit-tokens'), '1000', 'x-ratelimit-limit-tokens')
  t.equal(fourth.headers.get('x-ratelimit-remaining-tokens'), '0', 'x-ratelimit-remaining-tokens 0')
  gate.release()
  t.same((await Promise.all(streams)).map((reply) => reply.status), [200, 200, 200], 'the streams end')
  // each used 1 + 12 tokens: the minute now holds 39, and the fourth fits without waiting for the minute
  let again: Reply | undefined
  for (const deadline = Date.now() + 5_000; Date.now() < deadline; await sleep(50)) {
    again = await chat(ws, 0, { max_tokens: 300 })
    if (again.status === 200) break
  }
  t.equal(again?.status, 200, 'the fourth call is admitted once the streams settled')

  // a call larger than the whole limit is refused for good, never told to retry
  const huge = await chat(ws, 1, { max_tokens: 5000 })
  t.equal(huge.status, 429, 'larger than the limit: 429')
  t.equal(huge.json?.code, 'request_exceeds_token_limit', 'request_exceeds_token_limit')
  t.equal(huge.headers.get('x-should-retry'), 'false', 'x-should-retry: false')
  t.equal(huge.headers.get('retry-after'), null, 'no Retry-After')
})

t.test('concurrency 5: the upstream sees at most 5 of the workspace\'s calls; a neighbour is not slowed', async (t) => {
  const LATENCY = 400
  const noisy = await replicas.createWorkspace({ limits: { concurrency: 5 } })
  const quiet = await replicas.createWorkspace({ limits: { concurrency: 5 } })
  proxy.delays.set(noisy.mistralKey, LATENCY)
  proxy.delays.set(quiet.mistralKey, LATENCY)
  const denials: Reply[] = []
  // a client that waits retry-after-ms after each concurrency denial
  const persistent = async (i: number) => {
    for (;;) {
      const reply = await chat(noisy, i)
      if (reply.status !== 429 || reply.json?.code !== 'concurrency_limit_exceeded') return reply
      denials.push(reply)
      await sleep(Number(reply.headers.get('retry-after-ms') ?? 1000))
    }
  }
  const started = Date.now()
  const noisyCalls = Promise.all(Array.from({ length: 25 }, (_, i) => persistent(i)))
  // the neighbour: 4 calls at a time, three times over, while the noisy one queues
  const quietReplies: Reply[] = []
  for (let round = 0; round < 3; round++) {
    quietReplies.push(...await Promise.all(Array.from({ length: 4 }, (_, i) => chat(quiet, i + round))))
    await sleep(300)
  }
  const noisyReplies = await noisyCalls
  t.comment(`noisy: 25 calls served in ${Date.now() - started} ms after ${denials.length} denials; ` +
    `upstream peak ${proxy.peak.get(noisy.mistralKey)}, neighbour peak ${proxy.peak.get(quiet.mistralKey)}`)
  t.same(statusCounts(noisyReplies), { 200: 25 }, 'every noisy call served in the end')
  t.equal(proxy.peak.get(noisy.mistralKey), 5, 'the upstream saw at most (and at times exactly) 5 of its calls at once')
  t.ok(denials.length > 0, 'the rest waited')
  isRateDenial(t, denials[0], 'a concurrency denial', 'concurrency_limit_exceeded')
  // once calls have settled, the hint is their usual length spread over the 5 slots, not a flat second
  const hint = Number(denials[denials.length - 1].headers.get('retry-after-ms'))
  t.ok(hint >= 50 && hint < 1000, `the last denial's retry-after-ms ${hint}: about ${LATENCY} ms / 5 slots`)
  t.same(statusCounts(quietReplies), { 200: 12 }, 'every neighbour call served')
  const latencies = quietReplies.map((reply) => reply.doneAt - reply.sentAt)
  t.comment(`neighbour latencies ${Math.min(...latencies)}-${Math.max(...latencies)} ms against ${LATENCY} ms upstream`)
  // a queued call waits at least the 1 s its denial names: the neighbour's took less than that on top of the upstream
  t.ok(latencies.every((ms) => ms < LATENCY + 1000), 'the neighbour\'s calls take about the upstream\'s latency')
  const slots = (await limitsOf(noisy)).workspace.limits.concurrency
  t.equal(slots.used, 0, 'every slot released')
})

t.test('per-model limits apply to the model by any of its names', async (t) => {
  for (const key of ['mistral-small-2603', 'mistral-small-latest', 'MISTRAL-SMALL-LATEST']) {
    const ws = await replicas.createWorkspace({ limits: { models: { [key]: { rpm: 2 } } } })
    const replies = [
      await chat(ws, 0),
      await chat(ws, 1, { model: 'MISTRAL-small-latest' }),
      await chat(ws, 0, { model: 'mistral-small-2603' })
    ]
    t.same(replies.map((reply) => reply.status), [200, 200, 429],
      `limits.models['${key}'].rpm 2: the third call is refused`)
  }
})

t.test('a call that names no model counts under no per-model limit, not even the fallback row\'s', async (t) => {
  // an agent's call is quoted at the dearest prices of the book, under the name of its `*` row: a limit on that row,
  // in a currency of this test's own, must not count it. Every call goes to the replica the prices were set on
  const url = replicas.urls[0]
  const fallback = { currency: 'XAU', family: 'chat', inputPerMTok: '0.1', outputPerMTok: '0.1' }
  t.equal((await replicas.admin('PUT', '/admin/v1/prices/*', fallback)).status, 200)
  t.teardown(() => replicas.admin('DELETE', '/admin/v1/prices/*?currency=XAU&family=chat'))
  const ws = await replicas.createWorkspace()
  const patched = await replicas.admin('PATCH', `/admin/v1/workspaces/${ws.slug}`,
    { currency: 'XAU', limits: { models: { '*': { rpm: 1 } } } })
  t.equal(patched.status, 200, 'a workspace in XAU, with a limit on the * row')
  const agent = () => call(url, ws.token, '/v1/agents/completions',
    { agent_id: 'ag_0123456789abcdef', messages: MESSAGES, max_tokens: 20 })
  t.same([(await agent()).status, (await agent()).status], [200, 200], 'two agents calls naming no model: both served')
  const unknown = () => call(url, ws.token, '/v1/chat/completions',
    { model: 'a-model-the-book-does-not-know', messages: MESSAGES, max_tokens: 20 })
  t.same([(await unknown()).status, (await unknown()).status], [200, 429],
    'the limit holds the calls that name a model the row prices')
})

t.test('an OpenAI moderation that names no model counts under the limit of the Mistral model it runs on', async (t) => {
  const ws = await replicas.createWorkspace({ limits: { models: { 'mistral-moderation-2603': { rpm: 1 } } } })
  const moderate = () => call(replicas.urls[0], ws.token, '/v1/moderations', { input: 'Is this fine?' })
  t.same([(await moderate()).status, (await moderate()).status], [200, 429],
    'the dialect names mistral-moderation-2603: its limit of 1 a minute refuses the second')
})

t.test('rpm: Retry-After is truthful, and the 61st admission comes no earlier than the window allows', async (t) => {
  const early = await rpm.early!
  t.comment(`2 s before the window reopens (at +${early.plannedAt - rpm.firstAdmittedAt!} ms): ${early.status}`)
  isRateDenial(t, early, 'a call before the window allows it')
  const retried = await rpm.retried!
  t.comment(`slept the Retry-After of ${rpm.retryAfter} s: the retry went ${retried.plannedAt - rpm.deniedAt!} ms ` +
    'after that denial, ' +
    `${retried.sentAt - rpm.firstAdmittedAt!} ms after the burst began, and got ${retried.status}`)
  t.equal(retried.status, 200, 'the retry after Retry-After succeeds')
  t.ok(retried.sentAt - rpm.firstAdmittedAt! >= 60_000, 'the 61st admission is at least a minute after the first')
  t.equal(upstreamOf(rpm.ws!).length, 61, 'Mistral saw 61 calls in all')
})
