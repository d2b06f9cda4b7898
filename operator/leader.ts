import type { Logger } from '../common/log.ts';
import { isConflict, isNotFound, type KubeClient, type KubeObject, resourcePath } from './kube.ts';

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  /** How long a lease holds without renewal before another candidate may take it. */
  leaseDurationSeconds: number;
  /** How often the holder renews and a candidate retries. */
  retryPeriodMs: number;
  log: Logger;
}

interface Lease extends KubeObject {
  spec?: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

const microTime = (d: Date) => d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');

/**
 * Leader election on a coordination.k8s.io Lease, the way client-go's leaderelection does it:
 * updates carry the resourceVersion they read (so two candidates cannot both win), and expiry
 * is judged by when THIS process last saw the lease change, never by comparing the holder's
 * clock with ours. A leader that cannot renew within its renew deadline (two thirds of the
 * lease duration, as client-go's 10 s of 15 s) steps down, so it has stopped before a standby
 * may judge the lease expired and take over.
 */
export class LeaderElector {
  private readonly client: KubeClient;
  private readonly options: LeaderElectionOptions;
  private observed: { record: string; at: number } = { record: '', at: 0 };
  private leading = false;
  private lastRenew = 0;
  private readonly abort = new AbortController();

  constructor(client: KubeClient, options: LeaderElectionOptions) {
    this.client = client;
    this.options = options;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  private get path(): string {
    return resourcePath('coordination.k8s.io/v1', 'leases', this.options.namespace, this.options.name);
  }

  /** One acquire-or-renew attempt; true when we hold the lease afterwards. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const { identity, leaseDurationSeconds, namespace, name } = this.options;
    const now = new Date();
    let lease: Lease | undefined;
    try {
      lease = await this.client.get<Lease>(this.path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if (!lease) {
      await this.client.request('POST', resourcePath('coordination.k8s.io/v1', 'leases', namespace), {
        body: {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name, namespace },
          spec: {
            holderIdentity: identity,
            leaseDurationSeconds,
            acquireTime: microTime(now),
            renewTime: microTime(now),
            leaseTransitions: 0,
          },
        },
      });
      return true;
    }
    const spec = lease.spec ?? {};
    const record = JSON.stringify(spec);
    if (record !== this.observed.record) this.observed = { record, at: Date.now() };
    const holder = spec.holderIdentity ?? '';
    const expired =
      Date.now() - this.observed.at > (spec.leaseDurationSeconds ?? leaseDurationSeconds) * 1000;
    if (holder && holder !== identity && !expired) return false;
    const taking = holder !== identity;
    await this.client.request('PUT', this.path, {
      body: {
        ...lease,
        spec: {
          holderIdentity: identity,
          leaseDurationSeconds,
          acquireTime: taking ? microTime(now) : spec.acquireTime,
          renewTime: microTime(now),
          leaseTransitions: (spec.leaseTransitions ?? 0) + (taking ? 1 : 0),
        },
      },
    });
    return true;
  }

  /**
   * Campaigns until elected (resolves then), or until stop() (resolves false). After winning it
   * keeps renewing in the background and calls `onLost` if renewal lapses.
   */
  async campaign(onLost: () => void): Promise<boolean> {
    const { retryPeriodMs, log, leaseDurationSeconds } = this.options;
    const { signal } = this.abort;
    while (!signal.aborted) {
      try {
        if (await this.tryAcquireOrRenew()) {
          this.leading = true;
          this.lastRenew = Date.now();
          log.info({ identity: this.options.identity }, 'became leader');
          break;
        }
      } catch (err) {
        if (!isConflict(err)) log.warn({ err }, 'leader election attempt failed');
      }
      await this.sleep(retryPeriodMs);
    }
    if (!this.leading) return false;
    void (async () => {
      while (!signal.aborted && this.leading) {
        await this.sleep(retryPeriodMs);
        if (signal.aborted) return;
        try {
          if (await this.tryAcquireOrRenew()) this.lastRenew = Date.now();
          else this.leading = false;
        } catch (err) {
          log.warn({ err }, 'lease renewal failed');
        }
        if (!this.leading || Date.now() - this.lastRenew > (leaseDurationSeconds * 1000 * 2) / 3) {
          this.leading = false;
          log.error('lost leadership');
          onLost();
          return;
        }
      }
    })();
    return true;
  }

  /** Stops campaigning; a leader gives the lease up so a standby takes over at once. */
  async stop(): Promise<void> {
    this.abort.abort();
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.client.get<Lease>(this.path);
      if (lease.spec?.holderIdentity !== this.options.identity) return;
      await this.client.request('PUT', this.path, {
        body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1 } },
      });
    } catch (err) {
      this.options.log.warn({ err }, 'could not release the lease');
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.abort.signal.addEventListener('abort', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
