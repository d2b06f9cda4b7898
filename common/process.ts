import { readFile } from 'node:fs/promises';

/**
 * The process has exited: no /proc entry, or a zombie waiting to be reaped (a detached or
 * orphaned process is not ours to reap). `kill(pid, 0)` would still call a zombie alive.
 */
export async function exited(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return stat === undefined || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}
