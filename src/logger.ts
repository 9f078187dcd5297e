import { createRequire } from 'node:module'
import type { FastifyServerOptions } from 'fastify'
import type { Config } from './config.js'

// Belt and braces: no code path logs a credential on purpose, and these paths catch one that would by accident.
export const redactedPaths = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  '*.headers.authorization',
  'headers.authorization',
  '*.mistralKey',
  '*.apiKey',
  '*.token',
  '*.key'
]

export function loggerOptions (config: Pick<Config, 'LOG_LEVEL'>): FastifyServerOptions['logger'] {
  return {
    level: config.LOG_LEVEL,
    redact: { paths: redactedPaths, censor: '[redacted]' },
    // request lines carry facts, not payloads: method, path without query, and who asked
    serializers: {
      req: (req) => ({ method: req.method, url: req.url.split('?')[0] }),
      res: (res) => ({ statusCode: res.statusCode })
    },
    ...(process.stdout.isTTY && prettyPrinterInstalled() ? { transport: { target: 'pino-pretty' } } : {})
  }
}

/**
 * pino-pretty is a development dependency: an install without it (the Docker image, `npm ci --omit=dev`) run on a
 * terminal (`docker run -it`) logs JSON rather than failing to start.
 */
function prettyPrinterInstalled (): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty')
    return true
  } catch {
    return false
  }
}
