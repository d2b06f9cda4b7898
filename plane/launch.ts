// How a container becomes a process: util-linux does what a container runtime would. The
// process enters its pod's network namespace (nsenter), gets its own mount and UTS namespaces
// (unshare), and a shell script then joins the container's cgroup, mounts a copy-on-write
// overlay of / as the container's root with a minimal /dev, a private /proc and /sys, the
// volumes and the pod's hosts/resolv.conf files, and finally execs the command under the
// container's user, groups and capability bounding set (setpriv) in its working directory.
// Every step execs the next, so the pid the runner spawned is the container's main process.
import { lstatSync, readlinkSync } from 'node:fs';
import { posix } from 'node:path';

export interface Mount {
  source: string;
  /** Path inside the container. */
  target: string;
  readOnly: boolean;
  /** A single file (bind-mounted onto a file), not a directory. */
  file?: boolean;
}

export interface LaunchSpec {
  /** /run/netns/<name>; undefined for hostNetwork pods. */
  netns?: string;
  hostname: string;
  /** The container's cgroup directory (its cgroup.procs is joined first). */
  cgroup: string;
  root: string;
  upper: string;
  work: string;
  mounts: Mount[];
  /** Paths whose ancestors are made traversable (o+x) in the container's view. */
  traverse: string[];
  readOnlyRoot: boolean;
  uid: number;
  gid: number;
  groups: number[];
  noNewPrivs: boolean;
  /** The capability bounding set (lower case, no cap_ prefix), or every capability. */
  capabilities: string[] | 'all';
  workingDir: string;
  argv: string[];
}

/** What containerd grants a container that asks for nothing. */
export const DEFAULT_CAPABILITIES = [
  'chown',
  'dac_override',
  'fsetid',
  'fowner',
  'mknod',
  'net_raw',
  'setgid',
  'setuid',
  'setfcap',
  'setpcap',
  'net_bind_service',
  'sys_chroot',
  'kill',
  'audit_write',
];

/** The bounding set from a securityContext: the defaults, less `drop`, plus `add` (ALL allowed in both). */
export function capabilitySet(
  context: { privileged?: boolean; capabilities?: { add?: string[]; drop?: string[] } } | undefined,
): string[] | 'all' {
  if (context?.privileged) return 'all';
  const norm = (c: string) => c.toLowerCase().replace(/^cap_/, '');
  const add = (context?.capabilities?.add ?? []).map(norm);
  const drop = (context?.capabilities?.drop ?? []).map(norm);
  if (add.includes('all')) return 'all';
  const set = new Set(drop.includes('all') ? [] : DEFAULT_CAPABILITIES.filter((c) => !drop.includes(c)));
  for (const c of add) set.add(c);
  return [...set];
}

/**
 * A path inside the container with its symlinks resolved inside the container's root, as
 * runc's securejoin does: the root is this machine's / seen through an overlay, so the links
 * are the machine's, but an absolute link must not lead a mount out of the root
 * (/var/run -> /run put /var/run/secrets on the host's /run, outside the container).
 */
export function resolveInRoot(path: string, lstat = lstatSync, readlink = readlinkSync): string {
  const pending = posix.normalize(path).split('/').filter(Boolean);
  let resolved = '/';
  for (let hops = 0; pending.length > 0; ) {
    const part = pending.shift()!;
    const next = posix.join(resolved, part);
    let link: string | undefined;
    try {
      if (lstat(next).isSymbolicLink()) link = readlink(next, 'utf8') as string;
    } catch {
      // Missing: the rest is created as it is named.
    }
    if (link === undefined) {
      resolved = next;
      continue;
    }
    if (++hops > 40) throw new Error(`too many symbolic links in ${path}`);
    pending.unshift(...link.split('/').filter(Boolean));
    if (link.startsWith('/')) resolved = '/';
  }
  return resolved;
}

export function quote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

function parentsOf(path: string): string[] {
  const parts = path.split('/').filter(Boolean);
  return parts.map((_, i) => `/${parts.slice(0, i + 1).join('/')}`);
}

const DEVICES = ['null', 'zero', 'full', 'random', 'urandom', 'tty'];

