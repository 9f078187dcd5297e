import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parser } from '@prometheus-io/lezer-promql'
import { parse as parseYaml } from 'yaml'

export const DEPLOY = fileURLToPath(new URL('../../deploy', import.meta.url))
export const DASHBOARD = join(DEPLOY, 'grafana', 'dashboards', 'tramontane.json')
export const RULES_DIR = join(DEPLOY, 'prometheus', 'rules')

export interface Expression {
  /** where it is written, for messages */
  where: string
  /** PromQL with Grafana's variables replaced by values Prometheus accepts */
  expr: string
  source: 'dashboard' | 'rules'
}

// what Grafana puts in place of its variables: every workspace, model and job, and ranges a test run has data for
const GRAFANA_VARIABLES: Array<[RegExp, string]> = [
  [/\$__rate_interval/g, '1m'],
  [/\$__range/g, '5m'],
  [/\$(workspace|model|job)\b/g, '.*']
]

export function rulesFiles (): string[] {
  return readdirSync(RULES_DIR).filter((name) => name.endsWith('.yml')).map((name) => join(RULES_DIR, name))
}

/** Every PromQL expression of the dashboard (panels and variables) and of the rule files. */
export function expressions (): Expression[] {
  const found: Expression[] = []
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8'))
  const grafana = (text: string) =>
    GRAFANA_VARIABLES.reduce((expr, [pattern, value]) => expr.replace(pattern, value), text)
  for (const panel of dashboard.panels) {
    for (const target of panel.targets ?? []) {
      found.push({ where: `panel "${panel.title}" ${target.refId}`, expr: grafana(target.expr), source: 'dashboard' })
    }
  }
  for (const variable of dashboard.templating.list) {
    if (variable.type !== 'query') continue
    // label_values(<selector>, <label>) is Grafana's: the selector inside it is PromQL
    const selector = /^label_values\((.*), *\w+\)$/.exec(variable.definition)?.[1]
    if (!selector) throw new Error(`variable ${variable.name}: not a label_values() query`)
    found.push({ where: `variable $${variable.name}`, expr: grafana(selector), source: 'dashboard' })
  }
  for (const file of rulesFiles()) {
    for (const group of parseYaml(readFileSync(file, 'utf8')).groups) {
      for (const rule of group.rules) {
        found.push({ where: `${group.name} ${rule.record ?? rule.alert}`, expr: rule.expr, source: 'rules' })
      }
    }
  }
  return found
}

/** Names the recording rules define (alerts read them; the app does not emit them). */
export function recordedNames (): Set<string> {
  const names = new Set<string>()
  for (const file of rulesFiles()) {
    for (const group of parseYaml(readFileSync(file, 'utf8')).groups) {
      for (const rule of group.rules) if (rule.record) names.add(rule.record)
    }
  }
  return names
}

/** Parses with Prometheus' own grammar: the syntax errors and the metric names the selectors name. */
export function analyse (expr: string): { errors: string[], metrics: Set<string> } {
  const errors: string[] = []
  const metrics = new Set<string>()
  parser.parse(expr).iterate({
    enter (node) {
      if (node.type.isError) {
        errors.push(`syntax error at ${node.from}: "${expr.slice(Math.max(0, node.from - 10), node.to + 10)}"`)
      }
      // the metric name of a selector; label names and function names are other nodes
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector') {
        metrics.add(expr.slice(node.from, node.to))
      }
    }
  })
  return { errors, metrics }
}
