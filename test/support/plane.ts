import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from '../../common/net.ts';
import { INGRESS_API_FILE, INGRESS_URL_FILE, STATE_DIR } from '../../scripts/cluster.ts';
import { kubeconfigPath, kubectl } from './cluster.ts';
import type { Manifest } from './helm.ts';

// Helpers for tests of pods that really run on the local plane (its pod runner, kube-proxy,
// CoreDNS, Traefik and storage provisioner).

/** Why pods do not really run on this test run's plane, or '' when they do. */
export function podsSimulated(): string {
  if (!existsSync(INGRESS_URL_FILE)) {
    return `the plane runs no pods (${INGRESS_URL_FILE} is missing: another plane on this machine runs them, SLUICE_POD_RUNNER=off, or the node-side tools are not built)`;
  }
  return '';
}

export function ingressUrl(): string {
  return readFileSync(INGRESS_URL_FILE, 'utf8').trim();
}

/**
 * The servers (`ip:port`) Traefik routes a Service's Ingress traffic to now, from its API:
 * an EndpointSlice the API server has is in Traefik's routes a moment later.
 */
export async function ingressServers(namespace: string, service: string): Promise<string[]> {
  const api = readFileSync(INGRESS_API_FILE, 'utf8').trim();
  // Traefik names an Ingress backend `<namespace>-<service>-<port>@kubernetes`.
  const prefix = `${namespace}-${service}-`;
  const response = await fetch(`${api}/api/http/services?search=${encodeURIComponent(prefix)}&per_page=1000`);
  if (!response.ok) throw new Error(`Traefik's API answered ${response.status}: ${await response.text()}`);
  const services = (await response.json()) as Array<{
    name: string;
    provider: string;
    loadBalancer?: { servers?: Array<{ url: string }> };
  }>;
  return (
    services
      .filter((s) => s.provider === 'kubernetes' && s.name.startsWith(prefix))
      // `ip:port`: the scheme (h2c for every function, operator/desired.ts) is not the question.
      .flatMap((s) => (s.loadBalancer?.servers ?? []).map((server) => new URL(server.url).host))
      .sort()
  );
}

export interface SseEvent {
  event: string;
  id?: string;
  data: string;
  /** ms since the request started, when its last line arrived. */
  at: number;
}

export interface CurlResult {
  code: number;
  /** curl's own messages (`curl: (18) transfer closed…`), without the status it prints last. */
  stderr: string;
  status: number;
  events: SseEvent[];
  body: string;
  /** Raw stdout chunks with their arrival time. */
  chunks: { at: number; text: string }[];
}

/**
 * `curl --no-buffer` as a user runs it, recording when each SSE event arrived. The HTTP status
 * comes from curl's write-out, printed last on stderr.
 */
export function curl(
  url: string,
  args: string[] = [],
  onEvent?: (event: SseEvent) => void,
): Promise<CurlResult> {
  return new Promise((resolve, reject) => {
    const began = performance.now();
    const child = spawn('curl', ['--no-buffer', '-sS', '-w', '%{stderr}%{http_code}', ...args, url]);
    const chunks: { at: number; text: string }[] = [];
    const events: SseEvent[] = [];
    let pending = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      const at = performance.now() - began;
      const text = d.toString();
      chunks.push({ at, text });
      pending += text;
      let end = pending.indexOf('\n\n');
      while (end >= 0) {
        const block = pending.slice(0, end);
        pending = pending.slice(end + 2);
        const event: SseEvent = { event: 'message', data: '', at };
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event.event = value;
          else if (field === 'id') event.id = value;
          else if (field === 'data') data.push(value);
        }
        event.data = data.join('\n');
        if (data.length || event.event !== 'message') {
          events.push(event);
          onEvent?.(event);
        }
        end = pending.indexOf('\n\n');
      }
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      const status = Number(stderr.trim().split('\n').at(-1)?.slice(-3));
      resolve({
        code: code ?? 1,
        stderr: stderr.trim().slice(0, -3),
        status,
        events,
        body: chunks.map((c) => c.text).join(''),
        chunks,
      });
    });
  });
}

export async function getJson(args: string[]): Promise<Manifest> {
  const r = await kubectl([...args, '-o', 'json']);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Manifest;
}

