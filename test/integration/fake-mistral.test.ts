import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { Readable } from 'node:stream'
import { setTimeout as after } from 'node:timers/promises'
import { Mistral } from '@mistralai/mistralai'
import type { BaseModelCard } from '@mistralai/mistralai/models/components'
import { HTTPValidationError, MistralError } from '@mistralai/mistralai/models/errors'
import t from 'tap'
import { request } from 'undici'
import { readSpec, specPath } from '../../scripts/operation-table.js'
import { strictRequestBody } from '../fixtures/mistral/request-fields.js'
import {
  errorBodies, filePatternByte, startFakeMistral, URL_AUDIO_SECONDS, type FakeMistral
} from '../helpers/fake-mistral.js'

const API_KEY = 'sk-fake-test'

interface SpecSchema { properties?: Record<string, unknown>, required?: string[], additionalProperties?: unknown }
const GREETING = 'Hello from the fake Mistral upstream: every word here is one token.'

/** tears the fake down with the test */
async function setup (t: { teardown (fn: () => unknown): void }) {
  const fake = await startFakeMistral()
  t.teardown(() => fake.close())
  return { fake, mistral: new Mistral({ apiKey: API_KEY, serverURL: fake.url }) }
}

async function collect<T> (stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = []
  for await (const item of stream) items.push(item)
  return items
}

async function readAll (stream: ReadableStream<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of Readable.fromWeb(stream as Parameters<typeof Readable.fromWeb>[0])) chunks.push(chunk)
  return Buffer.concat(chunks)
}

/** the HTTP status of the SDK error a call fails with */
async function statusOf (call: Promise<unknown>): Promise<number | undefined> {
  const err = await call.then(() => undefined, (error: unknown) => error)
  return err instanceof MistralError ? err.statusCode : undefined
}

function isPattern (bytes: Buffer): boolean {
  return bytes.every((byte, i) => byte === filePatternByte(i))
}

function rawChat (fake: FakeMistral, body: Record<string, unknown>, signal?: AbortSignal) {
  return request(`${fake.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hi' }], ...body }),
    signal
  })
}

const messages = [{ role: 'user' as const, content: 'Say hello to the gateway' }] // 24 characters: 6 tokens

t.test('chat completion: body, usage and what the SDK sent', async (t) => {
  const { fake, mistral } = await setup(t)
  const res = await mistral.chat.complete({ model: 'mistral-small-latest', messages, maxTokens: 100 })
  t.match(res.id, /^[0-9a-f]{32}$/)
  t.equal(res.model, 'mistral-small-latest')
  t.equal(res.choices[0].message?.content, GREETING)
  t.equal(res.choices[0].finishReason, 'stop')
  t.same(res.usage, { promptTokens: 6, completionTokens: 12, totalTokens: 18 })
  t.same(fake.reportedUsage, [{
    path: '/v1/chat/completions',
    model: 'mistral-small-latest',
    usage: { prompt_tokens: 6, total_tokens: 18, completion_tokens: 12 },
    streamed: false
  }])
  const [sent] = fake.requestsTo('/v1/chat/completions')
  t.equal(sent.method, 'POST')
  t.equal(sent.apiKey, API_KEY)
  t.equal(sent.headers.authorization, `Bearer ${API_KEY}`)
  t.equal(sent.headers.accept, 'application/json')
  t.equal(sent.headers['content-type'], 'application/json')
  t.equal(sent.headers['user-agent'], 'mistral-client-typescript/2.7.0')
  // snake_case on the wire, and the SDK always sends its `stream: false` default
  t.same(sent.json, { model: 'mistral-small-latest', messages, max_tokens: 100, stream: false })
  t.equal(sent.status, 200)
  t.equal(sent.aborted, false)
})

t.test('chat completion: max_tokens cuts it short, cache key and tier show in usage', async (t) => {
  const { fake, mistral } = await setup(t)
  const long = [{ role: 'user' as const, content: 'x'.repeat(400) }] // 100 tokens: one 64-token block cached
  const res = await mistral.chat.complete({
    model: 'mistral-small-latest', messages: long, maxTokens: 3, promptCacheKey: 'k1', serviceTier: 'auto'
  })
  t.equal(res.choices[0].message?.content, 'Hello from the')
  t.equal(res.choices[0].finishReason, 'length')
  t.same(fake.reportedUsage[0].usage, {
    prompt_tokens: 100, total_tokens: 103, completion_tokens: 3, prompt_tokens_details: { cached_tokens: 64 },
    service_tier: 'priority'
  })
})

t.test('chat completion: a tool call when tool_choice asks for one', async (t) => {
  const { mistral } = await setup(t)
  const tools = [{ type: 'function' as const, function: { name: 'get_weather', parameters: {} } }]
  const res = await mistral.chat.complete({ model: 'mistral-small-latest', messages, tools, toolChoice: 'any' })
  const call = res.choices[0].message?.toolCalls?.[0]
  t.match(call?.id, /^[a-zA-Z0-9]{9}$/)
  t.equal(call?.function.name, 'get_weather')
  t.equal(res.choices[0].finishReason, 'tool_calls')
})

t.test('chat stream: deltas, then usage on the finish chunk', async (t) => {
  const { fake, mistral } = await setup(t)
  const events = await collect(await mistral.chat.stream({ model: 'mistral-small-latest', messages }))
  t.equal(events.length, 14) // role chunk, 12 words, finish chunk; [DONE] ends the iteration
  t.equal(events.map((event) => event.data.choices[0].delta.content).join(''), GREETING)
  const last = events[events.length - 1].data
  t.equal(last.choices[0].finishReason, 'stop')
  t.same(last.usage, { promptTokens: 6, completionTokens: 12, totalTokens: 18 })
  t.ok(events.slice(0, -1).every((event) => event.data.usage === undefined), 'only the last chunk has usage')
  t.same(fake.reportedUsage.map((report) => report.streamed), [true])
  const [sent] = fake.received
  t.equal(sent.headers.accept, 'text/event-stream')
  t.equal(sent.path, '/v1/chat/completions') // the SDK's `#stream` fragment never reaches the wire
  t.equal((sent.json as { stream: boolean }).stream, true)
})

