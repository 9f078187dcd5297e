import { randomInt, randomUUID } from 'node:crypto'

/** Mistral's completion ids are 32 hex characters, with no `chatcmpl-` prefix (MISTRAL-NOTES §5.3). */
export function hexId (): string {
  return randomUUID().replaceAll('-', '')
}

const ALPHANUMERIC = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'

/** Tool-call ids must match `^[a-zA-Z0-9]{9}$` (MISTRAL-NOTES §5.2). */
export function toolCallId (): string {
  return Array.from({ length: 9 }, () => ALPHANUMERIC[randomInt(ALPHANUMERIC.length)]).join('')
}

export function unixSeconds (): number {
  return Math.floor(Date.now() / 1000)
}

export function isoNow (): string {
  return new Date().toISOString()
}
