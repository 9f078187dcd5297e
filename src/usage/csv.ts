// RFC 4180: comma-separated, CRLF line ends, a field quoted when it holds a comma, a quote or a line break, a quote
// inside doubled. A text field that starts like a formula (= + - @, tab, CR) is prefixed with an apostrophe so that a
// spreadsheet opening the file shows it instead of running it (OWASP, CSV injection): model names come from clients.
// A plain decimal (a discount, -0.500000) is a number, not a formula.
const NEEDS_QUOTES = /[",\r\n]/
const FORMULA_START = /^[=+\-@\t\r]/
const DECIMAL = /^-?\d+(\.\d+)?$/

function field (value: unknown): string {
  if (value === null || value === undefined) return ''
  if (typeof value !== 'string') return String(value)
  const text = FORMULA_START.test(value) && !DECIMAL.test(value) ? `'${value}` : value
  return NEEDS_QUOTES.test(text) ? `"${text.replaceAll('"', '""')}"` : text
}

/** A CSV document: a header line of `columns`, then one line per row with those fields in that order. */
export function toCsv<Row extends object> (columns: ReadonlyArray<keyof Row & string>, rows: Iterable<Row>): string {
  const lines = [columns.join(',')]
  for (const row of rows) lines.push(columns.map((column) => field(row[column])).join(','))
  return lines.join('\r\n') + '\r\n'
}