t.test('FIM completion and stream', async (t) => {
  const { fake, mistral } = await setup(t)
  const prompt = 'function add (a, b) {' // 21 characters
  const res = await mistral.fim.complete({ model: 'codestral-latest', prompt, suffix: '}' }) // 22: 6 tokens
  t.equal(res.choices[0].message?.content, GREETING)
  t.same(res.usage, { promptTokens: 6, completionTokens: 12, totalTokens: 18 })
  const events = await collect(await mistral.fim.stream({ model: 'codestral-latest', prompt, maxTokens: 5 }))
  t.equal(events.map((event) => event.data.choices[0].delta.content).join(''), 'Hello from the fake Mistral')
  t.same(events[events.length - 1].data.usage, { promptTokens: 6, completionTokens: 5, totalTokens: 11 })
  t.same(fake.reportedUsage.map((report) => report.path), ['/v1/fim/completions', '/v1/fim/completions'])
})

t.test('embeddings: one input and a batch', async (t) => {
  const { fake, mistral } = await setup(t)
  const one = await mistral.embeddings.create({ model: 'mistral-embed', inputs: 'embed me' })
  t.equal(one.data.length, 1)
  t.equal(one.data[0].embedding?.length, 1024)
  t.equal(one.usage.promptTokens, 2)
  const batch = await mistral.embeddings.create({ model: 'mistral-embed', inputs: ['embed me', 'and me, too'] })
  t.same(batch.data.map((item) => item.index), [0, 1])
  t.same(batch.data[0].embedding, one.data[0].embedding, 'the same text embeds the same')
  t.equal(batch.usage.promptTokens, 2 + 3)
  t.same(fake.reportedUsage[1].usage,
    { prompt_tokens: 5, total_tokens: 5, completion_tokens: 0, prompt_audio_seconds: null })
})

t.test('models: list and retrieve', async (t) => {
  const { mistral } = await setup(t)
  const list = await mistral.models.list()
  const ids = list.data?.map((card) => (card as BaseModelCard).id) ?? []
  t.ok(ids.includes('mistral-small-2603') && ids.includes('mistral-small-latest'), 'canonical ids and aliases')
  const card = await mistral.models.retrieve({ modelId: 'mistral-small-latest' }) as BaseModelCard
  t.equal(card.id, 'mistral-small-latest')
  t.ok(card.aliases?.includes('mistral-small-2603'))
  t.equal(card.type, 'base')
  t.equal(card.capabilities.completionChat, true)
  const ft = await mistral.models.retrieve({ modelId: 'ft:mistral-small-2603:7e2a91c4:20260801:b5d3' })
  t.equal(ft.type, 'fine-tuned')
  t.equal(await statusOf(mistral.models.retrieve({ modelId: 'nope' })), 404)
})

t.test('agents: create, list, get, update, versions and aliases', async (t) => {
  const { mistral } = await setup(t)
  const agents = mistral.beta.agents
  const created = await agents.create({ model: 'mistral-medium-latest', name: 'helper', instructions: 'Be brief.' })
  t.match(created.id, /^ag_[0-9a-f]{32}$/)
  t.equal(created.version, 0)
  t.same(created.versions, [0])
  t.same((await agents.list({})).map((agent) => agent.id), [created.id])
  t.equal((await agents.get({ agentId: created.id })).instructions, 'Be brief.')
  const updated = await agents.update({ agentId: created.id, updateAgentRequest: { instructions: 'Be briefer.' } })
  t.equal(updated.version, 1)
  t.same(updated.versions, [0, 1])
  t.equal(updated.name, 'helper')
  t.same((await agents.listVersions({ agentId: created.id })).map((agent) => agent.version), [0, 1])
  t.equal((await agents.getVersion({ agentId: created.id, version: '0' })).instructions, 'Be brief.')
  const alias = await agents.createVersionAlias({ agentId: created.id, alias: 'prod', version: 0 })
  t.same({ alias: alias.alias, version: alias.version }, { alias: 'prod', version: 0 })
  t.same((await agents.listVersionAliases({ agentId: created.id })).map((entry) => entry.alias), ['prod'])
  t.equal((await agents.get({ agentId: created.id, agentVersion: 'prod' })).instructions, 'Be brief.')
  t.equal(await statusOf(agents.get({ agentId: 'ag_missing' })), 404)
})