/** The setup script (run by /bin/sh with the command line as "$@"). */
export function launchScript(spec: LaunchSpec): string {
  const r = (path: string) => quote(spec.root + (path === '/' ? '' : path));
  const lines = [
    'set -e',
    `echo $$ > ${quote(`${spec.cgroup}/cgroup.procs`)}`,
    spec.netns ? `/usr/bin/hostname ${quote(spec.hostname)}` : ':',
    `/usr/bin/mount -t overlay overlay -o ${quote(`lowerdir=/,upperdir=${spec.upper},workdir=${spec.work}`)} ${r('/')}`,
    `/usr/bin/mount -t tmpfs -o nosuid,mode=755,size=65536k tmpfs ${r('/dev')}`,
    ...DEVICES.map((d) => `: > ${r(`/dev/${d}`)}; /usr/bin/mount --bind /dev/${d} ${r(`/dev/${d}`)}`),
    `/usr/bin/mkdir -p ${r('/dev/shm')} ${r('/dev/pts')}`,
    `/usr/bin/mount -t tmpfs -o nosuid,nodev,mode=1777,size=65536k shm ${r('/dev/shm')}`,
    `/usr/bin/ln -s /proc/self/fd ${r('/dev/fd')}`,
    ...['stdin', 'stdout', 'stderr'].map((s, i) => `/usr/bin/ln -s /proc/self/fd/${i} ${r(`/dev/${s}`)}`),
    `/usr/bin/mount --rbind /proc ${r('/proc')}`,
    // A fresh sysfs shows the pod's own network devices.
    spec.netns
      ? `/usr/bin/mount -t sysfs -o ro,nosuid,nodev,noexec sysfs ${r('/sys')}`
      : `/usr/bin/mount --rbind /sys ${r('/sys')}`,
  ];
  for (const m of spec.mounts) {
    const target = r(m.target);
    if (m.file) {
      const dir = m.target.slice(0, m.target.lastIndexOf('/')) || '/';
      lines.push(`/usr/bin/mkdir -p ${r(dir)}; [ -e ${target} ] || : > ${target}`);
    } else {
      lines.push(`/usr/bin/mkdir -p ${target}`);
    }
    lines.push(`/usr/bin/mount --bind ${quote(m.source)} ${target}`);
    if (m.readOnly) lines.push(`/usr/bin/mount -o remount,bind,ro ${target}`);
  }
  const traversed = new Set(spec.traverse.flatMap(parentsOf));
  if (traversed.size > 0) {
    lines.push(`/usr/bin/chmod o+x ${[...traversed].map((p) => r(p)).join(' ')} 2>/dev/null || true`);
  }
  if (spec.readOnlyRoot) lines.push(`/usr/bin/mount -o remount,bind,ro ${r('/')}`);
  const groups = spec.groups.length > 0 ? `--groups=${spec.groups.join(',')}` : '--clear-groups';
  const caps =
    spec.capabilities === 'all'
      ? '--bounding-set=+all'
      : `--bounding-set=-all${spec.capabilities.map((c) => `,+${c}`).join('')}`;
  const setpriv = [
    '/usr/bin/setpriv',
    `--reuid=${spec.uid}`,
    `--regid=${spec.gid}`,
    groups,
    ...(spec.noNewPrivs ? ['--no-new-privs'] : []),
    caps,
    '--inh-caps=-all',
    '--',
  ];
  lines.push(
    `exec /usr/bin/unshare --root=${r('/')} --wd=${quote(spec.workingDir)} -- ${setpriv.join(' ')} "$@"`,
  );
  return lines.join('\n');
}

/** The program and arguments to spawn for a container. */
export function launchCommand(spec: LaunchSpec): { file: string; args: string[] } {
  const shell = ['/bin/sh', '-c', launchScript(spec), 'sluice-container', ...spec.argv];
  const unshare = [
    '/usr/bin/unshare',
    '--mount',
    ...(spec.netns ? ['--uts'] : []),
    '--propagation',
    'private',
    '--',
  ];
  if (!spec.netns) return { file: unshare[0]!, args: [...unshare.slice(1), ...shell] };
  return { file: '/usr/bin/nsenter', args: [`--net=${spec.netns}`, '--', ...unshare, ...shell] };
}

/**
 * A command inside a running container (exec probes and hooks): its namespaces, root and
 * working directory, its user, and its cgroup, so that killing the container kills it too.
 */
export function execCommand(
  pid: number,
  cgroup: string,
  spec: Pick<LaunchSpec, 'uid' | 'gid' | 'groups' | 'noNewPrivs' | 'capabilities'> & { netns?: string },
  argv: string[],
): { file: string; args: string[] } {
  const groups = spec.groups.length > 0 ? `--groups=${spec.groups.join(',')}` : '--clear-groups';
  const caps =
    spec.capabilities === 'all'
      ? '--bounding-set=+all'
      : `--bounding-set=-all${spec.capabilities.map((c) => `,+${c}`).join('')}`;
  const script = [
    `echo $$ > ${quote(`${cgroup}/cgroup.procs`)}`,
    `exec /usr/bin/nsenter --target=${pid} --mount ${spec.netns ? '--uts --net ' : ''}--root --wd -- ` +
      `/usr/bin/setpriv --reuid=${spec.uid} --regid=${spec.gid} ${groups} ${spec.noNewPrivs ? '--no-new-privs ' : ''}${caps} --inh-caps=-all -- "$@"`,
  ].join('\n');
  return { file: '/bin/sh', args: ['-c', script, 'sluice-exec', ...argv] };
}
