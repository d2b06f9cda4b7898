// One cgroup v2 group per container, under one group for the whole plane: the runner (and
// `down`) can kill everything a container started, however it forked or daemonised, and
// knows when the last process is gone. Only process tracking is used (no controllers), so
// this works on hybrid hosts where v2 is mounted at /sys/fs/cgroup/unified.
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { waitFor } from '../common/net.ts';

function unifiedMount(): string {
  if (existsSync('/sys/fs/cgroup/cgroup.controllers')) return '/sys/fs/cgroup';
  return '/sys/fs/cgroup/unified';
}

export const PLANE_CGROUP = join(unifiedMount(), 'sl-plane');

export function containerCgroup(podUid: string, container: string): string {
  return join(PLANE_CGROUP, podUid, container);
}

export function podCgroup(podUid: string): string {
  return join(PLANE_CGROUP, podUid);
}

export async function ensureCgroup(path: string): Promise<void> {
  await mkdir(path, { recursive: true });
}

export async function pids(path: string): Promise<number[]> {
  const text = await readFile(join(path, 'cgroup.procs'), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map(Number);
}

/** SIGKILL to every process in the group and below; resolves when none is left. */
export async function killCgroup(path: string): Promise<void> {
  if (!existsSync(path)) return;
  try {
    await writeFile(join(path, 'cgroup.kill'), '1');
  } catch {
    // Kernels before 5.14 have no cgroup.kill: signal each process.
    for (const pid of await pids(path)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  await waitFor(async () => !(await populated(path)), { timeoutMs: 10_000, what: `cgroup ${path} to empty` });
}

async function populated(path: string): Promise<boolean> {
  const events = await readFile(join(path, 'cgroup.events'), 'utf8').catch(() => 'populated 0');
  return /populated 1/.test(events);
}

/** Kills and removes a group and everything below it. */
export async function removeCgroup(path: string): Promise<void> {
  if (!existsSync(path)) return;
  await killCgroup(path);
  const children = await readdir(path, { withFileTypes: true }).catch(() => []);
  for (const child of children) if (child.isDirectory()) await removeCgroup(join(path, child.name));
  await rmdir(path).catch(() => undefined);
}
