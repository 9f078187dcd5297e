import type { FastifyInstance } from 'fastify'
import { baseModelCards, fineTunedModelCards } from '../../fixtures/mistral/models.js'
import { sendNotFound } from './errors.js'

/** Every alias is listed as a card of its own, naming the canonical id among its aliases. */
const cards: Array<{ id: string }> = [
  ...baseModelCards.flatMap((card) => [card, ...card.aliases.map((alias) => ({
    ...card, id: alias, aliases: [card.id, ...card.aliases.filter((other) => other !== alias)]
  }))]),
  ...fineTunedModelCards
]

export async function modelRoutes (app: FastifyInstance) {
  app.get('/v1/models', async function listModels () {
    return { object: 'list', data: cards }
  })

  app.get<{ Params: { model_id: string } }>('/v1/models/:model_id', async function retrieveModel (request, reply) {
    const card = cards.find((candidate) => candidate.id === request.params.model_id)
    return card ?? sendNotFound(reply, 'Model not found')
  })
}
