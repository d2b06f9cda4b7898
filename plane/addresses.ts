// The local plane's address plan. Everything lives in 198.18.0.0/15 (RFC 2544's benchmarking
// range: never routed on the internet, never this machine's own subnet), and the host holds a
// blackhole route for all of it, so a packet to a pod or ClusterIP that is not set up dies here.
//
//   198.18.0.1        the node address (link sl-host): kubelet API, API server, CoreDNS
//   198.18.N.0/24     pods that really run on simulated node N (N = 1..127, one per node)
//   198.18.128.0/17   pod IPs kwok hands to pods it only simulates (nothing answers there)
//   198.19.0.0/16     Services (ClusterIPs); .1 is `kubernetes`, .10 is `kube-dns`

export const PLANE_RANGE = '198.18.0.0/15';
export const NODE_ADDRESS = '198.18.0.1';
/** Where pods and the host reach the API server (the `kubernetes` Service's endpoint). */
export const API_PORT = 6443;
export const KUBELET_PORT = 10250;
export const DNS_PORT = 53;
/** Every pod IP, real or simulated: kube-proxy's cluster CIDR. */
export const POD_RANGE = '198.18.0.0/16';
export const SIMULATED_POD_RANGE = '198.18.128.0/17';
export const SERVICE_RANGE = '198.19.0.0/16';
export const KUBERNETES_SERVICE_IP = '198.19.0.1';
export const DNS_SERVICE_IP = '198.19.0.10';
export const CLUSTER_DOMAIN = 'cluster.local';
/** Node annotation naming the pod CIDR the runner allocates from (kwok reads spec.podCIDR, so that stays empty). */
export const POD_CIDR_ANNOTATION = 'sluice.dev/pod-cidr';
export const MAX_NODES = 127;

export function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new RangeError(`not an IPv4 address: ${ip}`);
  }
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export interface Cidr {
  network: number;
  bits: number;
}

export function parseCidr(cidr: string): Cidr {
  const [ip, bits] = cidr.split('/');
  const prefix = Number(bits);
  if (!ip || !Number.isInteger(prefix) || prefix < 0 || prefix > 32)
    throw new RangeError(`not a CIDR: ${cidr}`);
  const mask = prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0;
  return { network: (ipToInt(ip) & mask) >>> 0, bits: prefix };
}

export function contains(cidr: string, ip: string): boolean {
  const { network, bits } = parseCidr(cidr);
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return (ipToInt(ip) & mask) >>> 0 === network;
}

/** The pod CIDR of the index-th simulated node (0-based). */
export function nodePodCidr(index: number): string {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_NODES) {
    throw new RangeError(`node index ${index} outside 0..${MAX_NODES - 1}`);
  }
  return `198.18.${index + 1}.0/24`;
}

/**
 * Hands out the host addresses of a CIDR (not the network or broadcast address) round-robin:
 * a just-freed IP is taken last, so a stale endpoint or conntrack entry of a gone pod never
 * points at a new one.
 */
export class IpPool {
  private readonly first: number;
  private readonly last: number;
  private next: number;
  private readonly used = new Set<number>();

  constructor(cidr: string) {
    const { network, bits } = parseCidr(cidr);
    const size = 2 ** (32 - bits);
    if (size < 4) throw new RangeError(`CIDR ${cidr} is too small for pods`);
    this.first = network + 1;
    this.last = network + size - 2;
    this.next = this.first;
  }

  /** Takes this IP (a pod that already had it keeps it); false when it is outside or taken. */
  claim(ip: string): boolean {
    const n = ipToInt(ip);
    if (n < this.first || n > this.last || this.used.has(n)) return false;
    this.used.add(n);
    return true;
  }

  allocate(): string {
    const count = this.last - this.first + 1;
    for (let i = 0; i < count; i++) {
      const candidate = this.next;
      this.next = candidate === this.last ? this.first : candidate + 1;
      if (!this.used.has(candidate)) {
        this.used.add(candidate);
        return intToIp(candidate);
      }
    }
    throw new RangeError('no free pod IP left');
  }

  release(ip: string): void {
    this.used.delete(ipToInt(ip));
  }

  get size(): number {
    return this.used.size;
  }
}
