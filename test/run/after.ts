import { dropRunDatabase } from '../helpers/run-database.js'

await dropRunDatabase()
