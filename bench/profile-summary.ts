import { readFileSync } from 'node:fs'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}

interface CpuProfile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

/** The part of the profile to keep, in µs before its end (the process's exit): the load, not the boot. */
export interface Window {
  fromEndUs: number
  toEndUs: number
}

interface Entry {
  name: string
  where: string
  us: number
}

const IDLE = '(idle)'

/** Where a frame comes from: the gateway's own code, a package, Node itself, or V8. */
function origin (url: string): string {
  if (!url) return 'V8 / native'
  if (url.startsWith('node:')) return 'node core'
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (pkg) return pkg[1]
  const own = /\/dist\/(src\/.*)$/.exec(url) ?? /\/(src\/.*)$/.exec(url)
  return own ? own[1].replace(/\.js$/, '.ts') : url
}

/**
 * Self and inclusive time per function from a V8 .cpuprofile (what DevTools shows as "bottom-up"), shares of the
 * busy time (idle excluded). Inclusive time counts a function once per sample, so recursion is not double counted.
 */
export function summarizeProfile (file: string, window: Window, top = 15) {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const parent = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)
  const key = ({ callFrame: frame }: ProfileNode) =>
    `${frame.functionName || '(anonymous)'}\u0000${origin(frame.url)}:${frame.lineNumber + 1}`

  const self = new Map<string, number>()
  const inclusive = new Map<string, number>()
  const byOrigin = new Map<string, number>()
  let busy = 0
  let idle = 0
  let at = profile.startTime
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0
    at += delta
    const beforeEnd = profile.endTime - at
    if (beforeEnd > window.fromEndUs || beforeEnd < window.toEndUs) return
    const node = byId.get(id)
    if (!node) return
    if (node.callFrame.functionName === IDLE) { idle += delta; return }
    busy += delta
    self.set(key(node), (self.get(key(node)) ?? 0) + delta)
    const where = node.callFrame.url ? origin(node.callFrame.url) : node.callFrame.functionName || 'V8 / native'
    const bucket = where.startsWith('src/') ? 'tramontane (src/)' : where
    byOrigin.set(bucket, (byOrigin.get(bucket) ?? 0) + delta)
    const seen = new Set<string>()
    for (let frameId: number | undefined = id; frameId !== undefined; frameId = parent.get(frameId)) {
      const frame = byId.get(frameId) as ProfileNode
      if (frame.callFrame.functionName === '(root)') break
      const k = key(frame)
      if (seen.has(k)) continue
      seen.add(k)
      inclusive.set(k, (inclusive.get(k) ?? 0) + delta)
    }
  })
  const entries = (map: Map<string, number>): Entry[] => [...map.entries()]
    .map(([k, us]) => { const [name, where] = k.split('\u0000'); return { name, where, us } })
    .sort((a, b) => b.us - a.us)
  return {
    busyMs: busy / 1000,
    idleMs: idle / 1000,
    self: entries(self).slice(0, top),
    // the gateway's own functions, inclusive: which step of the request costs what
    ownInclusive: entries(inclusive).filter((e) => e.where.startsWith('src/')).slice(0, top),
    byOrigin: [...byOrigin.entries()].sort((a, b) => b[1] - a[1]).slice(0, top).map(([where, us]) => ({ where, us }))
  }
}

export function profileMarkdown (summary: ReturnType<typeof summarizeProfile>, title: string): string {
  const share = (us: number) => `${((us / (summary.busyMs * 1000)) * 100).toFixed(1)} %`
  const lines = [`## CPU profile: ${title}`, '',
    `Under load only (boot and shutdown left out): busy ${summary.busyMs.toFixed(0)} ms, idle ` +
      `${summary.idleMs.toFixed(0)} ms; shares are of the busy time.`, '',
    '### Self time by function', '', '| function | where | self | share |', '|---|---|---:|---:|']
  const row = (e: Entry) => `| \`${e.name}\` | ${e.where} | ${(e.us / 1000).toFixed(0)} ms | ${share(e.us)} |`
  for (const e of summary.self) lines.push(row(e))
  lines.push('', '### Self time by origin', '', '| origin | self | share |', '|---|---:|---:|')
  for (const e of summary.byOrigin) lines.push(`| ${e.where} | ${(e.us / 1000).toFixed(0)} ms | ${share(e.us)} |`)
  lines.push('', '### The gateway\'s own functions, inclusive time', '',
    '| function | where | inclusive | share |', '|---|---|---:|---:|')
  for (const e of summary.ownInclusive) lines.push(row(e))
  return lines.join('\n') + '\n'
}
