import { Readable } from 'node:stream'
import { Mistral } from '@mistralai/mistralai'
import t, { type Test } from 'tap'
import { buildTestApp, listen, type TestApp, type TestWorkspace } from '../helpers/app.js'

// Every operation the issue lists, driven by the official Mistral SDK pointed at the gateway with a workspace token:
// it works as it does against Mistral, and reaches the fake upstream with the workspace's Mistral key only.

const messages = [{ role: 'user' as const, content: 'Say hello to the gateway' }]

type SetupWithFake = TestApp & { ws: TestWorkspace, fake: TestApp['mistral'], sdk: Mistral }

async function prepare (t: Test): Promise<SetupWithFake> {
  const testApp = await buildTestApp(t)
  const ws = await testApp.createWorkspace()
  const url = await listen(testApp.app)
  return { ...testApp, ws, fake: testApp.mistral, sdk: new Mistral({ apiKey: ws.token, serverURL: url }) } as SetupWithFake
}

async function collect<T> (stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = []
  for await (const item of stream) items.push(item)
  return items
}

/** The workspace's usage records, oldest first. */
async function ledger (s: SetupWithFake) {
  await s.app.usage.flush()
  return (await s.admin('GET', `/admin/v1/workspaces/${s.ws.slug}/usage`)).json.records.reverse()
}

function clean (t: Test, s: SetupWithFake) {
  t.ok(s.fake.received.length > 0, 'calls reached the upstream')
  for (const received of s.fake.received) {
    t.equal(received.apiKey, s.ws.mistralKey, `${received.method} ${received.path} used the workspace key`)
    t.notOk(JSON.stringify(received.headers).includes(s.ws.token), 'no workspace token upstream')
    t.notOk(Object.keys(received.headers).some((name) => name.startsWith('x-tramontane-')), 'no gateway headers')
  }
}

t.test('chat: complete and stream, metered as Mistral reported', async (t) => {
  const s = await prepare(t)
  const res = await s.sdk.chat.complete({ model: 'mistral-small-latest', messages, maxTokens: 100, temperature: 0.2 })
  t.equal(res.object, 'chat.completion')
  t.match(s.fake.received[0], { method: 'POST', path: '/v1/chat/completions' })
  t.same(s.fake.received[0].json, { model: 'mistral-small-latest', messages, max_tokens: 100, temperature: 0.2, stream: false })
  const events = await collect(await s.sdk.chat.stream({ model: 'mistral-small-latest', messages }))
  t.ok(events.length > 2, 'streamed in several events')
  const last = events[events.length - 1].data
  t.equal(last.choices[0].finishReason, 'stop')
  const records = await ledger(s)
  t.equal(records.length, 2)
  for (const [i, record] of records.entries()) {
    const reported = s.fake.reportedUsage[i].usage
    t.match(record, { operation: 'chat', model: 'mistral-small-latest', promptTokens: reported.prompt_tokens,
      completionTokens: reported.completion_tokens, totalTokens: reported.total_tokens, streamed: i === 1, estimated: false })
  }
  t.equal(last.usage?.totalTokens, records[1].totalTokens)
  clean(t, s)
})

t.test('FIM: complete and stream', async (t) => {
  const s = await prepare(t)
  const res = await s.sdk.fim.complete({ model: 'codestral-latest', prompt: 'function add(a, b) {', suffix: '}' })
  t.equal(res.object, 'chat.completion')
  const events = await collect(await s.sdk.fim.stream({ model: 'codestral-latest', prompt: 'def f():', maxTokens: 5 }))
  t.ok(events.length > 1)
  t.same(s.fake.received.map((r) => r.path), ['/v1/fim/completions', '/v1/fim/completions'])
  t.same((await ledger(s)).map((r: { operation: string, streamed: boolean }) => [r.operation, r.streamed]),
    [['fim', false], ['fim', true]])
  clean(t, s)
})

t.test('embeddings: one input and a batch', async (t) => {
  const s = await prepare(t)
  const one = await s.sdk.embeddings.create({ model: 'mistral-embed', inputs: 'embed me' })
  t.equal(one.data.length, 1)
  const batch = await s.sdk.embeddings.create({ model: 'mistral-embed', inputs: ['embed me', 'and me, too'] })
  t.equal(batch.data.length, 2)
  t.same(s.fake.received[1].json, { model: 'mistral-embed', input: ['embed me', 'and me, too'] })
  const records = await ledger(s)
  t.same(records.map((r: { promptTokens: number }) => r.promptTokens), s.fake.reportedUsage.map((u) => u.usage.prompt_tokens))
  t.equal(records[1].operation, 'embeddings')
  clean(t, s)
})