export async function pods(namespace: string, selector: string): Promise<Manifest[]> {
  const list = await getJson(['get', 'pods', '-n', namespace, '-l', selector]);
  return list.items as Manifest[];
}

export const condition = (object: Manifest | undefined, type: string): Manifest | undefined =>
  (object?.status?.conditions as Manifest[] | undefined)?.find((c) => c.type === type);

export const isReady = (pod: Manifest): boolean => condition(pod, 'Ready')?.status === 'True';

/** Waits until the pod's containers have the status `check` wants; returns the pod. */
export async function waitForPod(
  namespace: string,
  name: string,
  check: (pod: Manifest) => unknown,
  what: string,
  timeoutMs = 60_000,
): Promise<Manifest> {
  let last: Manifest | undefined;
  try {
    return await waitFor(
      async () => {
        last = await getJson(['get', 'pod', name, '-n', namespace]);
        return check(last) ? last : undefined;
      },
      { timeoutMs, intervalMs: 100, what },
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; pod status: ${JSON.stringify(last?.status)}`);
  }
}

export function containerStatus(pod: Manifest, name: string): Manifest | undefined {
  return [...(pod.status?.initContainerStatuses ?? []), ...(pod.status?.containerStatuses ?? [])].find(
    (c: Manifest) => c.name === name,
  );
}

/**
 * `kubectl get pod -w`: the pod's Ready status in every version the API server stores, in order
 * (a watch misses none, where polling could miss a short dip).
 */
export function watchReady(
  namespace: string,
  name: string,
): { seen: string[]; started: Promise<void>; stop: () => void } {
  const child = spawn(
    'kubectl',
    [
      'get',
      'pod',
      name,
      '-n',
      namespace,
      '--watch',
      '-o',
      'jsonpath={.status.conditions[?(@.type=="Ready")].status}{"\\n"}',
    ],
    { env: { ...process.env, KUBECONFIG: kubeconfigPath() } },
  );
  const seen: string[] = [];
  let started: () => void = () => {};
  const first = new Promise<void>((resolve) => {
    started = resolve;
  });
  let pending = '';
  child.stdout.on('data', (d: Buffer) => {
    pending += d;
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      seen.push(line.trim());
      started();
    }
  });
  return { seen, started: first, stop: () => child.kill() };
}

/** Resolves with the first event `predicate` accepts (pass `feed` as curl's onEvent). */
export function firstEvent(predicate: (event: SseEvent) => boolean): {
  feed: (e: SseEvent) => void;
  seen: Promise<SseEvent>;
} {
  let resolve: (e: SseEvent) => void = () => {};
  const seen = new Promise<SseEvent>((r) => {
    resolve = r;
  });
  return { feed: (e) => predicate(e) && resolve(e), seen };
}

/**
 * For a failure's message: each pod's restarts of `container`, how its last run ended, and the
 * last lines it logged (through `kubectl logs`, the pod runner's kubelet API).
 */
export async function podLogs(
  namespace: string,
  selector: string,
  container: string,
  tail = 30,
): Promise<string> {
  const parts: string[] = [];
  for (const pod of await pods(namespace, selector)) {
    const status = containerStatus(pod, container);
    const logs = await kubectl([
      'logs',
      '-n',
      namespace,
      pod.metadata.name,
      '-c',
      container,
      `--tail=${tail}`,
    ]);
    parts.push(
      `--- ${pod.metadata.name} ${container}: restarts ${status?.restartCount}, last ended ${JSON.stringify(status?.lastState?.terminated ?? null)}\n${logs.stdout}${logs.stderr}`,
    );
  }
  return parts.join('\n');
}

/** The pod runner's log lines about one pod (the last `count`), for a failure's message. */
export function runnerLog(pod: string, count = 40): string {
  const text = readFileSync(join(STATE_DIR, 'logs', 'pod-runner.log'), 'utf8');
  return text
    .split('\n')
    .filter((line) => line.includes(pod))
    .slice(-count)
    .join('\n');
}

/** The processes of one container of a pod on this machine (its cgroup), for tests that kill them. */
export function containerPids(podUid: string, container: string): number[] {
  const base = existsSync('/sys/fs/cgroup/cgroup.controllers') ? '/sys/fs/cgroup' : '/sys/fs/cgroup/unified';
  const file = join(base, 'sl-plane', podUid, container, 'cgroup.procs');
  return readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number);
}