t.test('agents completions answer with the agent model', async (t) => {
  const { mistral } = await setup(t)
  const agent = await mistral.beta.agents.create({ model: 'mistral-large-latest', name: 'a', instructions: 'Hi' })
  const res = await mistral.agents.complete({ agentId: agent.id, messages })
  t.equal(res.model, 'mistral-large-latest')
  t.equal(res.usage.promptTokens, 7) // 'Hi' + the 24-character message
  const events = await collect(await mistral.agents.stream({ agentId: agent.id, messages }))
  t.equal(events[events.length - 1].data.usage?.totalTokens, 19)
})

t.test('conversations: start, append and restart', async (t) => {
  const { fake, mistral } = await setup(t)
  const conversations = mistral.beta.conversations
  const started = await conversations.start({ inputs: 'What is the capital of France?', model: 'mistral-small-latest' })
  t.match(started.conversationId, /^conv_[0-9a-f]{32}$/)
  const [entry] = started.outputs
  t.equal(entry.type, 'message.output')
  t.equal((entry as { content: unknown }).content, GREETING)
  t.same(started.usage, { promptTokens: 8, completionTokens: 12, totalTokens: 20 })
  const appended = await conversations.append({
    conversationId: started.conversationId, conversationAppendRequest: { inputs: 'And of Italy?' }
  })
  t.equal(appended.conversationId, started.conversationId)
  t.equal(appended.usage.promptTokens, 4)
  const restarted = await conversations.restart({
    conversationId: started.conversationId,
    conversationRestartRequest: { inputs: 'And of Spain?', fromEntryId: entry.id ?? '' }
  })
  t.not(restarted.conversationId, started.conversationId, 'a restart is a new conversation')
  t.equal(fake.reportedUsage.length, 3)
  const missing = conversations.append({ conversationId: 'conv_nope', conversationAppendRequest: { inputs: 'x' } })
  t.equal(await statusOf(missing), 404)
})