t.test('models: list and get', async (t) => {
  const s = await prepare(t)
  const list = await s.sdk.models.list()
  t.ok((list.data?.length ?? 0) > 0)
  const card = await s.sdk.models.retrieve({ modelId: 'mistral-small-latest' })
  t.equal((card as { id: string }).id, 'mistral-small-latest')
  t.equal((await s.sdk.models.retrieve({ modelId: 'nope' }).catch((err: { statusCode: number }) => err) as { statusCode: number }).statusCode, 404)
  t.same(s.fake.received.map((r) => `${r.method} ${r.path}`),
    ['GET /v1/models', 'GET /v1/models/mistral-small-latest', 'GET /v1/models/nope'])
  t.same(await ledger(s), [], 'models calls are not metered')
  clean(t, s)
})

t.test('agents: create, list, get, update, versions, aliases and completions', async (t) => {
  const s = await prepare(t)
  const agents = s.sdk.beta.agents
  const created = await agents.create({ model: 'mistral-medium-latest', name: 'helper', instructions: 'Be brief.' })
  t.same((await agents.list({})).map((agent) => agent.id), [created.id])
  t.equal((await agents.get({ agentId: created.id })).instructions, 'Be brief.')
  t.equal((await agents.update({ agentId: created.id, updateAgentRequest: { instructions: 'Be briefer.' } })).version, 1)
  t.same((await agents.listVersions({ agentId: created.id })).map((agent) => agent.version), [0, 1])
  t.equal((await agents.getVersion({ agentId: created.id, version: '0' })).instructions, 'Be brief.')
  t.equal((await agents.createVersionAlias({ agentId: created.id, alias: 'prod', version: 0 })).alias, 'prod')
  t.same((await agents.listVersionAliases({ agentId: created.id })).map((entry) => entry.alias), ['prod'])
  const completion = await s.sdk.agents.complete({ agentId: created.id, messages })
  const streamed = await collect(await s.sdk.agents.stream({ agentId: created.id, messages }))
  t.ok(streamed.length > 1)
  t.match(s.fake.received.find((r) => r.path.startsWith(`/v1/agents/${created.id}/aliases`)), {
    method: 'PUT', path: `/v1/agents/${created.id}/aliases?alias=prod&version=0`
  })
  const records = await ledger(s)
  t.equal(records.length, 2)
  // agents completions name no model: the ledger takes it from Mistral's answer
  t.match(records[0], { operation: 'agents_completion', model: completion.model, totalTokens: completion.usage.totalTokens })
  t.match(records[1], { operation: 'agents_completion', streamed: true })
  clean(t, s)
})

t.test('conversations: start, append, restart, plain and streamed', async (t) => {
  const s = await prepare(t)
  const conversations = s.sdk.beta.conversations
  const started = await conversations.start({ inputs: 'What is the capital of France?', model: 'mistral-small-latest' })
  await conversations.append({ conversationId: started.conversationId, conversationAppendRequest: { inputs: 'And Italy?' } })
  const entryId = started.outputs[0].id ?? ''
  await conversations.restart({
    conversationId: started.conversationId, conversationRestartRequest: { inputs: 'And Spain?', fromEntryId: entryId }
  })
  const streamed = await collect(await conversations.startStream({ inputs: 'Stream it', model: 'mistral-small-latest' }))
  t.equal(streamed[streamed.length - 1].event, 'conversation.response.done')
  const conversationId = (streamed[0].data as { conversationId: string }).conversationId
  await collect(await conversations.appendStream({ conversationId, conversationAppendStreamRequest: { inputs: 'More' } }))
  await collect(await conversations.restartStream({
    conversationId, conversationRestartStreamRequest: { inputs: 'Again', fromEntryId: 'msg_x' }
  }))
  const records = await ledger(s)
  t.equal(records.length, 6)
  t.same(records.map((r: { streamed: boolean }) => r.streamed), [false, false, false, true, true, true])
  t.same(records.map((r: { totalTokens: number }) => r.totalTokens), s.fake.reportedUsage.map((u) => u.usage.total_tokens))
  t.ok(records.every((r: { operation: string, estimated: boolean }) => r.operation === 'conversation' && !r.estimated))
  clean(t, s)
})

t.test('libraries and documents', async (t) => {
  const s = await prepare(t)
  const libraries = s.sdk.beta.libraries
  const library = await libraries.create({ name: 'handbook' })
  const content = Buffer.from('# Handbook\n\nBe kind.\n')
  const document = await libraries.documents.upload({
    libraryId: library.id, requestBody: { file: { fileName: 'handbook.md', content } }
  })
  t.equal(document.size, content.length)
  t.same((await libraries.documents.list({ libraryId: library.id })).data.map((item) => item.id), [document.id])
  t.equal((await libraries.documents.get({ libraryId: library.id, documentId: document.id })).name, 'handbook.md')
  t.equal((await libraries.delete({ libraryId: library.id }))?.id, library.id)
  const upload = s.fake.requestsTo(`/v1/libraries/${library.id}/documents`)[0]
  t.match(upload.headers['content-type'], /^multipart\/form-data; boundary=/)
  t.equal(upload.form?.files[0].bytes, content.length)
  clean(t, s)
})

