import type { Agent, IncomingMessage, ServerResponse } from 'node:http';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { REPORT_STALE_MS } from '../common/autoscale/load-book.ts';
import { decodeReport, encodeReport, type LoadReport, loadSubject } from '../common/autoscale/load-report.ts';
import type { Logger } from '../common/log.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import { requestHost } from '../proxy/headers.ts';
import { forwardTo } from './forward.ts';
import { type HoldSettings, holdRequest } from './hold.ts';
import { type Backend, pickWithRoom } from './pick.ts';
import { WaitingRoom } from './waiting-room.ts';

const decoder = new TextDecoder();

/** What the activator needs of a function's spec. */
export interface GateSettings {
  hold: HoldSettings;
  concurrency: number;
  maxReplicas: number;
}

interface Replica extends Backend {
  /** When its last report came. */
  heardAt: number;
  /** Its active + queued as last reported. */
  reported: number;
  /** Requests sent to it since that report (not in it yet). */
  sentSince: number;
}

export interface GateOptions {
  nc: NatsConnection;
  /** `namespace/name`. */
  fn: string;
  settings: () => GateSettings;
  /** `activator/<pod>`: this activator in load reports. */
  reporter: string;
  agent: Agent;
  log: Logger;
  onColdStart: (seconds: number) => void;
  now?: () => number;
}

/**
 * One function as the activator sees it: which replicas are ready and where (from their load
 * reports, on `sluice.<ns>.<name>.load`, subscribed while the function sends traffic here), and
 * the requests held until one is. The held count goes out on the same subject: at once when the
 * first request is held (the autoscaler starts a replica on it), then every second.
 */
export class FunctionGate {
  readonly room = new WaitingRoom<Replica>();
  readonly #o: GateOptions;
  readonly #replicas = new Map<string, Replica>();
  readonly #subject: string;
  #sub: Subscription | undefined;
  #turn = 0;
  #forwarding = 0;
  lastUsed: number;
  /** Held requests were reported non-zero: the next report must say when there are none left. */
  #reportedHeld = false;

  constructor(options: GateOptions) {
    this.#o = options;
    this.#subject = loadSubject(options.fn);
    this.lastUsed = this.#now();
    this.#sub = options.nc.subscribe(this.#subject, {
      callback: (err, msg) => {
        if (err) return;
        const report = decodeReport(decoder.decode(msg.data));
        if (report?.kind === 'replica') this.#heard(report);
      },
    });
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.lastUsed = this.#now();
    const settings = this.#o.settings();
    let target = this.room.size === 0 ? this.#pick(settings) : undefined;
    let started = false;
    const arrived = performance.now();
    const held = !target;
    if (!target) {
      const first = this.room.size === 0;
      const waiting = holdRequest(req, res, this.room, settings.hold);
      if (first) this.report(); // the autoscaler acts on the first held request, not a second later
      const outcome = await waiting;
      if (!outcome) {
        if (this.room.size === 0) this.report();
        return;
      }
      target = outcome.target as Replica;
      started = outcome.started;
    } else {
      this.#reserve(target);
    }
    const replica = target as Replica;
    this.#forwarding += 1;
    res.once('close', () => {
      this.#forwarding -= 1;
      this.lastUsed = this.#now();
    });
    forwardTo(
      req,
      res,
      { host: replica.host ?? '127.0.0.1', port: replica.port },
      {
        agent: this.#o.agent,
        started,
        headers: forwardedFor(req),
        unavailable: (err) =>
          sendJsonError(
            res,
            'upstream_unavailable',
            `replica ${replica.name} did not answer (${err.code ?? err.message})`,
          ),
        firstByte: held ? () => this.#o.onColdStart((performance.now() - arrived) / 1000) : undefined,
      },
    );
  }

  /** Every second: the held count (while there is or was one) and forgetting silent replicas. */
  tick(): void {
    const now = this.#now();
    for (const [name, r] of this.#replicas)
      if (now - r.heardAt > REPORT_STALE_MS) this.#replicas.delete(name);
    if (this.room.size > 0 || this.#reportedHeld) this.report();
  }

  /** Publishes this activator's held requests for the function. */
  report(): void {
    const held = this.room.size;
    const report: LoadReport = {
      from: this.#o.reporter,
      kind: 'activator',
      active: this.#forwarding,
      queued: 0,
      peak: held,
      held,
    };
    this.#reportedHeld = held > 0;
    try {
      this.#o.nc.publish(this.#subject, encodeReport(report));
    } catch (err) {
      this.#o.log.debug({ err, function: this.#o.fn }, 'held report not sent');
    }
  }

  /** Nothing held or forwarded for a while: the caller may close it. */
  idleSince(): number | undefined {
    return this.room.size === 0 && this.#forwarding === 0 ? this.lastUsed : undefined;
  }

  close(): void {
    this.#sub?.unsubscribe();
    this.#sub = undefined;
  }

  #heard(report: LoadReport): void {
    const url = report.url ? safeUrl(report.url) : undefined;
    if (!url) return;
    const replica = this.#replicas.get(report.from) ?? {
      name: report.from,
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port || 80),
      ready: false,
      inFlight: 0,
      load: 0,
      peak: 0,
      heardAt: 0,
      reported: 0,
      sentSince: 0,
    };
    replica.heardAt = this.#now();
    replica.ready = Boolean(report.ready);
    replica.draining = Boolean(report.draining);
    replica.reported = report.active + report.queued;
    replica.sentSince = 0;
    replica.load = replica.reported;
    replica.inFlight = replica.reported;
    this.#replicas.set(report.from, replica);
    if (replica.ready && !replica.draining) this.room.offer(() => this.#reservedPick());
  }

  #pick(settings: GateSettings): Replica | undefined {
    const replicas = [...this.#replicas.values()];
    const ready = replicas.filter((r) => r.ready && !r.draining).length;
    return pickWithRoom(replicas, settings.concurrency, this.#turn++, ready < settings.maxReplicas) as
      | Replica
      | undefined;
  }

  #reservedPick(): Replica | undefined {
    const target = this.#pick(this.#o.settings());
    if (target) this.#reserve(target);
    return target;
  }

  /** Its load as the activator knows it: the last report plus what was sent since. */
  #reserve(replica: Replica): void {
    replica.sentSince += 1;
    replica.load = replica.reported + replica.sentSince;
    replica.inFlight = replica.load;
  }

  #now(): number {
    return (this.#o.now ?? Date.now)();
  }
}

function safeUrl(text: string): URL | undefined {
  try {
    const url = new URL(text);
    return url.protocol === 'http:' ? url : undefined;
  } catch {
    return undefined;
  }
}

/** The client's address for the replica's proxy, which adds its own hop after it. */
function forwardedFor(req: IncomingMessage): Record<string, string> {
  const client = req.socket.remoteAddress ?? '';
  const prior = req.headers['x-forwarded-for'];
  return {
    'x-forwarded-for': prior ? `${prior}, ${client}` : client,
    'x-forwarded-host': req.headers['x-forwarded-host']?.toString() ?? requestHost(req) ?? '',
    'x-forwarded-proto': req.headers['x-forwarded-proto']?.toString() ?? 'http',
  };
}
