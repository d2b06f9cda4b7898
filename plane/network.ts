// The plane's network, Calico style: no bridge; each pod has a network namespace whose eth0 is
// one end of a veth pair, with the pod IP as a /32 and one route, 198.18.0.0/15 via the node
// address. The host side (sl-<id>) carries the node address too and a /32 route to the pod,
// so every packet between pods, Services and the host crosses the host's routing and
// kube-proxy's rules (no bridge netfilter, no hairpin mode). Pods have no default route and no
// NAT to the outside; a firewall table keeps forwarded traffic between the plane's own links,
// and a blackhole route for the whole range drops packets to pods or ClusterIPs not set up.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { SluiceError } from '../common/errors.ts';
import { NODE_ADDRESS, PLANE_RANGE, SERVICE_RANGE } from './addresses.ts';

/** Every link, namespace and table the plane makes carries this prefix (down finds its own by it). */
export const PREFIX = 'sl-';
export const HOST_LINK = 'sl-host';
export const FIREWALL_TABLE = 'sluice-plane';

export class NetworkError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PLANE_NETWORK', message, options);
  }
}

/** Runs a program; rejects with its stderr on a non-zero exit. */
export function run(file: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d;
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d;
    });
    child.on('error', (e) => reject(new NetworkError(`${file}: ${e.message}`, { cause: e })));
    child.on('close', (code) => {
      if (code === 0) resolve(out);
      else
        reject(new NetworkError(`${file} ${args.join(' ')} failed (${code}): ${err.trim() || out.trim()}`));
    });
    child.stdin.end(input);
  });
}

/** The name of a pod's namespace and of its host-side link (15 characters at most). */
export function sandboxName(podUid: string): string {
  return PREFIX + createHash('sha256').update(podUid).digest('hex').slice(0, 11);
}

/** nft's ruleset for the plane's firewall table (pure, so tests can read it). */
export function firewallRules(): string {
  const plane = PLANE_RANGE;
  return `table inet ${FIREWALL_TABLE} {
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    ip saddr ${plane} oifname != "${PREFIX}*" drop
    ip daddr ${plane} iifname != "${PREFIX}*" drop
  }
  chain input {
    type filter hook input priority filter - 10; policy accept;
    ip daddr ${plane} iifname != { "lo", "${PREFIX}*" } drop
  }
}
`;
}

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

/**
 * Host side, once per plane: the node address on a link of its own, sl-host (a bridge without
 * ports: a sink as a dummy link would be; this kernel has no dummy driver). It also takes the
 * Service range, as kube-proxy's IPVS mode routes ClusterIPs to kube-ipvs0, so a host connect()
 * finds a route before kube-proxy's DNAT. Then the blackhole, the firewall table, and IPv4
 * forwarding (its old value is returned so `down` can restore it).
 */
export async function setUpHost(): Promise<{ ipForward: string }> {
  const ipForward = (await readFile(IP_FORWARD, 'utf8')).trim();
  await tearDownHost(undefined);
  await run('ip', ['-batch', '-'], hostBatch());
  await run('nft', ['-f', '-'], firewallRules());
  await writeFile(IP_FORWARD, '1');
  return { ipForward };
}

export function hostBatch(): string {
  return [
    `link add ${HOST_LINK} type bridge`,
    `addr add ${NODE_ADDRESS}/32 dev ${HOST_LINK}`,
    `link set ${HOST_LINK} up`,
    `route add blackhole ${PLANE_RANGE}`,
    `route add ${SERVICE_RANGE} dev ${HOST_LINK} src ${NODE_ADDRESS}`,
    '',
  ].join('\n');
}

async function quietly(work: Promise<unknown>): Promise<void> {
  await work.catch(() => undefined);
}

/** The plane's namespaces and links on this machine (by prefix). */
export async function planeNamespaces(): Promise<string[]> {
  const out = await run('ip', ['netns', 'list']).catch(() => '');
  return out
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n.startsWith(PREFIX));
}

export async function planeLinks(): Promise<string[]> {
  const out = await run('ip', ['-o', 'link', 'show']);
  return out
    .split('\n')
    .map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1] ?? '')
    .filter((n) => n.startsWith(PREFIX));
}

/**
 * Removes everything setUpHost and the sandboxes made: every sl- namespace and link (their
 * routes go with them), the blackhole, the firewall table and kube-proxy's tables, and puts
 * ip_forward back (when the old value is known).
 */
export async function tearDownHost(ipForward: string | undefined): Promise<void> {
  for (const ns of await planeNamespaces()) await quietly(run('ip', ['netns', 'delete', ns]));
  for (const link of await planeLinks()) await quietly(run('ip', ['link', 'delete', link]));
  await quietly(run('ip', ['route', 'delete', 'blackhole', PLANE_RANGE]));
  for (const table of [`inet ${FIREWALL_TABLE}`, 'ip kube-proxy', 'ip6 kube-proxy']) {
    await quietly(run('nft', ['delete', 'table', ...table.split(' ')]));
  }
  if (ipForward !== undefined) await writeFile(IP_FORWARD, ipForward);
}

/** What of the plane's network is still on this machine (empty after a clean `down`). */
export async function leftovers(): Promise<string[]> {
  const found = [
    ...(await planeNamespaces()).map((n) => `network namespace ${n}`),
    ...(await planeLinks()).map((l) => `link ${l}`),
  ];
  const blackholes = await run('ip', ['route', 'show', 'type', 'blackhole']).catch(() => '');
  if (blackholes.includes(PLANE_RANGE)) found.push(`blackhole route ${PLANE_RANGE}`);
  const tables = await run('nft', ['list', 'tables']).catch(() => '');
  for (const table of [`inet ${FIREWALL_TABLE}`, 'ip kube-proxy', 'ip6 kube-proxy']) {
    if (tables.split('\n').includes(`table ${table}`)) found.push(`nftables table ${table}`);
  }
  return found;
}

/** The commands that give a pod its namespace, veth pair, address and routes (pure). */
export function sandboxBatches(name: string, podIp: string): { host: string; pod: string } {
  return {
    host: [
      `netns add ${name}`,
      `link add ${name} type veth peer name eth0 netns ${name}`,
      `addr add ${NODE_ADDRESS}/32 dev ${name}`,
      `link set ${name} up`,
      `route add ${podIp}/32 dev ${name} src ${NODE_ADDRESS}`,
      '',
    ].join('\n'),
    pod: [
      'link set lo up',
      `addr add ${podIp}/32 dev eth0`,
      'link set eth0 up',
      `route add ${NODE_ADDRESS}/32 dev eth0 scope link`,
      `route add ${PLANE_RANGE} via ${NODE_ADDRESS} dev eth0 src ${podIp}`,
      '',
    ].join('\n'),
  };
}

export async function createSandbox(name: string, podIp: string): Promise<void> {
  await deleteSandbox(name);
  const { host, pod } = sandboxBatches(name, podIp);
  try {
    await run('ip', ['-batch', '-'], host);
    await run('ip', ['-netns', name, '-batch', '-'], pod);
  } catch (err) {
    await deleteSandbox(name);
    throw err;
  }
}

/** Deleting the namespace deletes eth0, its peer and the pod's route. */
export async function deleteSandbox(name: string): Promise<void> {
  await quietly(run('ip', ['netns', 'delete', name]));
  await quietly(run('ip', ['link', 'delete', name]));
}