t.test('files: multipart upload, list, binary download', async (t) => {
  const s = await prepare(t)
  const lines = '{"custom_id":"0","body":{}}\n{"custom_id":"1","body":{}}\n'
  const uploaded = await s.sdk.files.upload({ file: new File([lines], 'batch.jsonl'), purpose: 'batch' })
  t.equal(uploaded.sizeBytes, lines.length)
  t.same((await s.sdk.files.list({ purpose: 'batch' })).data.map((file) => file.id), [uploaded.id])
  const download = await s.sdk.files.download({ fileId: uploaded.id })
  const chunks: Buffer[] = []
  for await (const chunk of Readable.fromWeb(download as Parameters<typeof Readable.fromWeb>[0])) chunks.push(chunk)
  t.equal(Buffer.concat(chunks).length, lines.length)
  t.match(s.fake.requestsTo('/v1/files')[0].form, { fields: { purpose: 'batch' }, files: [{ filename: 'batch.jsonl', bytes: lines.length }] })
  clean(t, s)
})

t.test('batch jobs: create, list, get, cancel', async (t) => {
  const s = await prepare(t)
  const jobs = s.sdk.batch.jobs
  const job = await jobs.create({
    endpoint: '/v1/chat/completions', model: 'mistral-small-latest', requests: [{ customId: '0', body: { messages } }]
  })
  t.same((await jobs.list({})).data?.map((item) => item.id), [job.id])
  t.equal((await jobs.get({ jobId: job.id })).id, job.id)
  t.equal((await jobs.cancel({ jobId: job.id })).status, 'CANCELLATION_REQUESTED')
  t.same(s.fake.received.map((r) => r.method), ['POST', 'GET', 'GET', 'POST'])
  clean(t, s)
})

t.test('OCR, moderations and classifications are metered in their units', async (t) => {
  const s = await prepare(t)
  const ocr = await s.sdk.ocr.process({
    model: 'mistral-ocr-latest', document: { type: 'document_url', documentUrl: 'https://example.com/a.pdf' }
  })
  await s.sdk.classifiers.moderate({ model: 'mistral-moderation-2603', inputs: ['fine', 'pii here'] })
  await s.sdk.classifiers.moderateChat({ model: 'mistral-moderation-2603', inputs: messages })
  await s.sdk.classifiers.classify({ model: 'ft:mistral-moderation-2603:acme:1', inputs: 'Is it?' })
  const records = await ledger(s)
  t.same(records.map((r: { operation: string }) => r.operation), ['ocr', 'moderation', 'moderation', 'classification'])
  t.equal(records[0].pages, ocr.usageInfo.pagesProcessed)
  t.equal(records[1].promptTokens, s.fake.reportedUsage[1].usage.prompt_tokens)
  clean(t, s)
})

t.test('audio: transcription (multipart, plain and streamed) and speech', async (t) => {
  const s = await prepare(t)
  const audio = new Uint8Array(32_000 * 3 + 1)
  const transcription = await s.sdk.audio.transcriptions.complete({
    model: 'voxtral-mini-latest', file: { fileName: 'hello.wav', content: audio }, language: 'fr'
  })
  const events = await collect(await s.sdk.audio.transcriptions.stream({
    model: 'voxtral-mini-latest', file: { fileName: 'hello.wav', content: audio }
  }))
  t.equal(events[events.length - 1].event, 'transcription.done')
  const input = 'Bonjour tout le monde'
  await s.sdk.audio.speech.complete({ model: 'voxtral-mini-tts-latest', input, voiceId: 'v1' })
  const records = await ledger(s)
  t.same(records.map((r: { operation: string }) => r.operation), ['transcription', 'transcription', 'speech'])
  // transcription's model is a form field the gateway streams past: the ledger takes it from Mistral's answer
  t.match(records[0], { audioSeconds: transcription.usage.promptAudioSeconds, model: 'voxtral-mini-latest', streamed: false })
  t.match(records[1], { audioSeconds: transcription.usage.promptAudioSeconds, streamed: true })
  t.match(records[2], { characters: input.length, estimated: false, model: 'voxtral-mini-tts-latest' })
  clean(t, s)
})

t.test('retired fine-tuning jobs routes reach Mistral and its 410 reaches the client', async (t) => {
  const s = await prepare(t)
  const res = await s.app.inject({ method: 'GET', url: '/v1/fine_tuning/jobs', headers: s.ws.headers })
  t.equal(res.statusCode, 410)
  t.same(s.fake.received.map((r) => r.path), ['/v1/fine_tuning/jobs'])
})
