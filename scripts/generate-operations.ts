import { writeFile } from 'node:fs/promises'
import { buildOperationTable, formatOperationTable, generatedPath, readSpec, specPath } from './operation-table.js'

// Regenerate after every spec update: test/unit/operations.test.ts fails while the committed table is stale.
const source = specPath()
const operations = buildOperationTable(await readSpec(source))
await writeFile(generatedPath, formatOperationTable(operations))
console.log(`${operations.length} operations from ${source} written to ${generatedPath}`)