t.test('conversations: streamed start, append and restart', async (t) => {
  const { fake, mistral } = await setup(t)
  const conversations = mistral.beta.conversations
  const started = await collect(await conversations.startStream({ inputs: 'Stream it', model: 'mistral-small-latest' }))
  t.equal(started[0].event, 'conversation.response.started')
  const conversationId = (started[0].data as { conversationId: string }).conversationId
  const deltas = started.filter((event) => event.event === 'message.output.delta')
  t.equal(deltas.map((event) => (event.data as { content: string }).content).join(''), GREETING)
  const done = started[started.length - 1]
  t.equal(done.event, 'conversation.response.done')
  t.same((done.data as { usage: unknown }).usage, { promptTokens: 3, completionTokens: 12, totalTokens: 20 - 5 })
  const appended = await collect(await conversations.appendStream({
    conversationId, conversationAppendStreamRequest: { inputs: 'More' }
  }))
  t.equal(appended[appended.length - 1].event, 'conversation.response.done')
  const restarted = await collect(await conversations.restartStream({
    conversationId, conversationRestartStreamRequest: { inputs: 'Again', fromEntryId: 'msg_x' }
  }))
  t.not((restarted[0].data as { conversationId: string }).conversationId, conversationId)
  t.same(fake.reportedUsage.map((report) => report.streamed), [true, true, true])
  const raw = await request(`${fake.url}/v1/conversations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: 'x', model: 'm', stream: true })
  })
  const text = await raw.body.text()
  t.match(text, /^event: conversation\.response\.started\ndata: \{.*\}\n\n/)
  t.notMatch(text, /\[DONE\]/, 'named-event streams have no [DONE]')
})

t.test('conversations: built-in tools report connector usage', async (t) => {
  const { fake, mistral } = await setup(t)
  const tools = [{ type: 'web_search' as const }]
  await mistral.beta.conversations.start({ inputs: 'news?', model: 'mistral-medium-latest', tools })
  t.match(fake.reportedUsage[0].usage, { connector_tokens: 128, connectors: { web_search: 1 } })
})

t.test('libraries and documents', async (t) => {
  const { fake, mistral } = await setup(t)
  const libraries = mistral.beta.libraries
  const library = await libraries.create({ name: 'handbook' })
  t.equal(library.name, 'handbook')
  t.same((await libraries.list()).data.map((item) => item.id), [library.id])
  const content = Buffer.from('# Handbook\n\nBe kind.\n')
  const document = await libraries.documents.upload({
    libraryId: library.id, requestBody: { file: { fileName: 'handbook.md', content } }
  })
  t.equal(document.name, 'handbook.md')
  t.equal(document.size, content.length)
  t.equal(document.libraryId, library.id)
  const listed = await libraries.documents.list({ libraryId: library.id })
  t.same(listed.data.map((item) => item.id), [document.id])
  t.equal(listed.pagination.totalItems, 1)
  t.equal((await libraries.documents.get({ libraryId: library.id, documentId: document.id })).hash,
    fake.requestsTo(`/v1/libraries/${library.id}/documents`)[0].form?.files[0].sha256)
  t.equal((await libraries.get({ libraryId: library.id })).nbDocuments, 1)
  t.equal((await libraries.delete({ libraryId: library.id }))?.id, library.id)
  t.same((await libraries.list()).data, [])
})

t.test('files: upload, list, retrieve, download and delete', async (t) => {
  const { fake, mistral } = await setup(t)
  const lines = '{"custom_id":"0","body":{}}\n{"custom_id":"1","body":{}}\n'
  const uploaded = await mistral.files.upload({ file: new File([lines], 'batch.jsonl'), purpose: 'batch' })
  t.equal(uploaded.sizeBytes, lines.length)
  t.equal(uploaded.filename, 'batch.jsonl')
  t.equal(uploaded.purpose, 'batch')
  t.equal(uploaded.numLines, 2)
  const [sent] = fake.requestsTo('/v1/files')
  t.match(sent.headers['content-type'], /^multipart\/form-data; boundary=/)
  t.equal(sent.body.length, 0, 'upload bytes are counted, not kept')
  t.ok(sent.bodyBytes > lines.length)
  t.same(sent.form?.fields, { purpose: 'batch', visibility: 'workspace' }) // the SDK's default visibility
  t.match(sent.form?.files, [{ field: 'file', filename: 'batch.jsonl', bytes: lines.length, lines: 2 }])
  const list = await mistral.files.list({ purpose: 'batch' })
  t.same(list.data.map((file) => file.id), [uploaded.id])
  t.equal((await mistral.files.retrieve({ fileId: uploaded.id })).deleted, false)
  const bytes = await readAll(await mistral.files.download({ fileId: uploaded.id }))
  t.equal(bytes.length, lines.length)
  t.ok(isPattern(bytes))
  t.same(await mistral.files.delete({ fileId: uploaded.id }), { id: uploaded.id, object: 'file', deleted: true })
  t.equal(await statusOf(mistral.files.retrieve({ fileId: uploaded.id })), 404)
})

t.test('files: a 64 MiB upload streams through, and downloads as many bytes', async (t) => {
  const { fake } = await setup(t)
  const size = 64 * 1024 * 1024
  const boundary = 'fake-boundary-7d1e'
  async function * multipartBody () {
    yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n` +
      'Content-Type: application/octet-stream\r\n\r\n')
    const block = Buffer.alloc(1024 * 1024, 0x61)
    for (let sent = 0; sent < size; sent += block.length) yield block
    yield Buffer.from(`\r\n--${boundary}--\r\n`)
  }
  const res = await request(`${fake.url}/v1/files`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': `multipart/form-data; boundary=${boundary}` },
    body: Readable.from(multipartBody())
  })
  const file = await res.body.json() as { id: string, bytes: number }
  t.equal(file.bytes, size)
  const [sent] = fake.received
  t.equal(sent.form?.files[0].bytes, size)
  t.equal(sent.body.length, 0)
  const download = await request(`${fake.url}/v1/files/${file.id}/content`, {
    headers: { authorization: `Bearer ${API_KEY}` }
  })
  t.equal(download.headers['content-type'], 'application/octet-stream')
  let received = 0
  for await (const chunk of download.body) received += chunk.length
  t.equal(received, size)
})

t.test('batch jobs: create, list, get and cancel', async (t) => {
  const { mistral } = await setup(t)
  const jobs = mistral.batch.jobs
  const job = await jobs.create({
    endpoint: '/v1/chat/completions',
    model: 'mistral-small-latest',
    requests: [{ customId: '0', body: { messages } }, { customId: '1', body: { messages } }],
    metadata: { tenant: 'a' }
  })
  t.equal(job.status, 'QUEUED')
  t.equal(job.totalRequests, 2)
  const list = await jobs.list({})
  t.equal(list.total, 1)
  t.same(list.data?.map((item) => item.id), [job.id])
  t.same((await jobs.get({ jobId: job.id })).metadata, { tenant: 'a' })
  t.equal((await jobs.cancel({ jobId: job.id })).status, 'CANCELLATION_REQUESTED')
})

t.test('batch jobs count the lines of their input files', async (t) => {
  const { fake, mistral } = await setup(t)
  const file = fake.addFile({ bytes: 300, numLines: 3 })
  const job = await mistral.batch.jobs.create({
    endpoint: '/v1/embeddings', model: 'mistral-embed', inputFiles: [file.id]
  })
  t.equal(job.totalRequests, 3)
})

