// One plane per machine runs pods: the network (links, routes, the firewall table, kube-proxy's
// rules, the node address and its fixed ports) is the machine's. The plane that takes this lock
// runs the node side; a plane started while another holds it runs as before, with kwok
// simulating every pod. The lock also keeps ip_forward's value from before the first plane
// changed it, so the last `down` puts it back even after a holder died.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exited } from '../common/process.ts';

export const NODE_LOCK = process.env.SLUICE_NODE_LOCK ?? '/run/sluice-plane-node';
const OWNER = join(NODE_LOCK, 'owner.json');

export interface LockOwner {
  /** The holder's state directory. */
  stateDir: string;
  /** A process that lives as long as the holder runs pods (its pod runner, or the `up` starting it). */
  pid: number;
  /** /proc/sys/net/ipv4/ip_forward before any plane set it. */
  ipForward?: string;
}

export async function lockOwner(): Promise<LockOwner | undefined> {
  try {
    return JSON.parse(await readFile(OWNER, 'utf8')) as LockOwner;
  } catch {
    return undefined;
  }
}

async function writeOwner(owner: LockOwner): Promise<void> {
  const temporary = `${OWNER}.${process.pid}`;
  await writeFile(temporary, `${JSON.stringify(owner)}\n`);
  await rename(temporary, OWNER);
}

export type Acquired =
  | {
      acquired: true;
      owner: LockOwner /** A dead holder's leftovers must be cleaned first. */;
      stale: boolean;
    }
  | { acquired: false; holder: LockOwner };

/**
 * Takes the lock for `stateDir` (again, when it already holds it). A holder whose process is
 * gone is stale: its lock is taken over, with the ip_forward value it saved.
 */
export async function acquireNodeLock(stateDir: string, pid: number): Promise<Acquired> {
  for (;;) {
    try {
      await mkdir(NODE_LOCK);
      const owner = { stateDir, pid };
      await writeOwner(owner);
      return { acquired: true, owner, stale: false };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = await lockOwner();
    if (!holder) {
      // A lock directory without an owner (a crash between mkdir and write): retake it.
      await rm(NODE_LOCK, { recursive: true, force: true });
      continue;
    }
    const alive = !(await exited(holder.pid));
    if (holder.stateDir === stateDir || !alive) {
      const owner = { stateDir, pid, ipForward: holder.ipForward };
      await writeOwner(owner);
      return { acquired: true, owner, stale: holder.stateDir !== stateDir || !alive };
    }
    return { acquired: false, holder };
  }
}

export async function updateNodeLock(owner: LockOwner): Promise<void> {
  await writeOwner(owner);
}

/** Drops the lock if `stateDir` holds it. */
export async function releaseNodeLock(stateDir: string): Promise<void> {
  const holder = await lockOwner();
  if (holder?.stateDir === stateDir) await rm(NODE_LOCK, { recursive: true, force: true });
}
