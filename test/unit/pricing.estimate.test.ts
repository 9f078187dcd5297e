import t from 'tap'
import {
  AUDIO_BYTES_PER_SECOND, estimatePrompt, estimatePromptTokens, MAX_CHAT_AUDIO_SECONDS, MEDIA_TOKENS
} from '../../src/pricing/estimate.js'

t.test('prompt estimate: conservative bytes / 2, per message, tools, media', async (t) => {
  t.equal(estimatePromptTokens({ model: 'm', messages: [{ role: 'user', content: 'hello' }] }), 3 + 8)
  // UTF-8 bytes, not UTF-16 code units: 'é' is two bytes, '日本' six
  t.equal(estimatePromptTokens({ messages: [{ role: 'user', content: 'é日本' }] }), 4 + 8)
  const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }]
  const withTools = estimatePromptTokens({ messages: [{ role: 'user', content: 'hi' }], tools })
  t.equal(withTools, Math.ceil((2 + Buffer.byteLength(JSON.stringify(tools))) / 2) + 8)
  const image = { type: 'image_url', image_url: { url: `data:image/png;base64,${'A'.repeat(100_000)}` } }
  t.equal(estimatePromptTokens({ messages: [{ role: 'user', content: [{ type: 'text', text: 'abcd' }, image] }] }),
    2 + 8 + MEDIA_TOKENS, 'an image counts as one media allowance, whatever its bytes')
  t.equal(estimatePromptTokens({ model: 'codestral-latest', prompt: 'def f(', suffix: 'return 1' }), 7)
  t.equal(estimatePromptTokens({ input: ['abcd', 'efgh'] }), 4)
  t.equal(estimatePromptTokens(null), 0)
  t.equal(estimatePromptTokens('text'), 0)
  // deep nesting does not overflow the stack
  let deep: unknown = 'x'
  for (let i = 0; i < 100_000; i++) deep = [deep]
  t.equal(estimatePromptTokens({ inputs: deep }), 1)
})

t.test('prompt audio: seconds of base64 at the low bitrate, a URL at the most, the sum bounded', async (t) => {
  const audio = (input_audio: unknown) => ({ type: 'input_audio', input_audio })
  const prompt = (...parts: unknown[]) => ({ messages: [{ role: 'user', content: parts }] })
  const minute = Buffer.alloc(60 * AUDIO_BYTES_PER_SECOND).toString('base64')
  t.equal(estimatePrompt(prompt(audio(minute))).audioSeconds, 60, 'a minute of base64')
  t.equal(estimatePrompt(prompt(audio(`data:audio/mp3;base64,${minute}`))).audioSeconds, 60, 'in a data: URL')
  t.equal(estimatePrompt(prompt(audio(minute), audio(minute))).audioSeconds, 120, 'two parts add up')
  t.equal(estimatePrompt(prompt(audio('https://example.com/a.wav'))).audioSeconds, MAX_CHAT_AUDIO_SECONDS,
    'a URL: the most a call holds')
  t.equal(estimatePrompt(prompt(audio({ data: minute, format: 'mp3' }))).audioSeconds, 60, 'as { data, format }')
  t.equal(estimatePrompt(prompt(audio({ data: 'https://example.com/a.mp3', format: 'mp3' }))).audioSeconds,
    MAX_CHAT_AUDIO_SECONDS, 'a URL as { data, format }')
  t.equal(estimatePrompt(prompt(audio({ url: minute }))).audioSeconds, MAX_CHAT_AUDIO_SECONDS,
    'a shape Mistral does not document: the most')
  t.equal(estimatePrompt(prompt(audio(minute.repeat(50)))).audioSeconds, MAX_CHAT_AUDIO_SECONDS, 'bounded')
  t.equal(estimatePrompt(prompt({ type: 'text', text: 'hi' })).audioSeconds, 0, 'no audio, none')
  t.equal(estimatePrompt(prompt(audio(minute))).tokens, 8 + MEDIA_TOKENS, 'its tokens: one media allowance, as before')
})
