import { ingressPath, PROXY_ADMIN_PORT, PROXY_PORT, type StreamingFunctionSpec } from './schema.ts';

/**
 * Node's flags for every `sluice proxy` Sluice starts (the sidecar's NODE_OPTIONS, `sluice serve`'s
 * proxies): a 1 MiB young generation. Idle streams are long-lived, so what they allocate is soon
 * old; V8's default young generation (up to 16 MiB semi-spaces) cost about 6 KB per idle stream
 * at 9,900 streams and no measurable throughput (bench/RESULTS.md).
 */
export const PROXY_NODE_FLAGS = ['--max-semi-space-size=1'];

/** What a function needs for its flags: its name and fully defaulted spec. */
export interface FunctionSpecOf {
  metadata: { name: string; namespace?: string };
  spec: StreamingFunctionSpec;
}

/** Where and how one proxy runs: in a pod (the operator) or on this machine (`sluice serve`). */
export interface ProxyPlacement {
  /** Public and admin addresses; default every interface on the pod's ports. */
  listen?: string;
  admin?: string;
  /** Where the function listens; default spec.port. */
  functionPort?: number;
  /** Seconds in-flight streams get on SIGTERM. */
  drain: number;
  /** NATS URL; empty leaves map off whatever spec.map says. */
  nats: string;
  /** The mounted tokens file, used when spec.auth is set. */
  authTokensFile?: string;
  /** The function's NATS credentials (.creds), used with `nats`. */
  natsCredentialsFile?: string;
  /** This replica's name in map results; default the proxy's hostname (SLUICE_REPLICA in a pod). */
  replica?: string;
  /** Where an activator reaches the public port (load reports); default derived from `listen`. */
  advertise?: string;
}

/**
 * The path prefix the proxy strips (SPEC §2): the ingress path, or nothing when the function has
 * no ingress or is served at `/`.
 */
export function pathPrefix(fn: FunctionSpecOf): string {
  if (!fn.spec.ingress.enabled) return '';
  const path = ingressPath(fn);
  return path === '/' ? '' : path;
}

/** The `sluice proxy` flags of a function (SPEC §2), in a stable order (it is part of the pod template). */
export function proxyFlags(fn: FunctionSpecOf, placement: ProxyPlacement): string[] {
  const { port, protocol, scaling, streaming, map, auth } = fn.spec;
  const flags = [
    `--listen=${placement.listen ?? `0.0.0.0:${PROXY_PORT}`}`,
    `--admin=${placement.admin ?? `0.0.0.0:${PROXY_ADMIN_PORT}`}`,
    `--upstream=http://127.0.0.1:${placement.functionPort ?? port}`,
    `--concurrency=${scaling.concurrency}`,
    `--queue-timeout=${scaling.queueTimeoutSeconds}`,
    `--heartbeat=${streaming.heartbeatSeconds}`,
    `--idle-timeout=${streaming.idleTimeoutSeconds}`,
    `--max-duration=${streaming.maxDurationSeconds}`,
    `--drain=${placement.drain}`,
    `--function=${fn.metadata.namespace ?? 'default'}/${fn.metadata.name}`,
  ];
  const prefix = pathPrefix(fn);
  if (prefix) flags.push(`--path-prefix=${prefix}`);
  // Only when it is not the default, so the pod templates of HTTP/1.1 functions stay as they were.
  if (protocol === 'h2c') flags.push('--upstream-protocol=h2c');
  // NATS carries the load reports that autoscaling follows, with or without map. Map POSTs each
  // input to the function over HTTP/1.1, which an h2c function does not speak.
  const mapOn = map.enabled && protocol !== 'h2c';
  if (placement.nats) flags.push(`--nats=${placement.nats}`);
  if (placement.nats && placement.natsCredentialsFile)
    flags.push(`--nats-credentials=${placement.natsCredentialsFile}`);
  if (placement.nats && !mapOn) flags.push('--map=false');
  if (mapOn && placement.nats) {
    flags.push(
      `--map-path=${map.path}`,
      `--map-ack-wait=${map.ackWaitSeconds}`,
      `--map-max-deliver=${map.maxDeliver}`,
      `--map-retention=${map.resultRetentionSeconds}`,
      `--map-cancel-after-disconnect=${map.cancelAfterDisconnectSeconds}`,
    );
  }
  if (auth?.secretName && placement.authTokensFile)
    flags.push(`--auth-tokens-file=${placement.authTokensFile}`);
  if (placement.replica) flags.push(`--replica=${placement.replica}`);
  if (placement.advertise) flags.push(`--advertise=${placement.advertise}`);
  return flags;
}