t.test('a key sees its organisation\'s files only: as batch input, OCR document and audio; reset forgets whose',
  async (t) => {
    const { fake, mistral } = await setup(t)
    const theirs = fake.addFile({ bytes: 32_000 * 5, numLines: 3, organisation: 'other' })
    const ours = fake.addFile({ bytes: 32_000 * 2, numLines: 2 })
    const inputFiles = (ids: string[]) => mistral.batch.jobs.create({
      endpoint: '/v1/embeddings', model: 'mistral-embed', inputFiles: ids
    })
    t.equal(await statusOf(inputFiles([ours.id, theirs.id])), 404, 'a job naming another organisation\'s file')
    t.equal(fake.stores.batchJobs.size, 0, 'no job made')
    t.equal((await inputFiles([ours.id])).totalRequests, 2, 'a job of its own organisation\'s file')

    await mistral.ocr.process({ model: 'mistral-ocr-latest', document: { type: 'file', fileId: theirs.id } })
    await mistral.audio.transcriptions.complete({ model: 'voxtral-mini-latest', fileId: theirs.id })
    fake.organisations.set('sk-of-other', 'other')
    const other = new Mistral({ apiKey: 'sk-of-other', serverURL: fake.url })
    await other.ocr.process({ model: 'mistral-ocr-latest', document: { type: 'file', fileId: theirs.id } })
    await other.audio.transcriptions.complete({ model: 'voxtral-mini-latest', fileId: theirs.id })
    t.same(fake.reportedUsage.map((report) => report.usage.doc_size_bytes ?? report.usage.prompt_audio_seconds),
      [0, URL_AUDIO_SECONDS, theirs.bytes, 5], 'a file the organisation does not have weighs as one not there')

    fake.reset()
    t.same([fake.organisations.size, fake.stores.owners.size], [0, 0], 'no key, job or file of an organisation left')
    t.equal((await mistral.files.retrieve({ fileId: theirs.id })).id, theirs.id, 'every key sees every file again')
  })

t.test('OCR: pages processed and document size', async (t) => {
  const { fake, mistral } = await setup(t)
  const res = await mistral.ocr.process({
    model: 'mistral-ocr-latest', document: { type: 'document_url', documentUrl: 'https://example.com/a.pdf' }
  })
  t.equal(res.pages.length, 3)
  t.same(res.usageInfo, { pagesProcessed: 3, docSizeBytes: 48_213 })
  const pdf = Buffer.from('%PDF-1.7 fake').toString('base64')
  const picked = await mistral.ocr.process({
    model: 'mistral-ocr-latest',
    document: { type: 'document_url', documentUrl: `data:application/pdf;base64,${pdf}` },
    pages: [0, 2]
  })
  t.same(picked.pages.map((page) => page.index), [0, 2])
  t.same(fake.reportedUsage[1].usage, { pages_processed: 2, doc_size_bytes: 13 })
})

t.test('classifiers: moderate, moderateChat and classify', async (t) => {
  const { fake, mistral } = await setup(t)
  const text = await mistral.classifiers.moderate({ model: 'mistral-moderation-2603', inputs: ['fine', 'pii here'] })
  t.equal(text.results.length, 2)
  t.equal(text.results[0].categories?.pii, false)
  t.equal(text.results[1].categories?.pii, true)
  t.same(fake.reportedUsage[0].usage, { prompt_tokens: 1 + 2, total_tokens: 3, completion_tokens: 0, request_count: 1 })
  const chat = await mistral.classifiers.moderateChat({ model: 'mistral-moderation-2603', inputs: messages })
  t.equal(chat.results.length, 1)
  t.equal(fake.reportedUsage[1].usage.prompt_tokens, 6)
  const classified = await mistral.classifiers.classify({ model: 'ft:classifier:x', inputs: 'Is it?' })
  t.match(classified.results[0], { intent: { scores: { question: 0.97 } } })
})

t.test('audio transcriptions: complete and stream', async (t) => {
  const { fake, mistral } = await setup(t)
  const audio = new Uint8Array(32_000 * 3 + 1) // a little over 3 seconds of 16 kHz 16-bit mono
  const res = await mistral.audio.transcriptions.complete({
    model: 'voxtral-mini-latest', file: { fileName: 'hello.wav', content: audio }, language: 'fr',
    timestampGranularities: ['segment', 'word']
  })
  t.equal(res.text, GREETING)
  t.equal(res.language, 'fr')
  t.same(res.segments?.map((segment) => [segment.start, segment.end]), [[0, 4]])
  t.same(res.usage, { promptAudioSeconds: 4, promptTokens: 50, completionTokens: 12, totalTokens: 62 })
  const [sent] = fake.received
  t.match(sent.form, {
    // repeated fields are joined; the SDK always sends its `stream` and `diarize` defaults
    fields: { model: 'voxtral-mini-latest', language: 'fr', timestamp_granularities: 'segment, word', stream: 'false' },
    files: [{ bytes: audio.length }]
  })
  const events = await collect(await mistral.audio.transcriptions.stream({
    model: 'voxtral-mini-latest', file: { fileName: 'hello.wav', content: audio }
  }))
  t.same(events.map((event) => event.event).filter((name, i, all) => all.indexOf(name) === i),
    ['transcription.language', 'transcription.text.delta', 'transcription.done'])
  const done = events[events.length - 1].data as { usage: unknown, text: string }
  t.equal(done.text, GREETING)
  t.same(done.usage, { promptAudioSeconds: 4, promptTokens: 50, completionTokens: 12, totalTokens: 62 })
  t.equal(fake.received[1].form?.fields.stream, 'true')
  t.same(fake.reportedUsage.map((report) => report.usage.prompt_audio_seconds), [4, 4])
})

