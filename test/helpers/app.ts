import { createHash, randomBytes } from 'node:crypto'
import { Writable } from 'node:stream'
import pino from 'pino'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { loadConfig, type Config } from '../../src/config.js'
import { startFakeMistral, type FakeMistral } from './fake-mistral.js'
import { runDatabaseUrl } from './run-database.js'

export const TEST_DATABASE_URL = runDatabaseUrl()
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

// one master key ring for the whole run, so that several apps (replicas) share it, and so do the test files that tap
// runs at once on this run's database: a start refuses stored keys its ring cannot open. Derived from the run's
// database, which every test process of the run names alike
export const TEST_MASTER_KEYS = process.env.TEST_MASTER_KEYS ??
  `test:${createHash('sha256').update(`tramontane test master key ${TEST_DATABASE_URL}`).digest('base64')}`
// one admin token per test process: the apps it builds share it
export const TEST_ADMIN_TOKEN = `adm_${randomBytes(24).toString('hex')}`
/** What a scraper of the app's own port presents (src/metrics.ts) */
export const SCRAPE_HEADERS = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` }

/** What a gateway process needs to join this run's PostgreSQL, Redis and secrets, in front of a fake Mistral. */
export function gatewayEnv (mistralUrl: string): Record<string, string> {
  return {
    DATABASE_URL: TEST_DATABASE_URL,
    REDIS_URL: TEST_REDIS_URL,
    MISTRAL_BASE_URL: mistralUrl,
    TRAMONTANE_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    TRAMONTANE_MASTER_KEYS: TEST_MASTER_KEYS
  }
}

interface Tap {
  teardown (fn: () => unknown): void
}

export interface TestWorkspace {
  id: string
  slug: string
  /** the plaintext Mistral key stored as `default` */
  mistralKey: string
  token: string
  tokenId: string
  headers: Record<string, string>
}

export interface TestApp {
  app: FastifyInstance
  mistral: FakeMistral
  config: Config
  /** every log line the app wrote, raw */
  logs: string[]
  adminHeaders: Record<string, string>
  createWorkspace (options?: { keys?: string[], tokenBody?: Record<string, unknown> }): Promise<TestWorkspace>
  admin (method: string, url: string, payload?: unknown): Promise<{ statusCode: number, json: any, body: string }>
}

export function testConfig (overrides: Record<string, string> = {}): Config {
  return loadConfig({
    DATABASE_URL: TEST_DATABASE_URL,
    REDIS_URL: TEST_REDIS_URL,
    TRAMONTANE_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    TRAMONTANE_MASTER_KEYS: TEST_MASTER_KEYS,
    LOG_LEVEL: 'info',
    ...overrides
  })
}

/** A gateway on real PostgreSQL and Redis in front of a fresh fake Mistral; closed at the end of the test. */
export async function buildTestApp (t: Tap, overrides: Record<string, string> = {},
  shared?: { mistral?: FakeMistral }): Promise<TestApp> {
  const mistral = shared?.mistral ?? await startFakeMistral()
  const config = testConfig({ MISTRAL_BASE_URL: mistral.url, ...overrides })
  const logs: string[] = []
  const sink = new Writable({ write (chunk, _encoding, done) { logs.push(chunk.toString()); done() } })
  const app = await buildApp({ config, logger: pino({ level: config.LOG_LEVEL }, sink) })
  t.teardown(async () => {
    await app.close()
    if (!shared?.mistral) await mistral.close()
  })
  const adminHeaders = { authorization: `Bearer ${TEST_ADMIN_TOKEN}` }
  const admin = async (method: string, url: string, payload?: unknown) => {
    const res = await app.inject({ method: method as 'GET', url, headers: adminHeaders, payload: payload as object })
    return { statusCode: res.statusCode, json: safeJson(res.body), body: res.body }
  }
  return {
    app,
    mistral,
    config,
    logs,
    adminHeaders,
    admin,
    async createWorkspace (options = {}) {
      const slug = `t-${randomBytes(6).toString('hex')}`
      const created = await admin('POST', '/admin/v1/workspaces', { slug, name: `Test ${slug}` })
      if (created.statusCode !== 201) throw new Error(`workspace: ${created.body}`)
      const mistralKey = `mk-${slug}-${randomBytes(8).toString('hex')}`
      for (const name of options.keys ?? ['default']) {
        const key = name === 'default' ? mistralKey : `${mistralKey}-${name}`
        const res = await admin('POST', `/admin/v1/workspaces/${slug}/mistral-keys`, { name, key })
        if (res.statusCode !== 201) throw new Error(`key: ${res.body}`)
      }
      const minted = await admin('POST', `/admin/v1/workspaces/${slug}/tokens`, { name: 'test', ...options.tokenBody })
      if (minted.statusCode !== 201) throw new Error(`token: ${minted.body}`)
      return {
        id: created.json.id,
        slug,
        mistralKey,
        token: minted.json.token,
        tokenId: minted.json.id,
        headers: { authorization: `Bearer ${minted.json.token}` }
      }
    }
  }
}

/** Listens on a loopback port (streams and aborts need a real socket: inject buffers). */
export async function listen (app: FastifyInstance): Promise<string> {
  return app.listen({ port: 0, host: '127.0.0.1' })
}

function safeJson (body: string): any {
  try {
    return JSON.parse(body)
  } catch {
    return undefined
  }
}
