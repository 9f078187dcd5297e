import { recreateRunDatabase } from '../helpers/run-database.js'

await recreateRunDatabase()
