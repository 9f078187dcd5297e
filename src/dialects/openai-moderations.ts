import { badRequest } from '../errors.js'
import { parseJsonObject } from './openai-response.js'

// OpenAI's and Mistral's moderations share a path, not a contract (MISTRAL-NOTES §5.6): Mistral requires a model of
// its own and answers with its own category names and no `flagged`. A request that names no model, or one of
// OpenAI's, can only come from an OpenAI client: it is sent to Mistral's moderation model and its answer gains
// OpenAI's category names. A request naming a Mistral model passes as it is. Every answer gains `flagged`: an OpenAI
// client naming a Mistral model reads it too (openai-node types it as always there, so a missing one reads as "not
// flagged"), and the Mistral SDK drops the key (its ModerationObject schema strips unknown keys).

/** Mistral Moderation 2: the current moderation model (MISTRAL-NOTES §4), and one the shipped price book prices. */
export const MISTRAL_MODERATION_MODEL = 'mistral-moderation-2603'

/** `omni-moderation-latest`, `text-moderation-latest`, `text-moderation-stable` and their dated versions */
const OPENAI_MODEL = /^(omni|text)-moderation-/

/**
 * OpenAI's categories that have a Mistral category of the same scope, and which ones (the highest score counts).
 * OpenAI's `harassment` and its sub-categories (`hate/threatening`, `self-harm/intent`, `sexual/minors`…) have none:
 * they are left out rather than guessed.
 */
const OPENAI_CATEGORIES: ReadonlyArray<readonly [string, readonly string[]]> = [
  ['sexual', ['sexual']],
  ['hate', ['hate_and_discrimination']],
  ['violence', ['violence_and_threats']],
  ['self-harm', ['selfharm']],
  // Moderation 2 splits what the first model called `dangerous_and_criminal_content`
  ['illicit', ['dangerous', 'criminal', 'dangerous_and_criminal_content']]
]

/**
 * Translates an OpenAI moderation request in place, and says whether it was one. OpenAI's multi-modal input (an array
 * of parts) is one input: its text parts become one string; Mistral moderates text only, so an image is refused.
 */
export function translateModerationRequest (body: Record<string, unknown>): boolean {
  const { model } = body
  const openAi = model === undefined || model === null || (typeof model === 'string' && OPENAI_MODEL.test(model))
  if (!openAi) return false
  body.model = MISTRAL_MODERATION_MODEL
  if (Array.isArray(body.input) && body.input.some(isPart)) body.input = textOfParts(body.input)
  return true
}

/**
 * Mistral's moderation answer with `flagged` added to each result, for a request naming a Mistral model: the Mistral
 * SDK's calls too, so it costs one parse and one serialisation, and none when every result has its `flagged` already.
 */
export function flaggedModerations (body: string): string {
  const answer = parseAnswer(body)
  const unflagged = (answer?.results ?? []).filter(isPart).filter((result) => !('flagged' in result))
  if (unflagged.length === 0) return body
  // set in place, not spread into copies; a `flagged` Mistral sent itself is kept
  for (const result of unflagged) result.flagged = isFlagged(result.categories)
  return JSON.stringify(answer)
}

/**
 * Mistral's moderation answer with what an OpenAI client reads added to each result: `flagged` and OpenAI's category
 * names beside Mistral's, in both `categories` and `category_scores`.
 */
export function openAiModerations (body: string): string {
  return mapResults(body, (result) => {
    const { categories = {}, category_scores: scores = {}, ...rest } = result as Record<string, Record<string, unknown>>
    const openAiCategories: Record<string, boolean> = {}
    const openAiScores: Record<string, number> = {}
    for (const [name, mistralNames] of OPENAI_CATEGORIES) {
      const present = mistralNames.filter((mistral) => mistral in categories || mistral in scores)
      if (present.length === 0) continue
      openAiCategories[name] = present.some((mistral) => categories[mistral] === true)
      const values = present.map((mistral) => scores[mistral]).filter((score) => typeof score === 'number')
      if (values.length > 0) openAiScores[name] = Math.max(...values)
    }
    return {
      flagged: isFlagged(categories),
      categories: { ...categories, ...openAiCategories },
      category_scores: { ...scores, ...openAiScores },
      ...rest
    }
  })
}

/** Any category Mistral flagged, its own health, financial, law and PII ones included: they are its policy. */
function isFlagged (categories: unknown): boolean {
  return isPart(categories) && Object.values(categories).some((hit) => hit === true)
}

/** Each result of an answer rewritten; an answer that is not JSON, or has no results, passes as it came. */
function mapResults (body: string, rewrite: (result: Record<string, unknown>) => unknown): string {
  const answer = parseAnswer(body)
  if (answer === undefined) return body
  answer.results = answer.results.map((result) => isPart(result) ? rewrite(result) : result)
  return JSON.stringify(answer)
}

/** A moderation answer; undefined for one that is not JSON, or has no results. */
function parseAnswer (body: string): { results: unknown[] } | undefined {
  const parsed = parseJsonObject(body)
  return parsed !== undefined && Array.isArray(parsed.results) ? parsed as { results: unknown[] } : undefined
}

function isPart (item: unknown): item is Record<string, unknown> {
  return item !== null && typeof item === 'object'
}

function textOfParts (parts: unknown[]): string {
  return parts.map((part) => {
    if (typeof part === 'string') return part
    if (isPart(part) && part.type === 'text' && typeof part.text === 'string') return part.text
    throw badRequest('Mistral\'s moderation reads text only: send text inputs', { param: 'input' })
  }).join('\n')
}