t.test('audio speech: JSON without usage, stream with usage', async (t) => {
  const { fake, mistral } = await setup(t)
  const input = 'Bonjour tout le monde' // 21 characters
  const res = await mistral.audio.speech.complete({ model: 'voxtral-mini-tts-latest', input, voiceId: 'v1' })
  t.ok('audioData' in res)
  t.equal(Buffer.from((res as { audioData: string }).audioData, 'base64').length, 21 * 2400)
  t.same(fake.reportedUsage, [], 'non-streamed speech reports no usage')
  t.equal(fake.received[0].headers.accept, 'application/json;q=1, text/event-stream;q=0')
  const stream = await mistral.audio.speech.complete({ model: 'voxtral-mini-tts-latest', input, stream: true })
  const events = await collect(stream as AsyncIterable<{ event: string, data: { usage?: unknown } }>)
  t.same(events.map((event) => event.event), ['speech.audio.delta', 'speech.audio.done'])
  t.same(events[1].data.usage, { promptTokens: 6, totalTokens: 7, completionTokens: 1, promptAudioSeconds: null })
})

t.test('SSE bytes follow the §2.4 framing exactly', async (t) => {
  const { fake } = await setup(t)
  const res = await rawChat(fake, { stream: true, max_tokens: 2 })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  t.match(res.headers['mistral-correlation-id'], /^[0-9a-f-]{36}$/)
  t.ok(res.headers['x-ratelimit-tokens-query-cost'], 'current rate-limit headers on success')
  const text = await res.body.text()
  const frames = text.split('\n\n')
  t.equal(frames.pop(), '', 'the stream ends with a blank line')
  t.equal(frames.length, 5) // role, 2 words, finish + usage, [DONE]
  t.ok(frames.slice(0, -1).every((frame) => /^data: \{[^\n]*\}$/.test(frame)), 'data-only JSON events')
  t.equal(frames[frames.length - 1], 'data: [DONE]')
  const finish = JSON.parse(frames[3].slice('data: '.length))
  t.same(finish.choices, [{ index: 0, delta: { content: '' }, finish_reason: 'length', logprobs: null }])
  t.same(finish.usage, { prompt_tokens: 1, total_tokens: 3, completion_tokens: 2 })
  t.equal(finish.object, 'chat.completion.chunk')
})

t.test('holdStreams: the first event arrives before release, the rest after', async (t) => {
  const { fake } = await setup(t)
  const gate = fake.holdStreams()
  const res = await rawChat(fake, { stream: true })
  const iterator = res.body[Symbol.asyncIterator]()
  const first = (await iterator.next()).value.toString()
  t.match(first, /^data: .*"role":"assistant"/)
  const next = iterator.next()
  const early = await Promise.race([next.then(() => 'data'), after(200, 'held')])
  t.equal(early, 'held', 'nothing more until release')
  gate.release()
  let rest = (await next).value.toString()
  for (let chunk = await iterator.next(); !chunk.done; chunk = await iterator.next()) rest += chunk.value.toString()
  t.match(rest, /data: \[DONE\]\n\n$/)
})

t.test('faultNextStream: stall, then cut', async (t) => {
  const { fake } = await setup(t)
  fake.faultNextStream({ after: 2, mode: 'stall' })
  const controller = new AbortController()
  const stalled = await rawChat(fake, { stream: true }, controller.signal)
  const iterator = stalled.body[Symbol.asyncIterator]()
  let seen = ''
  while ((seen.match(/\n\n/g) ?? []).length < 2) seen += (await iterator.next()).value.toString()
  const more = await Promise.race([iterator.next().then(() => 'data'), after(200, 'stall')])
  t.equal(more, 'stall')
  controller.abort()
  await iterator.next().catch(() => undefined)
  await after(50)
  t.equal(fake.received[0].fault, 'stall')
  t.equal(fake.received[0].aborted, true, 'the client hung up')

  fake.faultNextStream({ after: 3, mode: 'cut', path: '/v1/chat' })
  const cut = await rawChat(fake, { stream: true })
  let text = ''
  await t.rejects((async () => { for await (const chunk of cut.body) text += chunk.toString() })())
  t.equal(text.split('\n\n').length - 1, 3, 'exactly the events sent before the cut')
  t.equal(fake.received[1].fault, 'cut')
  t.equal(fake.received[1].aborted, false, 'the fake hung up, not the client')
  t.same(fake.reportedUsage, [], 'usage never sent, never reported')
})

t.test('a client hanging up mid-stream is recorded as aborted', async (t) => {
  const { fake } = await setup(t)
  const gate = fake.holdStreams()
  const controller = new AbortController()
  const res = await rawChat(fake, { stream: true }, controller.signal)
  await res.body[Symbol.asyncIterator]().next()
  controller.abort()
  await after(50)
  gate.release()
  await after(50)
  t.equal(fake.received[0].aborted, true)
  t.equal(fake.inFlight, 0)
})

