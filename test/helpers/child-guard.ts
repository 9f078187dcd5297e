import { readdirSync, readFileSync } from 'node:fs'
import { onExit } from 'signal-exit'

let guarded = false

/**
 * However this test process ends, kill what it spawned: a detached gateway (its own process group) or a
 * redis-server would outlive it. Its teardowns run only when it ends on its own; tap times a file out with an IPC
 * message, then SIGALRM, then SIGKILL, which signal-exit (tap's own) sees but for the last. Linux: children are
 * found in /proc.
 */
export function killChildrenAtExit () {
  if (guarded) return
  guarded = true
  onExit(() => {
    for (const { pid, leader } of children()) {
      try { process.kill(leader ? -pid : pid, 'SIGKILL') } catch {}
    }
  })
}

function children () {
  const found: Array<{ pid: number, leader: boolean }> = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      // after "pid (comm) ": state, ppid, pgrp
      const [, ppid, pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(ppid) === process.pid) found.push({ pid: Number(entry), leader: Number(pgrp) === Number(entry) })
    } catch {}
  }
  return found
}
