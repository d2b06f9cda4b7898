/**
 * The load signal (SPEC §3 autoscaling): every sidecar publishes its load over core NATS once a
 * second, and at once when it turns ready or starts draining, on `sluice.<ns>.<name>.load`; an
 * activator publishes the requests it holds for a function on the same subject. The operator
 * subscribes to `sluice.*.*.load` and sums what it hears (LoadBook); the activator listens to
 * one function's subject while it holds requests for it, to learn which replicas are ready and
 * where to reach them. Core NATS, not JetStream: a report is worth nothing a second later, so
 * nothing is stored, and a lost one is replaced by the next.
 */
import { SluiceError } from '../errors.ts';

/** One report. Keys are short: 10,000 sidecars send one each second. */
export interface LoadReport {
  /** The reporter: a replica's name (its pod), or `activator/<pod>`. */
  from: string;
  kind: 'replica' | 'activator';
  /** Streams and map tasks holding a slot now. */
  active: number;
  /** Waiting for a slot now. */
  queued: number;
  /** Highest active + queued since the previous report (an activator: its held now). */
  peak: number;
  /**
   * Activator: requests held now, waiting for a ready replica. The load is this, not a peak: a
   * request held a moment ago that a replica took since is in that replica's peak already. A
   * request held for a moment still counts: the first held request is reported at once.
   */
  held?: number;
  /** Replica: its function answers and it takes new work. */
  ready?: boolean;
  /** Replica: told to stop; finishing what it has, taking nothing new. */
  draining?: boolean;
  /** Replica: where an activator reaches its public port (the pod IP). */
  url?: string;
  /** Replica: map requests it answers now (their tasks may wait in JetStream). */
  maps?: number;
}

const LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export class LoadSubjectError extends SluiceError {
  constructor(message: string) {
    super('ERR_LOAD_SUBJECT', message);
  }
}

/** `sluice.<ns>.<name>.load` for `<ns>/<name>` (one more name under the function's prefix, see map-streams.ts). */
export function loadSubject(fn: string): string {
  const [namespace, name, ...rest] = fn.split('/');
  if (!namespace || !name || rest.length > 0 || !LABEL.test(namespace) || !LABEL.test(name)) {
    throw new LoadSubjectError(
      `function must be namespace/name (RFC 1123 labels), got ${JSON.stringify(fn)}`,
    );
  }
  return `sluice.${namespace}.${name}.load`;
}

/** What the operator subscribes to: every function's reports. */
export const ALL_LOAD_SUBJECTS = 'sluice.*.*.load';

/** `<ns>/<name>` of a report's subject; undefined for anything else. */
export function functionOfSubject(subject: string): string | undefined {
  const parts = subject.split('.');
  if (parts.length !== 4 || parts[0] !== 'sluice' || parts[3] !== 'load') return undefined;
  return `${parts[1]}/${parts[2]}`;
}

export function encodeReport(report: LoadReport): string {
  return JSON.stringify(report);
}

const count = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/** A report, or undefined when the bytes are not one (a foreign publisher, a newer version's extra keys are fine). */
export function decodeReport(text: string): LoadReport | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const r = value as Record<string, unknown>;
  if (typeof r.from !== 'string' || r.from === '' || (r.kind !== 'replica' && r.kind !== 'activator')) {
    return undefined;
  }
  if (!count(r.active) || !count(r.queued) || !count(r.peak)) return undefined;
  return value as LoadReport;
}