t.test('auth: a missing key, and keys outside validKeys', async (t) => {
  const { fake, mistral } = await setup(t)
  const anonymous = await request(`${fake.url}/v1/models`)
  t.equal(anonymous.statusCode, 401)
  t.same(await anonymous.body.json(), { detail: 'Unauthorized' })
  fake.validKeys.add('sk-good')
  const wrong = await request(`${fake.url}/v1/models`, { headers: { authorization: 'Bearer sk-bad' } })
  t.equal(wrong.statusCode, 401)
  t.match(await wrong.body.json(), { message: 'Unauthorized', request_id: /^[0-9a-f]{32}$/ })
  t.equal(await statusOf(mistral.models.list()), 401)
  const good = new Mistral({ apiKey: 'sk-good', serverURL: fake.url })
  t.ok((await good.models.list()).data?.length)
})

t.test('unknown paths are 404 like FastAPI, fine-tuning jobs are gone', async (t) => {
  const { fake } = await setup(t)
  const headers = { authorization: `Bearer ${API_KEY}` }
  const missing = await request(`${fake.url}/v1/nothing/here`, { headers })
  t.equal(missing.statusCode, 404)
  t.same(await missing.body.json(), { detail: 'Not Found' })
  const jobs = await request(`${fake.url}/v1/fine_tuning/jobs/abc/cancel`, { method: 'POST', headers })
  t.equal(jobs.statusCode, 410)
  t.match(await jobs.body.json(), { object: 'error', type: 'invalid_request_error' })
})

t.test('strict bodies: stream_options is a FastAPI 422 the SDK parses', async (t) => {
  const { fake, mistral } = await setup(t)
  const res = await rawChat(fake, { stream_options: { include_usage: true } })
  t.equal(res.statusCode, 422)
  t.match(await res.body.json(), { detail: [{ type: 'extra_forbidden', loc: ['body', 'stream_options'] }] })
  const bad = await request(`${fake.url}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: '{'
  })
  t.equal(bad.statusCode, 422)
  t.match(await bad.body.json(), { detail: [{ type: 'json_invalid' }] })
  const missing = await request(`${fake.url}/v1/embeddings`, {
    method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: '{}'
  })
  t.match(await missing.body.json(),
    { detail: [{ type: 'missing', loc: ['body', 'input'] }, { type: 'missing', loc: ['body', 'model'] }] })
  fake.enqueueError(errorBodies.validationFastApi.status, errorBodies.validationFastApi.body)
  await t.rejects(mistral.chat.complete({ model: 'm', messages }), HTTPValidationError)
})

t.test('strict bodies: the allowed fields are the spec\'s, read from mistral-openapi.yaml', async (t) => {
  const spec = await readSpec(specPath()) as unknown as { components: { schemas: Record<string, SpecSchema> } }
  const schemas = spec.components.schemas
  for (const [route, schema] of [
    ['POST /v1/chat/completions', 'ChatCompletionRequest'], ['POST /v1/fim/completions', 'FIMCompletionRequest'],
    ['POST /v1/agents/completions', 'AgentsCompletionRequest'], ['POST /v1/embeddings', 'EmbeddingRequest']
  ]) {
    const rules = strictRequestBody(route)
    t.equal(schemas[schema].additionalProperties, false, `${schema} forbids extra fields`)
    t.same(rules?.allowed, Object.keys(schemas[schema].properties ?? {}), `${route}: ${schema}'s properties`)
    t.same(rules?.required, schemas[schema].required, `${route}: ${schema}'s required fields`)
  }
  t.equal(strictRequestBody('GET /v1/models'), undefined, 'other routes take anything')
})

t.test('strict bodies: messages, tools and content parts are held to their schemas too', async (t) => {
  const { fake } = await setup(t)
  const issues = async (body: Record<string, unknown>) => {
    const res = await rawChat(fake, body)
    return { status: res.statusCode, detail: ((await res.body.json()) as { detail?: unknown }).detail }
  }
  t.same(await issues({ messages: [{ role: 'user', content: 'hi', name: 'alice' }] }), {
    status: 422,
    detail: [{
      type: 'extra_forbidden', loc: ['body', 'messages', 0, 'user', 'name'], msg: 'Extra inputs are not permitted',
      input: 'alice'
    }]
  }, 'name on a user message')
  t.match(await issues({ messages: [{ role: 'developer', content: 'hi' }] }), {
    status: 422, detail: [{ type: 'union_tag_invalid', loc: ['body', 'messages', 0], ctx: { tag: 'developer' } }]
  }, 'an unknown role')
  t.match(await issues({
    messages: [{ role: 'user', content: 'hi' }], tools: [{ type: 'function', function: { name: 'f' } }]
  }), {
    status: 422, detail: [{ type: 'missing', loc: ['body', 'tools', 0, 'function', 'function', 'parameters'] }]
  }, 'a function without parameters')
  t.match(await issues({ messages: [{ role: 'user', content: [{ type: 'text', text: 'hi', cache_control: {} }] }] }), {
    status: 422,
    detail: [{ type: 'extra_forbidden', loc: ['body', 'messages', 0, 'user', 'content', 0, 'text', 'cache_control'] }]
  }, 'an unknown field in a content part')
  t.match(await issues({ messages: [{ role: 'assistant', content: 'hi', refusal: null }] }), {
    status: 422, detail: [{ type: 'extra_forbidden', loc: ['body', 'messages', 0, 'assistant', 'refusal'] }]
  }, 'refusal on an assistant message')
  const accepted = await issues({
    messages: [
      { role: 'system', content: 'Be brief' },
      { role: 'user', content: [{ type: 'text', text: 'hi' }, { type: 'image_url', image_url: { url: 'data:,' } }] },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'abcDEF123', type: 'function', function: { name: 'f', arguments: '{}' } }]
      },
      { role: 'tool', tool_call_id: 'abcDEF123', name: 'f', content: '{}' }
    ],
    tools: [{ type: 'function', function: { name: 'f', description: 'F', parameters: {}, strict: true } }],
    tool_choice: { type: 'function', function: { name: 'f' } },
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object' }, strict: true } }
  })
  t.equal(accepted.status, 200, 'everything Mistral allows')
})

t.test('tool-call ids not of Mistral\'s 9-character form: its 400 with code 3280', async (t) => {
  const { fake, mistral } = await setup(t)
  const res = await rawChat(fake, {
    messages: [
      { role: 'user', content: 'hi' },
      {
        role: 'assistant', content: '', tool_calls: [{ id: 'call_abc123XYZ', function: { name: 'f', arguments: '{}' } }]
      },
      { role: 'tool', tool_call_id: 'call_abc123XYZ', content: '{}' }
    ]
  })
  t.equal(res.statusCode, 400)
  t.same(await res.body.json(), {
    object: 'error',
    message: 'Tool call id was call_abc123XYZ but must be a-z, A-Z, 0-9, with a length of 9.',
    type: 'invalid_function_call',
    param: null,
    code: '3280',
    raw_status_code: 400
  })
  const err = await mistral.chat.complete({
    model: 'm', messages: [{ role: 'user', content: 'hi' }, { role: 'tool', toolCallId: 'turn1_0', content: '{}' }]
  }).catch((error: unknown) => error)
  t.type(err, MistralError)
  t.equal((err as MistralError).statusCode, 400)
  t.match((err as MistralError).body, /"code":"3280"/)
})

t.test('scripts: every error shape, rate limits and delays', async (t) => {
  const { fake, mistral } = await setup(t)
  for (const [name, { status, body }] of Object.entries(errorBodies)) {
    if (status === 422) continue // the SDK parses those as HTTPValidationError, above
    fake.enqueueError(status, body, {}, '/v1/chat/completions')
    const err = await mistral.chat.complete({ model: 'm', messages }).catch((error: unknown) => error)
    t.ok(err instanceof MistralError, name)
    t.equal((err as MistralError).statusCode, status, name)
    t.same(JSON.parse((err as MistralError).body), body, name)
  }
  const filter = { path: '/v1/embeddings', method: 'POST' }
  fake.enqueueRateLimit({ retryAfterSeconds: 7, headersGeneration: 1, filter })
  const ok = await mistral.chat.complete({ model: 'm', messages })
  t.ok(ok.id, 'the filter let other paths through')
  const limited = await request(`${fake.url}/v1/embeddings`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mistral-embed', input: 'x' })
  })
  t.equal(limited.statusCode, 429)
  t.match(limited.headers, { 'retry-after': '7', 'ratelimitbysize-remaining': '0', 'ratelimitbysize-reset': '7' })
  t.same(await limited.body.json(), errorBodies.rateLimitedEdge.body)
  fake.enqueueRateLimit()
  const current = await rawChat(fake, {})
  t.match(current.headers, { 'x-ratelimit-remaining-tokens-minute': '0', 'x-ratelimit-remaining-req-minute': '0' })
  t.notOk(current.headers['retry-after'], 'no Retry-After unless asked for')
  t.same(await current.body.json(), errorBodies.rateLimited.body)
  fake.enqueueDelay(150)
  const started = Date.now()
  await mistral.models.list()
  t.ok(Date.now() - started >= 140, 'delayed, then answered as usual')
})

t.test('inFlight and maxInFlight follow concurrent requests', async (t) => {
  const { fake, mistral } = await setup(t)
  for (let i = 0; i < 5; i++) fake.enqueueDelay(100)
  await Promise.all(Array.from({ length: 5 }, () => mistral.models.list()))
  t.equal(fake.maxInFlight, 5)
  t.equal(fake.inFlight, 0)
  fake.reset()
  t.same(fake.received, [])
  t.equal(fake.maxInFlight, 0)
})

t.test('close() ends open streams', async (t) => {
  const fake = await startFakeMistral()
  fake.holdStreams()
  const res = await rawChat(fake, { stream: true })
  await res.body[Symbol.asyncIterator]().next()
  await fake.close()
  t.equal(fake.received[0].aborted, false, 'closing is not a client hang-up')
})

t.test('fake-mistral-server: prints its url, serves, and stops on SIGTERM', async (t) => {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/fake-mistral-server.ts'], {
    env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit']
  })
  t.teardown(() => { child.kill() })
  const [line] = await once(createInterface({ input: child.stdout }), 'line') as [string]
  const { url } = JSON.parse(line) as { url: string }
  const mistral = new Mistral({ apiKey: API_KEY, serverURL: url })
  t.equal((await mistral.chat.complete({ model: 'm', messages })).choices[0].message?.content, GREETING)
  child.kill('SIGTERM')
  const [code] = await once(child, 'exit')
  t.equal(code, 0)
})
